"""Op microbenchmarks: each fused ebjdat op against the same math written as plain PyTorch.

Every case is timed three ways, on the same inputs:

- ``eager``: a plain PyTorch composition of the op's math (what a training loop would write);
- ``compile``: ``torch.compile`` of that very function (static shapes), warmed up first;
- ``fused``: the ebjdat op, through whichever backend ``ebjdat.ops.backend`` picks.

The ops and parameters follow JEM++/EB-JDAT training: SGLD with grad clip 0.01 and noise 0.01,
PGD L-inf (eps 8/255) and L2 (eps 0.5) with projection, and the energy head forward + backward
of a weighted sum of (energy, cond_energy, ce).

Bandwidth is the traffic the op cannot avoid divided by the median time (decimal GB/s):

- ``sgld_step``: ``3 * n * itemsize`` (read x and grad, write the result; the noise is
  generated in-kernel, so it is not traffic);
- ``pgd_step_linf`` / ``pgd_step_l2``: ``4 * n * itemsize`` (read x_adv, grad, x_orig, write);
- ``energy_head`` (forward + backward): ``3 * B * K * itemsize`` (read logits in the forward,
  read them again in the backward, write their gradient; the per-row outputs are negligible);
- the reference copy: ``2 * n * 4`` (``dst.copy_(src)`` of float32).

Speedups are ratios of medians taken in the same run: ``speedup_vs_eager = t_eager / t_fused``
(above 1 means the fused op is faster).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ebjdat import ops as eops

from . import Timing, measure

IMPLS = ("eager", "compile", "fused")
Fn = Callable[..., torch.Tensor]

# Shape sets. Images are N x C x H x W; energy-head cases are B x K logits.
TRAINING_SHAPES: tuple[tuple[int, ...], ...] = ((64, 3, 32, 32), (128, 3, 32, 32))
BUFFER_SHAPES: tuple[tuple[int, ...], ...] = ((1024, 3, 32, 32), (10000, 3, 32, 32))
# 2**24 elements: the size at which the GPU goal (>= 85% of copy bandwidth) is stated.
LARGE_SHAPES: tuple[tuple[int, ...], ...] = ((16384, 1024),)
ENERGY_SHAPES: tuple[tuple[int, int], ...] = tuple(
    (b, k) for b in (64, 4096) for k in (10, 100, 1000)
)
LARGE_ENERGY_SHAPES: tuple[tuple[int, int], ...] = ((65536, 256),)
QUICK_SHAPE: tuple[int, ...] = (4, 3, 8, 8)
QUICK_ENERGY_SHAPE: tuple[int, int] = (8, 10)
SIZE_SETS = ("training", "buffer", "large")
COPY_NUMEL = 1 << 24

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------
# Parameters and the math, once. The eager functions are also what torch.compile compiles.


@dataclass(frozen=True)
class SgldParams:
    step_size: float = 1.0
    grad_clip: float = 0.01
    noise_std: float = 0.01
    clamp: tuple[float, float] = (-1.0, 1.0)


@dataclass(frozen=True)
class PgdParams:
    norm: str
    step_size: float
    eps: float
    clamp: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class EnergyParams:
    temperature: float = 1.0
    # Weights of (energy, cond_energy, ce) in the loss whose backward is timed; all non-zero so
    # every gradient term is exercised.
    weights: tuple[float, float, float] = (1.0, 0.5, 1.0)


SGLD = SgldParams()
PGD_LINF = PgdParams("linf", step_size=2 / 255, eps=8 / 255)
PGD_L2 = PgdParams("l2", step_size=0.1, eps=0.5)
ENERGY = EnergyParams()
_TINY = 1e-12


def sgld_eager(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    p = SGLD
    g = torch.clamp(grad, -p.grad_clip, p.grad_clip)
    return torch.clamp(x + p.step_size * g + p.noise_std * torch.randn_like(x), *p.clamp)


def sgld_fused(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    p = SGLD
    return eops.sgld_step(
        x, grad, step_size=p.step_size, grad_clip=p.grad_clip, noise_std=p.noise_std,
        clamp=p.clamp,
    )


def pgd_linf_eager(x_adv: torch.Tensor, grad: torch.Tensor, x_orig: torch.Tensor) -> torch.Tensor:
    p = PGD_LINF
    v = x_adv + p.step_size * torch.sign(grad)
    v = torch.min(torch.max(v, x_orig - p.eps), x_orig + p.eps)
    return torch.clamp(v, *p.clamp)


def pgd_l2_eager(x_adv: torch.Tensor, grad: torch.Tensor, x_orig: torch.Tensor) -> torch.Tensor:
    p = PGD_L2
    per_sample = (-1,) + (1,) * (grad.dim() - 1)
    gnorm = torch.linalg.vector_norm(grad.flatten(1), dim=1).clamp_min(_TINY).view(per_sample)
    delta = x_adv + p.step_size * grad / gnorm - x_orig
    dnorm = torch.linalg.vector_norm(delta.flatten(1), dim=1).view(per_sample)
    factor = torch.clamp(p.eps / dnorm.clamp_min(_TINY), max=1.0)  # shrink only outside the ball
    return torch.clamp(x_orig + delta * factor, *p.clamp)


def _pgd_fused(p: PgdParams) -> Fn:
    def fused(x_adv: torch.Tensor, grad: torch.Tensor, x_orig: torch.Tensor) -> torch.Tensor:
        return eops.pgd_step(
            x_adv, grad, x_orig, step_size=p.step_size, eps=p.eps, norm=p.norm, clamp=p.clamp
        )

    fused.__name__ = f"pgd_{p.norm}_fused"
    return fused


def energy_eager(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    t = ENERGY.temperature
    energy = -t * torch.logsumexp(logits / t, dim=1)
    cond = -logits.gather(1, y[:, None]).squeeze(1)
    ce = F.cross_entropy(logits, y, reduction="none")
    return energy, cond, ce


def energy_fused(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(eops.energy_head(logits, y, temperature=ENERGY.temperature))


def energy_backward(outputs: Sequence[torch.Tensor]) -> None:
    """Backward of sum(w_i * output_i) with the weights as upstream gradients, so that only the
    op's own forward and backward are timed, not a loss expression around it."""
    grads = [torch.full_like(o, w) for o, w in zip(outputs, ENERGY.weights, strict=True)]
    torch.autograd.backward(list(outputs), grads)


# ---------------------------------------------------------------------------------------------
# Inputs


def _images_sgld(shape: Sequence[int], dtype: torch.dtype, device: torch.device,
                 gen: torch.Generator) -> dict[str, torch.Tensor]:
    x = torch.rand(shape, generator=gen, device=device) * 2 - 1
    grad = torch.randn(shape, generator=gen, device=device) * (2 * SGLD.grad_clip)  # some clipped
    return {"x": x.to(dtype), "grad": grad.to(dtype)}


def _images_pgd(p: PgdParams) -> Callable[..., dict[str, torch.Tensor]]:
    def make(shape: Sequence[int], dtype: torch.dtype, device: torch.device,
             gen: torch.Generator) -> dict[str, torch.Tensor]:
        x_orig = torch.rand(shape, generator=gen, device=device)
        start = torch.rand(shape, generator=gen, device=device) * 2 - 1
        if p.norm == "l2":  # a start that is sometimes outside the ball after the step
            start = start / math.sqrt(math.prod(shape[1:]))
        x_adv = torch.clamp(x_orig + p.eps * start, 0.0, 1.0)
        grad = torch.randn(shape, generator=gen, device=device)
        return {"x_adv": x_adv.to(dtype), "grad": grad.to(dtype), "x_orig": x_orig.to(dtype)}

    return make


def _logits(shape: Sequence[int], dtype: torch.dtype, device: torch.device,
            gen: torch.Generator) -> dict[str, torch.Tensor]:
    b, k = shape
    logits = (torch.randn((b, k), generator=gen, device=device) * 3).to(dtype)
    y = torch.randint(0, k, (b,), generator=gen, device=device)
    return {"logits": logits.requires_grad_(), "y": y}


# ---------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class OpSpec:
    """How to benchmark one op: its inputs, its math, its fused call and its traffic."""

    name: str
    kernel: str  # the name ebjdat.ops.backend knows it by
    traffic: int  # tensors of numel elements that must cross memory
    inputs: Callable[..., dict[str, torch.Tensor]]
    eager: Fn
    fused: Fn
    backward: bool = False  # time loss(...).backward() instead of a forward call
    shapes: dict[str, tuple[tuple[int, ...], ...]] = field(default_factory=dict)
    quick_shape: tuple[int, ...] = QUICK_SHAPE


_IMAGE_SHAPES = {"training": TRAINING_SHAPES, "buffer": BUFFER_SHAPES, "large": LARGE_SHAPES}
SPECS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec("sgld_step", "sgld_step", 3, _images_sgld, sgld_eager, sgld_fused,
               shapes=_IMAGE_SHAPES),
        OpSpec("pgd_step_linf", "pgd_step", 4, _images_pgd(PGD_LINF), pgd_linf_eager,
               _pgd_fused(PGD_LINF), shapes=_IMAGE_SHAPES),
        OpSpec("pgd_step_l2", "pgd_step", 4, _images_pgd(PGD_L2), pgd_l2_eager,
               _pgd_fused(PGD_L2), shapes=_IMAGE_SHAPES),
        OpSpec("energy_head", "energy_head", 3, _logits, energy_eager, energy_fused,
               backward=True, quick_shape=QUICK_ENERGY_SHAPE,
               shapes={"training": ENERGY_SHAPES, "buffer": (), "large": LARGE_ENERGY_SHAPES}),
    )
}
OPS = tuple(SPECS)


@dataclass(frozen=True)
class Case:
    """One (op, shape, dtype) point; all three implementations are timed on it."""

    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32

    @property
    def spec(self) -> OpSpec:
        return SPECS[self.op]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def bytes_moved(self) -> int:
        """The traffic the op cannot avoid (see the module docstring for each formula)."""
        return self.spec.traffic * self.numel * self.dtype.itemsize

    @property
    def shape_str(self) -> str:
        return "x".join(map(str, self.shape))

    @property
    def dtype_str(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def __str__(self) -> str:  # also the pytest id
        return f"{self.op}-{self.shape_str}-{self.dtype_str}"


def cases(
    sizes: Iterable[str] = ("training", "buffer"),
    dtypes: Iterable[torch.dtype] = (torch.float32,),
    ops: Iterable[str] = OPS,
    *,
    quick: bool = False,
) -> list[Case]:
    """The benchmark grid; quick=True replaces all shapes by one tiny shape per op (CI smoke)."""
    sizes = tuple(sizes)
    unknown = set(sizes) - set(SIZE_SETS)
    if unknown:
        raise ValueError(f"unknown size set(s) {sorted(unknown)}; choose from {SIZE_SETS}")
    out = []
    for op in ops:
        spec = SPECS[op]
        shapes = [spec.quick_shape] if quick else [s for size in sizes for s in spec.shapes[size]]
        out += [Case(op, tuple(shape), dtype) for dtype in dtypes for shape in shapes]
    return out


def make_inputs(case: Case, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic inputs for `case`, shared by all implementations of one run."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return case.spec.inputs(case.shape, case.dtype, device, gen)


def _callable(case: Case, impl: str) -> Fn:
    spec = case.spec
    if impl == "eager":
        return spec.eager
    if impl == "fused":
        return spec.fused
    if impl == "compile":
        # Static shapes: each case gets the kernels inductor would generate for a fixed batch.
        # Every case compiles the same function, so clear dynamo's per-function cache first
        # rather than run into its recompile limit (and a silent fall back to eager).
        torch.compiler.reset()
        return torch.compile(spec.eager, dynamic=False)
    raise ValueError(f"unknown impl {impl!r}; choose from {IMPLS}")


def prepare(
    case: Case, impl: str, device: torch.device, inputs: dict[str, torch.Tensor] | None = None,
    *, warmup: int = 2,
) -> Callable[[], object]:
    """A zero-argument callable running `impl` on `case`, already warmed up (and compiled).

    For the energy head it is forward + backward; the gradient is reset first so each call
    allocates and writes a fresh one (no accumulation traffic), as a training step does.
    """
    inputs = make_inputs(case, device) if inputs is None else inputs
    fn = _callable(case, impl)
    if case.spec.backward:
        logits, y = inputs["logits"], inputs["y"]

        def run() -> None:
            logits.grad = None
            energy_backward(fn(logits, y))
    else:
        def run() -> torch.Tensor:
            return fn(**inputs)

    for _ in range(warmup):
        run()
    return run


def synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """`fn` followed by a device sync, for timers (pytest-benchmark) that do not sync CUDA."""
    if device.type != "cuda":
        return fn

    def run() -> None:
        fn()
        torch.cuda.synchronize(device)

    return run


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class CaseResult:
    case: Case
    device: torch.device
    backend: str
    timings: dict[str, Timing]
    errors: dict[str, str] = field(default_factory=dict)

    def gbps(self, impl: str) -> float | None:
        t = self.timings.get(impl)
        return None if t is None else self.case.bytes_moved / t.median_s / 1e9

    def speedup(self, baseline: str) -> float | None:
        """t_baseline / t_fused from this run; None when either is missing."""
        base, fused = self.timings.get(baseline), self.timings.get("fused")
        return None if base is None or fused is None else base.median_s / fused.median_s

    def rows(self, copy_gbps: float | None = None) -> list[dict]:
        """One JSON row per timed implementation (the `ebjdat-bench ops --json` format)."""
        out = []
        for impl, t in self.timings.items():
            row = {
                "op": self.case.op,
                "shape": list(self.case.shape),
                "dtype": self.case.dtype_str,
                "impl": impl,
                "median_s": t.median_s,
                "gbps": self.gbps(impl),
                "iqr_s": t.iqr_s,
                "runs": t.runs,
                "calls_per_run": t.calls_per_run,
                "numel": self.case.numel,
                "bytes": self.case.bytes_moved,
                "device": str(self.device),
                "backend": self.backend if impl == "fused" else impl,
            }
            if impl == "fused":
                row["speedup_vs_eager"] = self.speedup("eager")
                row["speedup_vs_compile"] = self.speedup("compile")
                if copy_gbps:
                    row["frac_of_copy"] = self.gbps(impl) / copy_gbps
                if self.errors:
                    row["errors"] = dict(self.errors)
            out.append(row)
        return out


def run_case(
    case: Case, device: torch.device, impls: Sequence[str] = IMPLS, *, min_run_time: float = 0.2
) -> CaseResult:
    """Times each of `impls` on one shared set of inputs.

    A torch.compile failure (say, no C++ compiler for inductor) is recorded, not raised: the
    eager and fused numbers are still worth having.
    """
    inputs = make_inputs(case, device)
    result = CaseResult(case, device, eops.backend(case.spec.kernel, device), {})
    for impl in impls:
        try:
            fn = prepare(case, impl, device, inputs)
        except Exception as err:  # noqa: BLE001 - see docstring; only compile may fail here
            if impl != "compile":
                raise
            result.errors[impl] = f"{type(err).__name__}: {err}".splitlines()[0]
            continue
        result.timings[impl] = measure(fn, min_run_time=min_run_time)
        del fn
    return result


def copy_bandwidth(
    device: torch.device, numel: int = COPY_NUMEL, *, min_run_time: float = 0.2
) -> dict:
    """Device-local `dst.copy_(src)` of float32: the practical bandwidth ceiling that the fused
    (memory-bound) ops are measured against."""
    src = torch.rand(numel, device=device)
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), min_run_time=min_run_time)
    moved = 2 * numel * src.element_size()
    return {
        "numel": numel, "bytes": moved, "median_s": t.median_s, "gbps": moved / t.median_s / 1e9
    }
