"""SAM and adaptive SAM (ASAM) as SADA-JEM uses them: the first pass's gradient moves the
weights to w + e(w) (e = rho * g / ||g||, or with ASAM rho * w^2 g / || |w| g ||), the loss is
recomputed there on the same samples, and the second step restores w before the base step."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class SAM(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        base: Callable[..., torch.optim.Optimizer],
        *,
        rho: float = 2.0,
        adaptive: bool = True,
        **base_kwargs: float,
    ) -> None:
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **base_kwargs))
        self.base = base(self.param_groups, **base_kwargs)
        self.param_groups = self.base.param_groups
        self.defaults.update(self.base.defaults)

    def _scaled(self, p: torch.Tensor, adaptive: bool) -> torch.Tensor:
        return (p.abs() if adaptive else 1.0) * p.grad

    @torch.no_grad()
    def first_step(self) -> None:
        """w <- w + e(w), remembering w."""
        norms = [
            self._scaled(p, g["adaptive"]).norm(2)
            for g in self.param_groups
            for p in g["params"]
            if p.grad is not None
        ]
        if not norms:
            return
        grad_norm = torch.stack(norms).norm(2)
        for g in self.param_groups:
            scale = g["rho"] / (grad_norm + 1e-12)
            for p in g["params"]:
                if p.grad is None:
                    continue
                e_w = (p.pow(2) if g["adaptive"] else 1.0) * p.grad * scale
                self.state[p]["e_w"] = e_w
                p.add_(e_w)

    @torch.no_grad()
    def second_step(self) -> None:
        """w <- w - e(w), then the base optimiser's step with the perturbed-point gradient."""
        for g in self.param_groups:
            for p in g["params"]:
                e_w = self.state[p].pop("e_w", None)
                if e_w is not None:
                    p.sub_(e_w)
        self.base.step()

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> None:  # noqa: D102
        raise RuntimeError("SAM needs two passes: call first_step() and second_step()")

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base.load_state_dict(state_dict)
