"""One training iteration timed two ways on the same model, batch and preset (`official`):
the faithful eager reference of the official loop (ebjdat.benchmarks.official) and ebjdat's
trainer. Both start from the same weights and see the same batches; per-phase times come from
device-synchronised wall clocks, FLOPs from torch's FLOP counter over one iteration of each."""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from ebjdat.benchmarks import measure
from ebjdat.models import JEM
from ebjdat.train import config as C
from ebjdat.train.trainer import PhaseTimer, Trainer

from .official import OfficialSettings, class_gaussian_init, official_iteration

PHASES = ("sgld", "adversarial", "loss_forward", "loss_backward", "optimizer")
MODELS = ("wrn-10-2", "wrn-16-4", "wrn-28-10")
# ebjdat's opt-in speed switches, each timed as its own row ("ebjdat+NAME") in the same run.
VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "bf16": ("train.autocast=bf16",),
    "compile": ("train.compile=true",),
    "bf16-compile": ("train.autocast=bf16", "train.compile=true"),
    "cuda-graphs": ("train.cuda_graphs=true",),
    "bf16-cuda-graphs": ("train.autocast=bf16", "train.cuda_graphs=true"),
}


def impl_name(variant: str) -> str:
    return "ebjdat" if variant == "default" else f"ebjdat+{variant}"


@dataclass
class StepResult:
    impl: str  # "official" or "ebjdat"
    model: str
    batch: int
    median_s: float
    phases: dict[str, float]
    flops: float
    times_s: list[float] = field(default_factory=list)

    @property
    def tflops(self) -> float:
        return self.flops / self.median_s / 1e12 if self.median_s > 0 else 0.0

    def row(self) -> dict:
        return {
            "impl": self.impl,
            "model": self.model,
            "batch": self.batch,
            "median_s": self.median_s,
            "phases": self.phases,
            "flops": self.flops,
            "tflops": self.tflops,
            "times_s": self.times_s,
        }


def matmul_tflops(device: torch.device, dtype: torch.dtype, *, quick: bool = False) -> float:
    """The measured dense matmul rate (TFLOP/s), the denominator of an iteration's FLOP floor:
    the time it would take if every counted FLOP ran at this rate."""
    n = 256 if quick else (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timing = measure(lambda: a @ b, min_run_time=0.05 if quick else 1.0)
    return 2 * n**3 / timing.median_s / 1e12


def _config(model: str, batch: int, overrides: list[str]) -> C.Config:
    cfg = C.load_preset("official")
    for assignment in [
        "data.dataset=synthetic",
        f"model.arch={model}",
        f"data.batch_size={batch}",
        f"data.labelled_batch_size={batch}",
        "sgld.init=gaussian",  # JEM++'s informative init (fitted on the synthetic images)
        "train.eval_limit=0",
        "train.select_metric=val_acc",  # no robust validation runs
        "train.sample_grid=0",
        *overrides,
    ]:
        C.override(cfg, assignment)
    return cfg.validate()


class FlopCount(TorchDispatchMode):
    """torch's FLOP formulas (matmuls, convolutions, their backwards) summed over everything
    that runs inside; unlike FlopCounterMode it tracks no modules, whose hooks break the
    autograd.grad calls that samplers make."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def _median_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    return {p: statistics.median(r.get(p, 0.0) for r in runs) for p in PHASES}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trainer(cfg: C.Config, device: torch.device) -> Trainer:
    with tempfile.TemporaryDirectory() as tmp:
        return Trainer(
            config=cfg, out_dir=tmp, device=device, progress_bar=False, log=lambda m: None
        )


Iteration = Callable[..., None]  # fn(timer: PhaseTimer | None = None): one training iteration


def prepare_step(
    model: str,
    batch: int,
    device: torch.device,
    *,
    overrides: list[str] | None = None,
    variants: tuple[str, ...] = ("default",),
) -> list[tuple[str, Iteration]]:
    """[(impl, fn)]: the official reference and each ebjdat variant, ready to run one
    iteration each call, all from the same initial weights and on the same batches."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    base = list(overrides or [])
    trainers = {
        v: _trainer(_config(model, batch, base + list(VARIANTS[v])), device) for v in variants
    }
    first = next(iter(trainers.values()))
    for trainer in trainers.values():  # identical by seeding already; made explicit
        trainer.model.load_state_dict(first.model.state_dict())
    x_pos, _ = next(iter(first.positives))
    x_lab, y = next(iter(first.labelled))

    # The reference: a copy of the same initial model, its own SGD and buffer, in PyTorch's
    # default NCHW layout as the official code runs (the trainer's model may be channels_last,
    # which is one of ebjdat's optimisations).
    ref_model = copy.deepcopy(first.model).to(memory_format=torch.contiguous_format)
    o = first.cfg.optim
    ref_opt = torch.optim.SGD(
        ref_model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
    )
    ref_buffer = first.buffer.buffer.clone(memory_format=torch.contiguous_format)

    gaussians = first.buffer.gaussians  # the same fitted class Gaussians as the trainer's
    init_random = class_gaussian_init(
        gaussians.means, gaussians.scale_tril, tuple(ref_buffer.shape[1:])
    )

    z_pos, z_lab = JEM.to_internal(x_pos).contiguous(), JEM.to_internal(x_lab).contiguous()
    settings = OfficialSettings()

    def official(timer: PhaseTimer | None = None) -> None:
        official_iteration(
            ref_model,
            ref_opt,
            z_pos,
            z_lab,
            y,
            ref_buffer,
            init_random,
            settings,
            timer=timer or PhaseTimer(enabled=False),
        )

    def ebjdat(trainer: Trainer) -> Iteration:
        def step(timer: PhaseTimer | None = None) -> None:
            trainer.train_step(x_pos, x_lab, y, timer)

        return step

    return [("official", official)] + [(impl_name(v), ebjdat(t)) for v, t in trainers.items()]


def run_step(
    model: str,
    batch: int,
    device: torch.device,
    *,
    repeats: int = 5,
    warmup: int = 1,
    overrides: list[str] | None = None,
    variants: tuple[str, ...] = ("default",),
) -> list[StepResult]:
    """Times `repeats` iterations of each implementation of `prepare_step` after `warmup` ones,
    with per-phase times and FLOPs counted over one extra iteration."""
    results = []
    for impl, fn in prepare_step(model, batch, device, overrides=overrides, variants=variants):
        for _ in range(warmup):
            fn()
        with FlopCount() as counter:
            fn()
        flops = float(counter.total)
        times, phases = [], []
        for _ in range(repeats):
            timer = PhaseTimer(device=device)
            _sync(device)
            start = time.perf_counter()
            fn(timer)
            _sync(device)
            times.append(time.perf_counter() - start)
            phases.append(timer.seconds)
        results.append(
            StepResult(
                impl, model, batch, statistics.median(times), _median_phases(phases), flops, times
            )
        )
    return results
