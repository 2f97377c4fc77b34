"""Accuracy and adversarial robustness of [0, 1]-input classifiers (`ebjdat.load_classifier`).

Two protocols (see docs/method-notes.md, 'The official evaluation'):

- "standard": eps in [0, 1] pixel units as requested, no test-time noise, PGD-k with step
  2.5·eps/k, and torchattacks' AutoAttack "standard" applied unmodified. These are the numbers
  to cite.
- "paper": what the official EB-JDAT/JEM evaluation code does, reproduced on purpose so that our
  numbers can be put next to the paper's: eps applied to [-1, 1]-normalised inputs (so half the
  requested eps in pixels), Gaussian test-time noise σ = 0.03 in [-1, 1] units (0.015 in pixels)
  and a reduced AutoAttack. The report says it is not a standard evaluation.

Robust accuracy follows AutoAttack's convention: a sample counts as robust when it is classified
correctly clean *and* after the attack, so robust accuracy can never exceed clean accuracy. A
prediction from logits that are not all finite counts as wrong.

Test-time noise ("paper") is drawn once per image per evaluation pass, as the official data
loader does (the noise is part of the loaded image); the attack then sees a deterministic model
and its eps-ball is centred on the noisy image.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ebjdat.attacks import pgd_attack
from ebjdat.data import to_float01
from ebjdat.grad_modes import grad_mode, outside_inference_mode

Model01 = Callable[[torch.Tensor], torch.Tensor]

PAPER_NOISE_INTERNAL = 0.03  # σ of the official loader's noise, in [-1, 1] units
_PGD_NAME = re.compile(r"^pgd(\d+)$")
_AA_VERSIONS = ("standard", "paper", "full")


# ---- small helpers ---------------------------------------------------------------------------


def canonical_norm(norm: str) -> str:
    """'Linf'/'linf'/'inf' -> 'linf', 'L2'/'l2' -> 'l2' (our ops' spelling)."""
    key = str(norm).lower()
    if key in ("linf", "inf", "l_inf"):
        return "linf"
    if key == "l2":
        return "l2"
    raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")


def _ta_norm(norm: str) -> str:
    """torchattacks' spelling."""
    return {"linf": "Linf", "l2": "L2"}[canonical_norm(norm)]


def default_eps(dataset: str, norm: str = "linf") -> float:
    """The customary eps in [0, 1] pixel units: 8/255 L∞ and 0.5 L2 for CIFAR-like data;
    0.1 L∞ and 0.5 L2 for the 8×8 digits (whose pixels are k/16, so 8/255 would be below one
    intensity level)."""
    n = canonical_norm(norm)
    if str(dataset).lower() == "digits":
        return 0.1 if n == "linf" else 0.5
    return 8 / 255 if n == "linf" else 0.5


def _device_of(model: Model01, fallback: torch.device) -> torch.device:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return fallback


def _batches(n: int, batch_size: int, desc: str) -> Iterator[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = range(0, n, batch_size)
    for s in tqdm(starts, desc=desc, unit="batch", leave=False, disable=None):
        yield slice(s, min(s + batch_size, n))


def _check_xy(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x must be [N, C, H, W] and y [N]; got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError("no examples to evaluate")


def _noisy(
    xb: torch.Tensor, std: float, generator: torch.Generator | None
) -> torch.Tensor:
    """xb + N(0, std²), drawn on the generator's device (so a CPU generator drives CUDA data)."""
    if std <= 0:
        return xb
    dev = generator.device if generator is not None else xb.device
    n = torch.randn(xb.shape, generator=generator, device=dev, dtype=xb.dtype)
    return xb + std * n.to(xb.device)


def _load_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    sl: slice,
    device: torch.device,
    input_noise: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch as float [0, 1] on the model's device, with the loader's test-time noise."""
    xb = to_float01(x[sl]).to(device)
    return _noisy(xb, input_noise, generator), y[sl].to(device).long()


def _hits(logits: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """Correct predictions; a row of logits holding NaN or Inf predicts nothing, so it is wrong
    (argmax would silently pick a class for it)."""
    return (logits.argmax(dim=1) == yb) & torch.isfinite(logits).all(dim=1)


@torch.no_grad()
def _correct(model01: Model01, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    return _hits(model01(xb), yb)


# ---- clean and PGD accuracy ------------------------------------------------------------------


@torch.no_grad()
def clean_accuracy(
    model01: Model01,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 500,
    input_noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> float:
    """Top-1 accuracy on images x (uint8 or float [0, 1]).

    `input_noise` is the std (pixel units) of Gaussian noise added to every image for this pass
    (the paper protocol's test-time noise); a new draw is made on every call.
    """
    _check_xy(x, y)
    device = _device_of(model01, x.device)
    correct = 0
    for sl in _batches(x.shape[0], batch_size, "clean"):
        xb, yb = _load_batch(x, y, sl, device, input_noise, generator)
        correct += int(_correct(model01, xb, yb).sum())
    return correct / x.shape[0]


@outside_inference_mode
def pgd_accuracy(
    model01: Model01,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 20,
    restarts: int = 1,
    step_size: float | None = None,
    batch_size: int = 500,
    generator: torch.Generator | None = None,
    input_noise: float = 0.0,
    random_start: bool = True,
) -> float:
    """Robust accuracy under untargeted PGD-`steps` (CE loss, `ebjdat.attacks.pgd_attack`).

    eps and step_size are in [0, 1] pixel units; step_size defaults to 2.5·eps/steps (Madry et
    al.). Only samples classified correctly are attacked; the others count as non-robust.
    With `input_noise` the noise is drawn once per image and the attack starts from (and is
    centred on) the noisy image, as in the official evaluation.
    """
    _check_xy(x, y)
    n = canonical_norm(norm)
    if step_size is None:
        step_size = 2.5 * eps / max(steps, 1)
    device = _device_of(model01, x.device)
    robust = 0
    for sl in _batches(x.shape[0], batch_size, f"pgd{steps}"):
        xb, yb = _load_batch(x, y, sl, device, input_noise, generator)
        ok = _correct(model01, xb, yb)
        if not bool(ok.any()):
            continue
        adv = pgd_attack(
            model01,
            xb[ok],
            yb[ok],
            eps=eps,
            step_size=step_size,
            steps=steps,
            norm=n,
            restarts=restarts,
            random_start=random_start,
            generator=generator,
        )
        robust += int(_correct(model01, adv, yb[ok]).sum())
    return robust / x.shape[0]


# ---- AutoAttack (torchattacks) ---------------------------------------------------------------


class _Callable01(nn.Module):
    """Gives torchattacks the nn.Module it expects (mode switches, device from parameters)
    around a plain [0, 1] -> logits callable."""

    def __init__(self, fn: Model01, device: torch.device) -> None:
        super().__init__()
        self.fn = fn
        self._anchor = nn.Parameter(torch.empty(0, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _as_module(model01: Model01, device: torch.device) -> nn.Module:
    if isinstance(model01, nn.Module) and any(True for _ in model01.parameters()):
        return model01
    return _Callable01(model01, device)


def make_autoattack(
    model: nn.Module,
    *,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    n_classes: int,
    seed: int | None = 0,
) -> Any:
    """The torchattacks attack object for an AutoAttack version.

    - "standard": `torchattacks.AutoAttack(model, norm, eps, version="standard", ...)`,
      unmodified (APGD-CE, APGD-T, FAB-T, Square 5000; torchattacks keeps its default of 10
      iterations for the three gradient attacks).
    - "paper": the official EB-JDAT/JEM code's reduced AutoAttack: APGD-CE (1 restart, 20
      steps), APGD-DLR untargeted (20 steps), FAB multi-targeted (20 steps), Square (5000
      queries), run in sequence on the still-robust points.
    - "full": the original AutoAttack standard hyperparameters (100 iterations for APGD-CE,
      APGD-T over n_classes-1 targets and FAB-T; Square 5000), i.e. RobustBench's setting.
    """
    import torchattacks as ta

    tnorm = _ta_norm(norm)
    need = 3 if version == "paper" else 4
    if n_classes < need:
        raise ValueError(
            f"AutoAttack version {version!r} needs n_classes >= {need} (its DLR losses use the "
            f"{need - 1}rd/4th largest logit), got n_classes={n_classes}"
        )
    if version == "standard":
        return ta.AutoAttack(
            model, norm=tnorm, eps=eps, version="standard", n_classes=n_classes, seed=seed
        )
    common = dict(norm=tnorm, eps=eps, seed=seed, n_restarts=1)
    if version == "paper":
        attacks = [
            ta.APGD(model, steps=20, loss="ce", **common),
            ta.APGD(model, steps=20, loss="dlr", **common),
            ta.FAB(model, steps=20, multi_targeted=True, n_classes=n_classes, **common),
            ta.Square(model, n_queries=5000, **common),
        ]
    elif version == "full":
        attacks = [
            ta.APGD(model, steps=100, loss="ce", **common),
            ta.APGDT(model, steps=100, n_classes=n_classes, **common),
            ta.FAB(model, steps=100, multi_targeted=True, n_classes=n_classes, **common),
            ta.Square(model, n_queries=5000, **common),
        ]
    else:
        raise ValueError(f"version must be one of {', '.join(_AA_VERSIONS)}, got {version!r}")
    return ta.MultiAttack(attacks)


@outside_inference_mode
def autoattack_accuracy(
    model01: Model01,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    n_classes: int,
    batch_size: int = 500,
    seed: int | None = 0,
    input_noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> float:
    """Robust accuracy under AutoAttack (see `make_autoattack` for the versions).

    torchattacks reseeds the global torch RNG inside its attacks; that is confined here, so the
    caller's RNG stream is unchanged. `input_noise` (paper protocol) is drawn with `generator`.
    """
    _check_xy(x, y)
    device = _device_of(model01, x.device)
    module = _as_module(model01, device)
    atk = make_autoattack(
        module, eps=eps, norm=norm, version=version, n_classes=n_classes, seed=seed
    )
    devices = [device] if device.type == "cuda" else []
    robust = 0
    with torch.random.fork_rng(devices=devices), grad_mode():
        for sl in _batches(x.shape[0], batch_size, f"autoattack-{version}"):
            xb, yb = _load_batch(x, y, sl, device, input_noise, generator)
            with torch.no_grad():
                logits = module(xb)
            if logits.shape[1] != n_classes:
                raise ValueError(f"model gives {logits.shape[1]} logits, n_classes={n_classes}")
            ok = _hits(logits, yb)
            adv = atk(xb, yb)
            robust += int((ok & _correct(module, adv, yb)).sum())
    return robust / x.shape[0]


# ---- protocols and the report ----------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """How eps, test-time noise and AutoAttack are set for an evaluation."""

    name: str
    eps_scale: float  # pixel eps applied = eps_requested * eps_scale
    input_noise: float  # σ of per-image Gaussian noise, [0, 1] pixel units
    autoattack_version: str
    standard: bool

    def pixel_eps(self, eps_requested: float) -> float:
        return eps_requested * self.eps_scale

    def pgd_step_size(self, eps_pixel: float, steps: int) -> float:
        """Standard: 2.5·eps/steps. Paper: the official alpha = eps/8 (1/255 at 8/255), which is
        the same value at 20 steps."""
        return eps_pixel / 8 if self.name == "paper" else 2.5 * eps_pixel / max(steps, 1)

    def note(self, eps_requested: float, norm: str) -> str:
        """One sentence or two saying what the numbers mean (goes into the report)."""
        e = self.pixel_eps(eps_requested)
        aa = _AA_NOTES.get(self.autoattack_version, self.autoattack_version)
        if self.name == "paper" or not self.standard:
            return (
                f"{self.name.capitalize()} protocol (reproduces the official EB-JDAT/JEM "
                f"evaluation code; NOT a standard robustness evaluation, not comparable to "
                f"RobustBench): the requested eps={_fmt_eps(eps_requested)} is applied to "
                f"[-1,1]-normalised inputs, i.e. eps={_fmt_eps(e)} in [0,1] pixels ({norm}); "
                f"Gaussian test-time noise sigma={2 * self.input_noise:g} in [-1,1] units "
                f"({self.input_noise:g} in pixels) is added to each image once per pass; "
                f"AutoAttack: {aa}."
            )
        return (
            f"Standard protocol: eps={_fmt_eps(e)} ({norm}) in [0,1] pixel units as requested, "
            f"no test-time noise, PGD with step 2.5*eps/steps, AutoAttack: {aa}. Robust "
            f"accuracy counts samples correct both clean and under attack."
        )


_AA_NOTES = {
    "standard": (
        "torchattacks' 'standard' version, unmodified (APGD-CE, APGD-T, FAB-T, Square 5000; "
        "torchattacks runs 10 iterations per gradient attack where the original AutoAttack "
        "runs 100)"
    ),
    "paper": (
        "the official reduced version (APGD-CE and APGD-DLR 20 steps, FAB-T 20 steps, "
        "Square 5000 queries)"
    ),
    "full": (
        "the original AutoAttack standard settings (APGD-CE, APGD-T, FAB-T with 100 "
        "iterations, Square 5000)"
    ),
}


def _fmt_eps(e: float) -> str:
    """0.03137 -> '0.03137 (8/255)'; values that are not k/255 as plain numbers."""
    k = e * 255
    return f"{e:.4g} ({round(k)}/255)" if abs(k - round(k)) < 1e-6 else f"{e:.4g}"


PROTOCOLS: dict[str, Protocol] = {
    "standard": Protocol("standard", 1.0, 0.0, "standard", True),
    "paper": Protocol("paper", 0.5, PAPER_NOISE_INTERNAL / 2, "paper", False),
}


def get_protocol(protocol: str | Protocol) -> Protocol:
    if isinstance(protocol, Protocol):
        return protocol
    try:
        return PROTOCOLS[str(protocol).lower()]
    except KeyError:
        raise ValueError(
            f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}"
        ) from None


def evaluate_robustness(
    model01: Model01,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    protocol: str | Protocol = "standard",
    eps: float,
    norm: str = "linf",
    attacks: Sequence[str] = ("pgd20", "autoattack"),
    n_classes: int,
    generator: torch.Generator | None = None,
    batch_size: int = 500,
    seed: int | None = 0,
    sanity: bool = False,
) -> dict[str, Any]:
    """Clean accuracy plus the named attacks ("pgdK" for any K, "autoattack"), as report keys.

    Keys: clean_acc, pgdK_acc / autoattack_acc (only for attacks run: a metric not run is
    absent, never 0), eps (pixel eps actually applied), eps_requested, norm, protocol,
    protocol_note, n_examples, input_noise, and the attack settings. With `sanity=True`,
    `sanity` (numbers) and `sanity_warnings` (gradient-masking warnings) are added too.
    """
    _check_xy(x, y)
    proto = get_protocol(protocol)
    n = canonical_norm(norm)
    e = proto.pixel_eps(eps)
    report: dict[str, Any] = {
        "protocol": proto.name,
        "protocol_note": proto.note(eps, n),
        "eps": e,
        "eps_requested": eps,
        "norm": n,
        "n_examples": int(x.shape[0]),
        "input_noise": proto.input_noise,
    }
    report["clean_acc"] = clean_accuracy(
        model01, x, y, batch_size=batch_size, input_noise=proto.input_noise, generator=generator
    )
    for name in attacks:
        key = str(name).lower()
        m = _PGD_NAME.match(key)
        if m:
            steps = int(m.group(1))
            step = proto.pgd_step_size(e, steps)
            report[f"{key}_acc"] = pgd_accuracy(
                model01, x, y, eps=e, norm=n, steps=steps, restarts=1, step_size=step,
                batch_size=batch_size, generator=generator, input_noise=proto.input_noise,
            )
            report[f"{key}_step_size"] = step
            report[f"{key}_restarts"] = 1
        elif key == "autoattack":
            report["autoattack_acc"] = autoattack_accuracy(
                model01, x, y, eps=e, norm=n, version=proto.autoattack_version,
                n_classes=n_classes, batch_size=batch_size, seed=seed,
                input_noise=proto.input_noise, generator=generator,
            )
            report["autoattack_version"] = proto.autoattack_version
        else:
            raise ValueError(f"unknown attack {name!r}; use 'pgdK' (e.g. 'pgd20') or 'autoattack'")
    if sanity:
        details = sanity_report(
            model01, x, y, eps=e, norm=n, generator=generator, batch_size=batch_size
        )
        report["sanity_warnings"] = details.pop("warnings")
        report["sanity"] = details
    return report


# ---- gradient-masking sanity checks ----------------------------------------------------------


def _reachable_eps(norm: str, x: torch.Tensor) -> float:
    """An eps whose ball covers the whole [0, 1] box: any image is reachable."""
    return 1.0 if norm == "linf" else math.sqrt(x[0].numel())


@outside_inference_mode
def zero_gradient_fraction(
    model01: Model01, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500
) -> float:
    """Fraction of samples whose CE input gradient is exactly zero (AutoAttack's
    check_zero_gradients): PGD cannot move them, so its robust accuracy means nothing there."""
    device = _device_of(model01, x.device)
    zero = 0
    for sl in _batches(x.shape[0], batch_size, "grad check"):
        xb, yb = _load_batch(x, y, sl, device, 0.0, None)
        with grad_mode():
            xr = xb.detach().requires_grad_(True)
            loss = nn.functional.cross_entropy(model01(xr), yb, reduction="sum")
            g = None
            if loss.requires_grad:
                (g,) = torch.autograd.grad(loss, xr, allow_unused=True)
        if g is None:  # the output does not depend on the input at all
            zero += xb.shape[0]
        else:
            zero += int((g.flatten(1).abs().amax(dim=1) == 0).sum())
    return zero / x.shape[0]


def sanity_report(
    model01: Model01,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    generator: torch.Generator | None = None,
    steps: int = 20,
    batch_size: int = 500,
    max_examples: int | None = 1000,
    tol: float = 0.02,
) -> dict[str, Any]:
    """The numbers behind `sanity_checks` plus its warnings (key "warnings").

    Runs PGD-`steps` at eps/2, eps, 2·eps and at an eps that reaches every image, a stronger
    PGD (5× the steps, 3 restarts) and uniform noise in the ball at eps, and checks the input
    gradients, on the first `max_examples` samples.
    `tol` is the accuracy slack (plus one example) allowed before a check warns.
    """
    _check_xy(x, y)
    n = canonical_norm(norm)
    if max_examples is not None:
        x, y = x[:max_examples], y[:max_examples]
    count = x.shape[0]
    slack = tol + 1.0 / count

    def pgd(e: float, k: int = steps, r: int = 1) -> float:
        return pgd_accuracy(
            model01, x, y, eps=e, norm=n, steps=k, restarts=r, batch_size=batch_size,
            generator=generator,
        )

    clean = clean_accuracy(model01, x, y, batch_size=batch_size)
    by_eps = {eps / 2: pgd(eps / 2), eps: pgd(eps), 2 * eps: pgd(2 * eps)}
    big = _reachable_eps(n, x)
    big_acc = pgd(big, k=max(steps, 50))
    strong = pgd(eps, k=5 * steps, r=3)
    noise_acc = pgd(eps, k=0)  # the random start alone: uniform noise in the eps-ball
    zero_frac = zero_gradient_fraction(model01, x, y, batch_size=batch_size)

    warnings: list[str] = []
    eps_list = sorted(by_eps)
    for lo, hi in zip(eps_list, eps_list[1:], strict=False):
        if by_eps[hi] > by_eps[lo] + slack:
            warnings.append(
                f"robust accuracy rises with eps ({by_eps[lo]:.1%} at eps={lo:.4g} -> "
                f"{by_eps[hi]:.1%} at eps={hi:.4g}): the attack is failing, suspect gradient "
                f"masking"
            )
    lo_acc, hi_acc = by_eps[eps_list[0]], by_eps[eps_list[-1]]
    if lo_acc > 0.1 and lo_acc - hi_acc < max(slack, 0.1 * lo_acc):
        warnings.append(
            f"robust accuracy does not fall as eps grows 4x ({lo_acc:.1%} at eps={eps_list[0]:.4g}"
            f", {hi_acc:.1%} at eps={eps_list[-1]:.4g}): suspect gradient masking"
        )
    if big_acc > 0.1:
        warnings.append(
            f"robust accuracy is {big_acc:.1%} at eps={big:.4g} ({n}), where every image is "
            f"reachable; it should be near 0: suspect gradient masking or a broken attack"
        )
    if noise_acc > 0.1 and by_eps[eps] >= noise_acc - slack:
        warnings.append(
            f"PGD-{steps} ({by_eps[eps]:.1%}) does no better than random noise in the same ball "
            f"({noise_acc:.1%}) at eps={eps:.4g}: its gradient steps are not working, suspect "
            f"gradient masking"
        )
    if strong > by_eps[eps] + slack:
        warnings.append(
            f"a stronger attack gives higher accuracy (PGD-{5 * steps} x3 restarts: {strong:.1%} "
            f"vs PGD-{steps}: {by_eps[eps]:.1%} at eps={eps:.4g}): the attack is unreliable"
        )
    if zero_frac > 0:
        warnings.append(
            f"{zero_frac:.1%} of samples have an exactly zero input gradient of the CE loss "
            f"(non-differentiable or saturated model): gradient attacks cannot move them; "
            f"suspect gradient masking"
        )
    return {
        "n_examples": count,
        "clean_acc": clean,
        "pgd_acc_by_eps": {f"{e:.6g}": a for e, a in by_eps.items()},
        "reachable_eps": big,
        "reachable_eps_acc": big_acc,
        "strong_pgd_acc": strong,
        "strong_pgd": f"pgd{5 * steps}x3",
        "random_noise_acc": noise_acc,
        "zero_grad_fraction": zero_frac,
        "warnings": warnings,
    }


def sanity_checks(
    model01: Model01,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> list[str]:
    """Gradient-masking warnings in the spirit of AutoAttack's checks (empty list: none).

    A sound evaluation has robust accuracy that falls as eps grows (by more than a tenth over
    eps/2 -> 2·eps), reaches about 0 when eps covers the whole image box, never rises under a
    stronger attack, beats random noise, and nonzero input gradients. Extra keyword arguments
    go to `sanity_report`.
    """
    return sanity_report(model01, x, y, eps=eps, norm=norm, generator=generator, **kwargs)[
        "warnings"
    ]
