"""Accuracy and adversarial robustness of [0, 1]-input classifiers (`ebjdat.load_classifier`).

Two protocols (see docs/method-notes.md, 'The official evaluation'):

- "standard": eps in [0, 1] pixel units as requested, no test-time noise, PGD-k with step
  2.5·eps/k, and the original AutoAttack (Croce & Hein's own code, packaged as pyautoattack),
  "standard" version, applied unmodified. These are the numbers to cite. torchattacks' port
  of AutoAttack stays available as a cross-check (aa_impl="torchattacks"); it runs 10
  iterations per gradient attack where the original runs 100.
- "paper": what the official EB-JDAT/JEM evaluation code does, reproduced on purpose so that our
  numbers can be put next to the paper's: eps applied to [-1, 1]-normalised inputs (so half the
  requested eps in pixels), Gaussian test-time noise σ = 0.03 in [-1, 1] units (0.015 in pixels)
  and a reduced AutoAttack built from torchattacks' attacks (as the official code does). The
  report says it is not a standard evaluation.

Every accuracy comes with its 95% Wilson score interval (`<key>_ci95`), since a few hundred test
images leave a few points of sampling error.

Robust accuracy follows AutoAttack's convention: a sample counts as robust when it is classified
correctly clean *and* after the attack, so robust accuracy can never exceed clean accuracy. A
prediction from logits that are not all finite counts as wrong.

Test-time noise ("paper") is drawn once per image per evaluation pass, as the official data
loader does (the noise is part of the loaded image); the attack then sees a deterministic model
and its eps-ball is centred on the noisy image.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ebjdat.attacks import pgd_attack
from ebjdat.checks import SettingsError
from ebjdat.data import to_float01
from ebjdat.grad_modes import grad_mode, outside_inference_mode

from .intervals import accuracy_ci95

Model01 = Callable[[torch.Tensor], torch.Tensor]

PAPER_NOISE_INTERNAL = 0.03  # σ of the official loader's noise, in [-1, 1] units
_PGD_NAME = re.compile(r"^pgd(\d+)$")


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


# ---- AutoAttack: the original code and the torchattacks port ---------------------------------

# The engines, the pip package each one needs, and the versions each one can run. "paper" is
# the paper protocol's own reduced version; "full" is the port's attacks at the original's
# iteration counts (a cross-check, since the port's "standard" runs 10 iterations).
AA_ENGINES = ("original", "torchattacks")
AA_PACKAGES = {"original": "pyautoattack", "torchattacks": "torchattacks"}
AA_VERSIONS = {
    "original": ("standard", "plus", "rand"),
    "torchattacks": ("standard", "plus", "rand", "full", "paper"),
}
AA_USER_VERSIONS = ("standard", "plus", "rand", "full")  # what a caller may ask for by name
# The DLR losses read the 3rd (untargeted) or 4th (targeted) largest logit.
_AA_MIN_CLASSES = {"standard": 4, "plus": 4, "rand": 3, "full": 4, "paper": 3}


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


def resolve_autoattack(
    protocol: str | Protocol = "standard",
    aa_impl: str | None = None,
    aa_version: str | None = None,
) -> tuple[str, str]:
    """(engine, version) that a protocol runs, with the caller's choices checked.

    None means the protocol's own: the original engine's "standard" version for the standard
    protocol; the torchattacks-built reduced version for the paper protocol, which fixes both
    (it reproduces the official EB-JDAT code, which used torchattacks). A SettingsError names
    the field (aa_impl, aa_version) that cannot be used.
    """
    proto = get_protocol(protocol)
    if aa_impl is not None and aa_impl not in AA_ENGINES:
        raise SettingsError("aa_impl", f"must be 'original' or 'torchattacks', got {aa_impl!r}")
    if aa_version is not None and aa_version not in AA_USER_VERSIONS:
        raise SettingsError(
            "aa_version",
            f"must be one of {', '.join(AA_USER_VERSIONS)}, got {aa_version!r}",
        )
    if not proto.standard:
        if aa_impl not in (None, proto.autoattack_engine):
            raise SettingsError(
                "aa_impl",
                f"{aa_impl} cannot run the {proto.name} protocol: its reduced AutoAttack is "
                f"built from {proto.autoattack_engine} attacks, as in the official code; leave "
                "it out, or use the standard protocol",
            )
        if aa_version is not None:
            raise SettingsError(
                "aa_version",
                f"{aa_version} cannot be chosen under the {proto.name} protocol, which fixes "
                "its own reduced AutoAttack; leave it out, or use the standard protocol",
            )
        return proto.autoattack_engine, proto.autoattack_version
    engine = aa_impl or proto.autoattack_engine
    version = aa_version or proto.autoattack_version
    if version not in AA_VERSIONS[engine]:
        others = [e for e in AA_ENGINES if version in AA_VERSIONS[e]]
        hint = f"; {version} needs the {others[0]} engine" if others else ""
        raise SettingsError(
            "aa_version",
            f"{version} is not a version of the {engine} AutoAttack (it has "
            f"{', '.join(v for v in AA_VERSIONS[engine] if v in AA_USER_VERSIONS)}){hint}",
        )
    return engine, version


def autoattack_min_classes(version: str) -> int:
    """How many classes an AutoAttack version needs (its DLR losses read the 3rd or 4th
    largest logit)."""
    return _AA_MIN_CLASSES[version]


def _check_classes(version: str, n_classes: int) -> None:
    need = _AA_MIN_CLASSES.get(version, 4)
    if n_classes < need:
        raise ValueError(
            f"AutoAttack version {version!r} needs n_classes >= {need} (its DLR losses use the "
            f"{need - 1}rd/4th largest logit), got n_classes={n_classes}"
        )


def make_autoattack(
    model: nn.Module,
    *,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    n_classes: int,
    seed: int | None = 0,
) -> Any:
    """The torchattacks attack object for an AutoAttack version (the port, not the original).

    - "standard", "plus", "rand": `torchattacks.AutoAttack(model, norm, eps, version=...)`,
      unmodified ("standard": APGD-CE, APGD-T, FAB-T, Square 5000; torchattacks keeps its
      default of 10 iterations for the three gradient attacks).
    - "paper": the official EB-JDAT/JEM code's reduced AutoAttack: APGD-CE (1 restart, 20
      steps), APGD-DLR untargeted (20 steps), FAB multi-targeted (20 steps), Square (5000
      queries), run in sequence on the still-robust points.
    - "full": the original AutoAttack standard hyperparameters (100 iterations for APGD-CE,
      APGD-T over n_classes-1 targets and FAB-T; Square 5000), built from the port's attacks.
    """
    import torchattacks as ta

    if version not in AA_VERSIONS["torchattacks"]:
        raise ValueError(
            f"version must be one of {', '.join(AA_VERSIONS['torchattacks'])}, got {version!r}"
        )
    tnorm = _ta_norm(norm)
    _check_classes(version, n_classes)
    if version in ("standard", "plus", "rand"):
        return ta.AutoAttack(
            model, norm=tnorm, eps=eps, version=version, n_classes=n_classes, seed=seed
        )
    common = dict(norm=tnorm, eps=eps, seed=seed, n_restarts=1)
    if version == "paper":
        attacks = [
            ta.APGD(model, steps=20, loss="ce", **common),
            ta.APGD(model, steps=20, loss="dlr", **common),
            ta.FAB(model, steps=20, multi_targeted=True, n_classes=n_classes, **common),
            ta.Square(model, n_queries=5000, **common),
        ]
    else:  # full
        attacks = [
            ta.APGD(model, steps=100, loss="ce", **common),
            ta.APGDT(model, steps=100, n_classes=n_classes, **common),
            ta.FAB(model, steps=100, multi_targeted=True, n_classes=n_classes, **common),
            ta.Square(model, n_queries=5000, **common),
        ]
    return ta.MultiAttack(attacks)


def make_original_autoattack(
    model: Model01,
    *,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    n_classes: int,
    seed: int | None = 0,
    device: torch.device | str = "cpu",
) -> Any:
    """Croce & Hein's own `AutoAttack` object (package pyautoattack) for a version.

    Its settings are left as they are, with one exception: the targeted attacks aim at the
    9 runner-up classes, which assumes 10 or more classes; with fewer the original would index
    past the logits, so the number of targets is capped at n_classes - 1 (what its own
    n_classes check asks for). On 10 classes nothing changes.
    """
    from pyautoattack import AutoAttack

    if version not in AA_VERSIONS["original"]:
        raise ValueError(
            f"version must be one of {', '.join(AA_VERSIONS['original'])}, got {version!r}"
        )
    _check_classes(version, n_classes)
    atk = AutoAttack(
        model, eps=eps, norm=_ta_norm(norm), version=version, seed=seed, device=device
    )
    for sub in (atk.apgd_targeted, atk.fab):
        sub.n_target_classes = min(sub.n_target_classes, n_classes - 1)
    return atk


_DIGITS = re.compile(r"\d+(\.\d+)?")


def _collapse(messages: Sequence[str]) -> list[str]:
    """The engine's messages once each: those that differ only in their numbers (the same
    check on another batch or restart) are kept once, with how often they came."""
    order: list[str] = []
    first: dict[str, str] = {}
    count: dict[str, int] = {}
    for m in messages:
        key = _DIGITS.sub("#", m)
        if key not in first:
            order.append(key)
            first[key] = m
        count[key] = count.get(key, 0) + 1
    return [
        first[k] + (f" (reported {count[k]} times; the first shown)" if count[k] > 1 else "")
        for k in order
    ]


@contextmanager
def _engine_messages(logger: logging.Logger) -> Iterator[list[str]]:
    """Collects the original engine's check messages instead of letting them print.

    Its checks write to its logger (or, without one, through `warnings`); both are gathered
    into the yielded list. Its dynamic-defence check traces the model's forward with
    sys.settrace and then clears the trace function, which would switch off a debugger or a
    coverage tool: the caller's trace function is put back. The check's call counter lives in
    the engine's module for the whole process, so it is reset first; otherwise one model's
    result would be reported for every model after it.
    """
    from pyautoattack import checks

    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(logging.WARNING)
    level, propagate = logger.level, logger.propagate
    trace = sys.gettrace()
    for name in checks.funcs:
        checks.funcs[name] = 0
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
    finally:
        sys.settrace(trace)
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
        for w in caught:
            if "pyautoattack" in str(w.filename):
                messages.append(str(w.message))
            else:  # not the engine's: pass it on as it came
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


@outside_inference_mode
def autoattack_run(
    model01: Model01,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    engine: str | None = None,
    n_classes: int,
    batch_size: int = 500,
    seed: int | None = 0,
    input_noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Robust accuracy under AutoAttack, with the engine that ran it and the engine's checks.

    engine: "original" (Croce & Hein's code, package pyautoattack) or "torchattacks" (the
    port); None picks the original for the versions it has and the port for "paper" and
    "full". Returns {"acc", "robust" (per example, bool, CPU), "engine", "version", "checks"};
    "checks" holds the original's own warnings (randomised or dynamic model, probabilities
    instead of logits, zero gradients, Square doing better than the gradient attacks), each
    once, as text; the port has none.

    Both engines reseed the global torch RNG inside their attacks; that is confined here, so
    the caller's RNG stream is unchanged. `input_noise` (paper protocol) is drawn with
    `generator`.
    """
    _check_xy(x, y)
    if engine is None:
        engine = "original" if version in AA_VERSIONS["original"] else "torchattacks"
    if engine not in AA_ENGINES:
        raise ValueError(f"engine must be 'original' or 'torchattacks', got {engine!r}")
    device = _device_of(model01, x.device)
    module = _as_module(model01, device)
    if engine == "original":
        atk = make_original_autoattack(
            module, eps=eps, norm=norm, version=version, n_classes=n_classes, seed=seed,
            device=device,
        )
    else:
        atk = make_autoattack(
            module, eps=eps, norm=norm, version=version, n_classes=n_classes, seed=seed
        )
    devices = [device] if device.type == "cuda" else []
    checks: list[str] = []
    with torch.random.fork_rng(devices=devices), grad_mode():
        # One pass over the data gives each image's (noisy) input and whether it is right
        # clean; the original then runs once over all of them, as it is meant to be run (its
        # checks look at the first batch, and its Square check compares whole-set numbers).
        xs, ok = [], []
        for sl in _batches(x.shape[0], batch_size, f"autoattack-{version}"):
            xb, yb = _load_batch(x, y, sl, device, input_noise, generator)
            with torch.no_grad():
                logits = module(xb)
            if logits.shape[1] != n_classes:
                raise ValueError(f"model gives {logits.shape[1]} logits, n_classes={n_classes}")
            ok.append(_hits(logits, yb).cpu())
            if engine == "original":
                xs.append(xb.cpu())
            else:
                adv = atk(xb, yb)
                ok[-1] &= _correct(module, adv, yb).cpu()
        if engine == "original":
            x_all = torch.cat(xs)
            y_all = y.long().cpu()
            with _engine_messages(atk.logger) as messages:
                adv_all, _ = atk.run_standard_evaluation(x_all, y_all, batch_size=batch_size)
            checks = _collapse(messages)
            for i, sl in enumerate(_batches(x.shape[0], batch_size, "autoattack check")):
                adv = adv_all[sl].to(device)
                ok[i] &= _correct(module, adv, y_all[sl].to(device)).cpu()
    robust = torch.cat(ok)
    return {
        "acc": int(robust.sum()) / x.shape[0],
        "robust": robust,
        "engine": engine,
        "version": version,
        "checks": checks,
    }


def autoattack_accuracy(
    model01: Model01,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    engine: str | None = None,
    n_classes: int,
    batch_size: int = 500,
    seed: int | None = 0,
    input_noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> float:
    """Robust accuracy under AutoAttack (`autoattack_run` without the checks): the original
    engine for "standard", "plus" and "rand" unless `engine` says otherwise, the torchattacks
    port for "paper" and "full" (see `make_autoattack`)."""
    return autoattack_run(
        model01, x, y, eps=eps, norm=norm, version=version, engine=engine,
        n_classes=n_classes, batch_size=batch_size, seed=seed, input_noise=input_noise,
        generator=generator,
    )["acc"]


# ---- protocols and the report ----------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """How eps, test-time noise and AutoAttack are set for an evaluation."""

    name: str
    eps_scale: float  # pixel eps applied = eps_requested * eps_scale
    input_noise: float  # σ of per-image Gaussian noise, [0, 1] pixel units
    autoattack_version: str
    standard: bool
    autoattack_engine: str = "original"  # the engine that runs autoattack_version by default

    def pixel_eps(self, eps_requested: float) -> float:
        return eps_requested * self.eps_scale

    def pgd_step_size(self, eps_pixel: float, steps: int) -> float:
        """Standard: 2.5·eps/steps. Paper: the official alpha = eps/8 (1/255 at 8/255), which is
        the same value at 20 steps."""
        return eps_pixel / 8 if self.name == "paper" else 2.5 * eps_pixel / max(steps, 1)

    def note(
        self,
        eps_requested: float,
        norm: str,
        aa_impl: str | None = None,
        aa_version: str | None = None,
    ) -> str:
        """One sentence or two saying what the numbers mean (goes into the report); the
        AutoAttack part names the engine and version that run (the protocol's own if None)."""
        e = self.pixel_eps(eps_requested)
        engine = aa_impl or self.autoattack_engine
        version = aa_version or self.autoattack_version
        aa = autoattack_note(engine, version)
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
    ("original", "standard"): (
        "the original AutoAttack (Croce & Hein's code, package pyautoattack), 'standard' "
        "version, unmodified: APGD-CE, APGD-T, FAB-T with 100 iterations, Square 5000 queries"
    ),
    ("original", "plus"): (
        "the original AutoAttack (Croce & Hein's code, package pyautoattack), 'plus' version: "
        "APGD-CE and APGD-DLR with 5 restarts, FAB, Square, APGD-T, FAB-T"
    ),
    ("original", "rand"): (
        "the original AutoAttack (Croce & Hein's code, package pyautoattack), 'rand' version "
        "for randomised models: APGD-CE and APGD-DLR averaging 20 gradients per step"
    ),
    ("torchattacks", "standard"): (
        "torchattacks' port, 'standard' version, unmodified (APGD-CE, APGD-T, FAB-T, Square "
        "5000; the port runs 10 iterations per gradient attack where the original AutoAttack "
        "runs 100): a cross-check, weaker than the original"
    ),
    ("torchattacks", "plus"): "torchattacks' port, 'plus' version, unmodified",
    ("torchattacks", "rand"): "torchattacks' port, 'rand' version, unmodified",
    ("torchattacks", "paper"): (
        "the official reduced version (APGD-CE and APGD-DLR 20 steps, FAB-T 20 steps, "
        "Square 5000 queries)"
    ),
    ("torchattacks", "full"): (
        "torchattacks' attacks at the original AutoAttack's standard settings (APGD-CE, "
        "APGD-T, FAB-T with 100 iterations, Square 5000)"
    ),
}


def autoattack_note(engine: str, version: str) -> str:
    """What an (engine, version) pair runs, in a few words for the report."""
    return _AA_NOTES.get((engine, version), f"{engine}, {version!r} version")


def _fmt_eps(e: float) -> str:
    """0.03137 -> '0.03137 (8/255)'; values that are not k/255 as plain numbers."""
    k = e * 255
    return f"{e:.4g} ({round(k)}/255)" if abs(k - round(k)) < 1e-6 else f"{e:.4g}"


PROTOCOLS: dict[str, Protocol] = {
    "standard": Protocol("standard", 1.0, 0.0, "standard", True),
    "paper": Protocol("paper", 0.5, PAPER_NOISE_INTERNAL / 2, "paper", False, "torchattacks"),
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
    aa_impl: str | None = None,
    aa_version: str | None = None,
) -> dict[str, Any]:
    """Clean accuracy plus the named attacks ("pgdK" for any K, "autoattack"), as report keys.

    Keys: clean_acc, pgdK_acc / autoattack_acc (only for attacks run: a metric not run is
    absent, never 0), each with `<key>_ci95` (its 95% Wilson interval [low, high]), eps (pixel
    eps actually applied), eps_requested, norm, protocol, protocol_note, n_examples,
    input_noise, and the attack settings; with AutoAttack also autoattack_engine
    ("original" or "torchattacks"), autoattack_version and autoattack_checks (the original
    engine's own warnings, as text). `aa_impl` / `aa_version` choose the engine and version
    (None: the protocol's own; see `resolve_autoattack`). With `sanity=True`, `sanity`
    (numbers) and `sanity_warnings` (gradient-masking warnings) are added too.
    """
    _check_xy(x, y)
    proto = get_protocol(protocol)
    n = canonical_norm(norm)
    e = proto.pixel_eps(eps)
    names = [str(a).lower() for a in attacks]
    for key in names:
        if not (_PGD_NAME.match(key) or key == "autoattack"):
            raise ValueError(f"unknown attack {key!r}; use 'pgdK' (e.g. 'pgd20') or 'autoattack'")
    engine, version = resolve_autoattack(proto, aa_impl, aa_version)
    count = int(x.shape[0])
    report: dict[str, Any] = {
        "protocol": proto.name,
        "protocol_note": proto.note(eps, n, engine, version),
        "eps": e,
        "eps_requested": eps,
        "norm": n,
        "n_examples": count,
        "input_noise": proto.input_noise,
    }
    report["clean_acc"] = clean_accuracy(
        model01, x, y, batch_size=batch_size, input_noise=proto.input_noise, generator=generator
    )
    report["clean_acc_ci95"] = accuracy_ci95(report["clean_acc"], count)
    for key in names:
        m = _PGD_NAME.match(key)
        if m:
            steps = int(m.group(1))
            step = proto.pgd_step_size(e, steps)
            report[f"{key}_acc"] = pgd_accuracy(
                model01, x, y, eps=e, norm=n, steps=steps, restarts=1, step_size=step,
                batch_size=batch_size, generator=generator, input_noise=proto.input_noise,
            )
            report[f"{key}_acc_ci95"] = accuracy_ci95(report[f"{key}_acc"], count)
            report[f"{key}_step_size"] = step
            report[f"{key}_restarts"] = 1
        else:
            result = autoattack_run(
                model01, x, y, eps=e, norm=n, version=version, engine=engine,
                n_classes=n_classes, batch_size=batch_size, seed=seed,
                input_noise=proto.input_noise, generator=generator,
            )
            report["autoattack_acc"] = result["acc"]
            report["autoattack_acc_ci95"] = accuracy_ci95(result["acc"], count)
            report["autoattack_version"] = version
            report["autoattack_engine"] = engine
            report["autoattack_checks"] = result["checks"]
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
        "clean_acc_ci95": accuracy_ci95(clean, count),
        "pgd_acc_by_eps": {f"{e:.6g}": a for e, a in by_eps.items()},
        "pgd_acc_by_eps_ci95": {f"{e:.6g}": accuracy_ci95(a, count) for e, a in by_eps.items()},
        "reachable_eps": big,
        "reachable_eps_acc": big_acc,
        "reachable_eps_acc_ci95": accuracy_ci95(big_acc, count),
        "strong_pgd_acc": strong,
        "strong_pgd_acc_ci95": accuracy_ci95(strong, count),
        "strong_pgd": f"pgd{5 * steps}x3",
        "random_noise_acc": noise_acc,
        "random_noise_acc_ci95": accuracy_ci95(noise_acc, count),
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
