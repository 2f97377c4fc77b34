#!/usr/bin/env python
"""One small call of each fused op on one device and backend: what scripts/gpu_check.py runs
under `compute-sanitizer --tool memcheck` on a GPU, once per backend (cuda: the ebjdat._C
kernels; triton: the Triton ones).

The calls: sgld_step, sgld_step_, pgd_init (linf, l2), pgd_step (linf, l2), energy_head forward
and backward (K = 10, and K = 5000, wider than one tile). The shapes are odd (5x3x17x13), so
every kernel has a partial last block. Each call is followed by a synchronize, checked for
finite results and reported as `call NAME: ok`; the last line is `all N calls ok`. Everything
before the first tensor is made (arguments, imports, backend choice) touches no device, so on a
machine without a GPU `--device cuda` fails at that tensor with torch's CUDA-availability error
and nothing else, which is what `gpu_check.py --rehearse` checks. On CPU the calls run for real.

    python scripts/sanitizer_calls.py [--device cpu|cuda] [--backend auto|cuda|triton|cpu|...]
                                      [--dtype float32|bfloat16|float16]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHAPE = (5, 3, 17, 13)  # 3315 elements, a multiple of no block size
LOGITS = ((37, 10), (3, 5000))


def calls(device: torch.device, dtype: torch.dtype) -> list[tuple[str, Callable[[], object]]]:
    """(name, zero-argument call) for each op; inputs are made when this is called."""
    from ebjdat import ops

    if device.type == "cuda":
        torch.cuda.init()  # the first CUDA call, so that its error is torch's plain one
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(SHAPE, generator=gen, device=device).to(dtype)
    grad = torch.randn(SHAPE, generator=gen, device=device).to(dtype)
    x_adv = (x + 0.02 * torch.randn(SHAPE, generator=gen, device=device).to(dtype)).clamp(0, 1)

    def energy(k: int, b: int) -> Callable[[], object]:
        def call() -> object:
            logits = (3 * torch.randn(b, k, generator=gen, device=device)).to(dtype)
            logits.requires_grad_(True)
            y = torch.randint(0, k, (b,), generator=gen, device=device)
            out = ops.energy_head(logits, y, temperature=1.0)
            (out.energy.sum() + 0.5 * out.cond_energy.sum() + out.ce.sum()).backward()
            return out.energy, out.cond_energy, out.ce, logits.grad

        return call

    result = [
        (
            "sgld_step",
            lambda: ops.sgld_step(
                x, grad, step_size=0.1, grad_clip=0.05, noise_std=0.01, generator=gen
            ),
        ),
        (
            "sgld_step_",
            lambda: ops.sgld_step_(x.clone(), grad, step_size=0.1, noise_std=0.01, generator=gen),
        ),
        ("pgd_init linf", lambda: ops.pgd_init(x, eps=8 / 255, norm="linf", generator=gen)),
        ("pgd_init l2", lambda: ops.pgd_init(x, eps=0.5, norm="l2", generator=gen)),
        (
            "pgd_step linf",
            lambda: ops.pgd_step(x_adv, grad, x, step_size=2 / 255, eps=8 / 255, norm="linf"),
        ),
        ("pgd_step l2", lambda: ops.pgd_step(x_adv, grad, x, step_size=0.1, eps=0.5, norm="l2")),
    ]
    result += [(f"energy_head K={k} forward+backward", energy(k, b)) for b, k in LOGITS]
    return result


def _finite(out: object) -> bool:
    tensors = out if isinstance(out, tuple) else (out,)
    return all(bool(torch.isfinite(t.float()).all()) for t in tensors if t is not None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cpu or cuda (default: cuda)")
    parser.add_argument(
        "--backend",
        default="auto",
        help="auto (each op's own choice) or one of ebjdat.ops.BACKENDS",
    )
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    args = parser.parse_args(argv)

    from ebjdat import ops

    backend = None if args.backend == "auto" else args.backend
    if backend is not None and backend not in ops.BACKENDS:
        parser.error(f"--backend {backend}: use auto or one of {', '.join(ops.BACKENDS)}")
    device = torch.device(args.device)
    failed = []
    with ops.use_backend(backend):
        todo = calls(device, DTYPES[args.dtype])  # the first CUDA call: the inputs
        for name, call in todo:
            out = call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ok = _finite(out)
            print(f"call {name}: {'ok' if ok else 'NOT FINITE'}", flush=True)
            if not ok:
                failed.append(name)
    if failed:
        print(f"{len(failed)} of {len(todo)} calls gave non-finite values: {', '.join(failed)}")
        return 1
    print(f"all {len(todo)} calls ok (device {device}, backend {args.backend}, {args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
