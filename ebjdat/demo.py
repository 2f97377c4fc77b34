"""`python -m ebjdat.demo`: the fused ops doing their two jobs on problems with known answers.

1. Langevin sampling (sgld_step + energy_head): with E(x) = ||x||^2 / 2, written as the energy of
   a one-class "classifier" whose logit is -||x||^2 / 2, SGLD with step eps^2 / 2 and noise eps
   must turn any start into N(0, I) samples: mean 0, variance 1.
2. PGD (pgd_init + pgd_step): attacking a fixed linear classifier must lower its accuracy while
   every adversarial example stays within eps (L-inf) of its input and inside [0, 1].
"""

from __future__ import annotations

import argparse
import time

import torch

from . import ops


def langevin(chains: int, dim: int, steps: int, eps: float, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    x = torch.full((chains, dim), 4.0)  # far from the target's mass
    for _ in range(steps):
        x.requires_grad_(True)
        logits = -0.5 * (x * x).sum(1, keepdim=True)
        energy = ops.energy_head(logits).energy
        (grad,) = torch.autograd.grad(-energy.sum(), x)  # ascend log p = -E
        x = ops.sgld_step(x.detach(), grad, step_size=eps**2 / 2, noise_std=eps, clamp=None)
    return {"mean": x.mean().item(), "variance": x.var().item()}


def pgd(n: int, dim: int, eps: float, steps: int, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, 3, generator=g)
    x = torch.rand(n, dim, generator=g)
    y = (x @ w).argmax(1)  # the classifier is right on every clean input
    x_adv = ops.pgd_init(x, eps=eps, generator=g)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        ce = ops.energy_head(x_adv @ w, y).ce
        (grad,) = torch.autograd.grad(ce.sum(), x_adv)
        x_adv = ops.pgd_step(x_adv.detach(), grad, x, step_size=eps / 4, eps=eps)
    return {
        "clean_acc": 1.0,
        "adv_acc": ((x_adv @ w).argmax(1) == y).float().mean().item(),
        "max_linf": (x_adv - x).abs().max().item(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ebjdat.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print("backends on cpu:", {op: ops.backend(op, "cpu") for op in ops.ops()})
    start = time.perf_counter()
    eps = 0.2
    stats = langevin(chains=4096, dim=8, steps=600, eps=eps, seed=args.seed)
    # Unadjusted Langevin with step h = eps^2 / 2 settles at variance 1 / (1 - h / 2).
    target = 1 / (1 - eps**2 / 4)
    print(
        f"Langevin to N(0, I): mean {stats['mean']:+.3f} (want 0), "
        f"variance {stats['variance']:.3f} (want {target:.3f})"
    )
    attack = pgd(n=2048, dim=64, eps=0.1, steps=10, seed=args.seed)
    print(
        f"PGD-10 at eps 0.1 on a linear classifier: accuracy {attack['clean_acc']:.2f} -> "
        f"{attack['adv_acc']:.2f}, max |delta| {attack['max_linf']:.4f} (<= 0.1)"
    )
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
