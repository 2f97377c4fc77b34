// The one registration file: CPU kernels always, CUDA kernels when built with nvcc. The schemas
// are defined by ebjdat/ops (Python), which imports this module after defining them.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

#if defined(__AVX2__)
#define EBJDAT_CPU_ISA "avx2"
#else
#define EBJDAT_CPU_ISA "generic"
#endif

TORCH_LIBRARY_IMPL(ebjdat, CPU, m) {
  m.impl("sgld_step", &ebjdat::sgld_step_cpu);
  m.impl("sgld_step_", &ebjdat::sgld_step__cpu);
  m.impl("pgd_init", &ebjdat::pgd_init_cpu);
  m.impl("pgd_step", &ebjdat::pgd_step_cpu);
  m.impl("energy_head", &ebjdat::energy_head_cpu);
  m.impl("energy_head_backward", &ebjdat::energy_head_backward_cpu);
}

#if defined(EBJDAT_WITH_CUDA)
TORCH_LIBRARY_IMPL(ebjdat, CUDA, m) {
  m.impl("sgld_step", &ebjdat::sgld_step_cuda);
  m.impl("sgld_step_", &ebjdat::sgld_step__cuda);
  m.impl("pgd_init", &ebjdat::pgd_init_cuda);
  m.impl("pgd_step", &ebjdat::pgd_step_cuda);
  m.impl("energy_head", &ebjdat::energy_head_cuda);
  m.impl("energy_head_backward", &ebjdat::energy_head_backward_cuda);
}
#define EBJDAT_HAS_CUDA 1
#else
#define EBJDAT_HAS_CUDA 0
#endif

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
