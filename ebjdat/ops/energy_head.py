"""energy_head: one fused pass over the rows of logits [B, K] giving, per sample,

    energy      = -T * logsumexp(logits / T)     (JEM's E(x) at temperature T)
    cond_energy = -logits[y]                     (E(x, y))
    ce          = logsumexp(logits) - logits[y]  (cross-entropy)

differentiable in logits with a fused backward (first derivatives; the fused backends refuse a
double backward, the reference supports it). Outputs are float32 for half inputs (float64 for
float64), as autocast computes logsumexp and cross-entropy. Infinite and NaN logits follow
torch.logsumexp.

Every backend evaluates the energy as -(m + T * log(sum(exp((logits - m) / T)))) with m the row
max, i.e. it shifts in logit units rather than in units of logits / T: the exponents then never
overflow, and the result keeps full relative precision for any temperature in
[1e-30, 1e30] (the accepted range; a temperature outside it, or not finite, is a ValueError). The
backward recomputes m and the sums from the logits for the same reason: rebuilding the log-sum
from the rounded energy would lose |energy| / T ulps of it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import _checks
from ._layout import acc_dtype
from ._library import backend, define, has_native_kernel, implementation

SCHEMA = "(Tensor logits, Tensor? y, float temperature) -> (Tensor, Tensor, Tensor)"
BACKWARD_SCHEMA = (
    "(Tensor logits, Tensor? y, Tensor? grad_energy, Tensor? grad_cond, Tensor? grad_ce, "
    "float temperature) -> Tensor"
)


class EnergyOut(NamedTuple):
    energy: torch.Tensor
    cond_energy: torch.Tensor | None
    ce: torch.Tensor | None


def reference(
    logits: torch.Tensor, y: torch.Tensor | None, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The definition in PyTorch ops; autograd through it is the reference backward."""
    lv = logits.to(acc_dtype(logits.dtype))
    if lv.shape[0] == 0:
        energy = lv.new_empty(0)
    else:
        # The shift is the max as torch.logsumexp takes it (an infinite max is not subtracted);
        # it cancels in the value and so carries no gradient.
        m = lv.detach().amax(dim=1, keepdim=True)
        m = torch.where(torch.isinf(m), 0.0, m)
        lse = torch.log(torch.exp((lv - m) / temperature).sum(dim=1))
        energy = -(m.squeeze(1) + temperature * lse)
    if y is None:
        empty = lv.new_empty(0)
        return energy, empty, empty
    ly = lv.gather(1, y.long()[:, None]).squeeze(1)
    return energy, -ly, torch.logsumexp(lv, dim=1) - ly


def _outputs_like(logits: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    acc = acc_dtype(logits.dtype)
    rows = logits.shape[0]
    energy = logits.new_empty((rows,), dtype=acc)
    labelled = rows if y is not None else 0
    return (
        energy,
        logits.new_empty((labelled,), dtype=acc),
        logits.new_empty((labelled,), dtype=acc),
    )


def _fake(logits: torch.Tensor, y: torch.Tensor | None, temperature: float) -> tuple:
    return _outputs_like(logits, y)


def _fake_backward(logits: torch.Tensor, *args: object) -> torch.Tensor:
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _triton_checks(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if logits.dtype == torch.float64:
        raise TypeError(
            "logits: the triton backend computes in float32; float64 needs cpu/cuda/reference"
        )
    _checks.temperature(temperature)  # as the C++ kernels do, for direct torch.ops calls
    return logits.contiguous()


def _triton(logits: torch.Tensor, y: torch.Tensor | None, temperature: float) -> tuple:
    from ebjdat.kernels import energy_head as kernel

    logits = _triton_checks(logits, temperature)
    outs = _outputs_like(logits, y)
    kernel.forward(logits, None if y is None else y.long().contiguous(), temperature, *outs)
    return outs


def _triton_backward(
    logits: torch.Tensor,
    y: torch.Tensor | None,
    grad_energy: torch.Tensor | None,
    grad_cond: torch.Tensor | None,
    grad_ce: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    from ebjdat.kernels import energy_head as kernel

    logits = _triton_checks(logits, temperature)
    out = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)

    def vec(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.float().contiguous()

    kernel.backward(
        logits,
        None if y is None else y.long().contiguous(),
        vec(grad_energy),
        vec(grad_cond),
        vec(grad_ce),
        temperature,
        out,
    )
    return out


NATIVE, TRITON = define(
    "energy_head",
    SCHEMA,
    fake=_fake,
    triton_impl=_triton,
    reference=reference,
    autograd="formula",
)
NATIVE_BACKWARD, TRITON_BACKWARD = define(
    "energy_head_backward",
    BACKWARD_SCHEMA,
    fake=_fake_backward,
    triton_impl=_triton_backward,
    reference=None,
    public=False,
    autograd="once",
)


def _setup_context(ctx: object, inputs: tuple, output: tuple) -> None:
    logits, y, temperature = inputs
    ctx.save_for_backward(logits, y)
    ctx.temperature = temperature


def _make_backward(backward_op: object):
    def backward(ctx: object, g_energy, g_cond, g_ce):  # noqa: ANN001, ANN202
        logits, y = ctx.saved_tensors
        # Unused outputs arrive as None or zeros; label terms are empty without y.
        if y is None:
            g_cond = g_ce = None
        grad = backward_op(logits, y, g_energy, g_cond, g_ce, ctx.temperature)
        return grad, None, None

    return backward


# ebjdat._C (loaded before this module) registers a C++ autograd kernel for the native op;
# without it the Python formula serves. The Triton twin always uses the Python one.
if not has_native_kernel("energy_head", "Autograd"):
    torch.library.register_autograd(
        "ebjdat::energy_head", _make_backward(NATIVE_BACKWARD), setup_context=_setup_context
    )
torch.library.register_autograd(
    "ebjdat::energy_head_triton", _make_backward(TRITON_BACKWARD), setup_context=_setup_context
)


def energy_head(
    logits: torch.Tensor, y: torch.Tensor | None = None, *, temperature: float = 1.0
) -> EnergyOut:
    """EnergyOut(energy, cond_energy, ce) for logits [B, K]; the last two are None without y.

    Differentiable in logits (first derivatives on the fused backends). temperature must be
    finite and within [1e-30, 1e30]; the result is accurate over that whole range.
    """
    _checks.tensor("logits", logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D [B, K], got shape {tuple(logits.shape)}")
    if logits.shape[1] == 0 and logits.shape[0] > 0:
        raise ValueError("logits must have at least one class (K >= 1)")
    # The C++ kernels check the label range themselves (CPU: a ValueError; CUDA: a device
    # assert, where a host check would cost a sync per call).
    native = backend("energy_head", logits.device) in ("cpu", "cuda")
    y = _checks.labels(y, logits, check_range=not native)
    temperature = _checks.temperature(temperature)
    energy, cond, ce = implementation("energy_head", logits.device)(logits, y, temperature)
    if y is None:
        return EnergyOut(energy, None, None)
    return EnergyOut(energy, cond, ce)
