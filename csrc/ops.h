// Kernel entry points, registered with the dispatcher in register.cpp. The schemas are defined in
// Python (ebjdat/ops/<op>.py) so that the ops exist even when this extension is not built.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>

namespace ebjdat {

using OptGen = std::optional<at::Generator>;
using OptTensor = std::optional<at::Tensor>;
using EnergyOut = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

#define EBJDAT_DECLARE(dev)                                                                        \
  at::Tensor sgld_step_##dev(const at::Tensor& x, const at::Tensor& grad, double step_size,      \
                             std::optional<double> grad_clip, double noise_std,                  \
                             std::optional<double> clamp_min, std::optional<double> clamp_max,   \
                             const OptTensor& noise, OptGen generator);                          \
  void sgld_step__##dev(const at::Tensor& x, const at::Tensor& grad, double step_size,           \
                        std::optional<double> grad_clip, double noise_std,                       \
                        std::optional<double> clamp_min, std::optional<double> clamp_max,        \
                        const OptTensor& noise, OptGen generator);                               \
  at::Tensor pgd_init_##dev(const at::Tensor& x, double eps, std::string norm,                   \
                            std::optional<double> clamp_min, std::optional<double> clamp_max,    \
                            OptGen generator);                                                   \
  at::Tensor pgd_step_##dev(const at::Tensor& x_adv, const at::Tensor& grad,                     \
                            const at::Tensor& x_orig, double step_size, std::optional<double> eps, \
                            std::string norm, std::optional<double> clamp_min,                   \
                            std::optional<double> clamp_max);                                    \
  EnergyOut energy_head_##dev(const at::Tensor& logits, const OptTensor& y, double temperature); \
  at::Tensor energy_head_backward_##dev(const at::Tensor& logits, const OptTensor& y,            \
                                        const OptTensor& grad_energy, const OptTensor& grad_cond, \
                                        const OptTensor& grad_ce, double temperature);

EBJDAT_DECLARE(cpu)
EBJDAT_DECLARE(cuda)
#undef EBJDAT_DECLARE

}  // namespace ebjdat
