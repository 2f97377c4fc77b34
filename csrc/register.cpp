// The extension module: what it was built with, and energy_head's C++ autograd. Each kernel file
// registers its own kernels (TORCH_LIBRARY_IMPL at its end: csrc/cpu/*.cpp for CPU, csrc/cuda/*.cu
// for CUDA); the schemas are defined by ebjdat/ops (Python).
#include <Python.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>

#include "energy_head.h"

#if defined(__AVX2__)
#define EBJDAT_CPU_ISA "avx2"
#else
#define EBJDAT_CPU_ISA "generic"
#endif

#if defined(EBJDAT_WITH_CUDA)
#define EBJDAT_HAS_CUDA 1
#else
#define EBJDAT_HAS_CUDA 0
#endif

// Autograd for energy_head in C++ (one kernel for CPU and CUDA): a Python autograd formula costs
// more than the fused kernels themselves at training batch sizes. The backward redispatches to
// the fused energy_head_backward of the same device. The other ops' autograd behaviour (not
// differentiable) is registered from Python, with the schemas (ebjdat/ops/_library.py).
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

class EnergyHeadFunction : public torch::autograd::Function<EnergyHeadFunction> {
 public:
  // Function::apply rejects undefined tensors, so "no labels" travels as `labelled` = false.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& y,
                               bool labelled, double temperature) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("ebjdat::energy_head", "")
                         .typed<ebjdat::EnergyOut(const at::Tensor&, const ebjdat::OptTensor&, double)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [energy, cond, ce] =
        op.call(logits, labelled ? std::optional<at::Tensor>(y) : std::nullopt, temperature);
    // The backward recomputes the row statistics from the logits (see prepare_energy_backward),
    // so only the inputs are saved.
    ctx->save_for_backward({logits, y});
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["labelled"] = labelled;
    return {energy, cond, ce};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("ebjdat::energy_head_backward", "")
            .typed<at::Tensor(const at::Tensor&, const ebjdat::OptTensor&, const ebjdat::OptTensor&,
                              const ebjdat::OptTensor&, const ebjdat::OptTensor&, double)>();
    const variable_list saved = ctx->get_saved_variables();
    const bool labelled = ctx->saved_data["labelled"].toBool();
    // A plain backward (grad mode off) skips the backward op's own Autograd kernel, which only
    // matters under create_graph=True, where it marks the result as not differentiable again.
    std::optional<at::AutoDispatchBelowAutograd> below;
    if (!at::GradMode::is_enabled()) below.emplace();
    at::Tensor grad = op.call(saved[0], labelled ? opt(saved[1]) : std::nullopt, opt(grads[0]),
                              labelled ? opt(grads[1]) : std::nullopt,
                              labelled ? opt(grads[2]) : std::nullopt,
                              ctx->saved_data["temperature"].toDouble());
    return {grad, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

ebjdat::EnergyOut energy_head_autograd(const at::Tensor& logits, const ebjdat::OptTensor& y,
                                       double temperature) {
  const at::Tensor labels = y ? *y : at::empty({0}, logits.options().dtype(at::kLong));
  variable_list out = EnergyHeadFunction::apply(logits, labels, y.has_value(), temperature);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(ebjdat, Autograd, m) {
  m.impl("energy_head", &energy_head_autograd);
}

// A plain module so that `import ebjdat._C` loads the registrations; it also says how it was built.
static PyModuleDef ebjdat_module = {PyModuleDef_HEAD_INIT, "_C",
                                    "ebjdat native kernels (registered with torch.library)", -1,
                                    nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* mod = PyModule_Create(&ebjdat_module);
  if (mod == nullptr) return nullptr;
  PyModule_AddIntConstant(mod, "with_cuda", EBJDAT_HAS_CUDA);
  PyModule_AddStringConstant(mod, "cpu_isa", EBJDAT_CPU_ISA);
  return mod;
}
