"""Per-iteration divergence checks and running metrics that stay on the device.

Reading a CUDA value on the host (`bool(t)`, `t.item()`, `float(t)`) waits for every queued
kernel, so checking and logging each iteration the obvious way stalls the GPU once per step and
again per logged value. `StepWatch` folds each iteration's check and metrics into device tensors
and the host reads them only at sync points: every `train.sync_every` iterations, before any
checkpoint is written and at the end of an epoch. A diverged iteration is therefore caught at
most sync_every - 1 iterations late but always before it could reach a checkpoint, so the
rollback to the last good checkpoint is unchanged. On CPU every read is free anyway.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .losses import LossTerms

METRICS = ("total", "px", "ce", "align", "ce_adv", "e_pos", "e_q", "e_adv", "acc", "acc_adv")


class Diverged(RuntimeError):
    """A non-finite or exploding loss or buffer energy in one iteration."""


class StepWatch:
    def __init__(
        self, max_loss: float, max_energy: float, device: torch.device, world_size: int = 1
    ) -> None:
        self.max_loss = max_loss
        self.max_energy = max_energy
        self.device = device
        self.world_size = world_size
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new epoch, or after a rollback)."""
        self.count = 0
        self._keys: tuple[str, ...] = ()
        self._sums: torch.Tensor | None = None
        self._first_bad: torch.Tensor | None = None  # iteration of the first bad step, or -1
        self._bad_values: torch.Tensor | None = None  # that step's loss and energies

    def add(self, terms: LossTerms, iteration: int) -> None:
        """Record one iteration's terms; no host synchronisation."""
        checked = torch.stack(
            [terms.total.detach().float()]
            + [e.detach().float() for e in (terms.e_q, terms.e_pos, terms.e_adv) if e is not None]
        )
        bad = (
            (~torch.isfinite(checked)).any()
            | (checked[0].abs() > self.max_loss)
            | (checked[1:].abs() > self.max_energy).any()
        )
        keys = tuple(k for k in METRICS if getattr(terms, k) is not None)
        metrics = torch.stack([getattr(terms, k).detach().float() for k in keys])
        if self._sums is None or keys != self._keys:
            self._keys, self._sums = keys, torch.zeros_like(metrics)
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=checked.device)
            self._bad_values = torch.zeros_like(checked)
        self._sums += metrics
        self.count += 1
        first = bad & (self._first_bad < 0)
        self._first_bad = torch.where(first, iteration, self._first_bad)
        self._bad_values = torch.where(first, checked, self._bad_values)

    def check(self) -> None:
        """Host sync: raise Diverged if any iteration since the last reset was bad (on any rank:
        every rank calls this at the same iterations)."""
        if self._first_bad is None:
            flag = torch.zeros((), device=self.device)
        else:
            flag = (self._first_bad >= 0).float()
        if self.world_size > 1:
            dist.all_reduce(flag)
        if not bool(flag > 0):
            return
        if self._first_bad is None or int(self._first_bad) < 0:
            raise Diverged("a non-finite or exploding loss on another rank")
        values = self._bad_values.tolist()
        raise Diverged(
            f"loss {values[0]:.4g}, energies {[round(v, 3) for v in values[1:]]} at iteration "
            f"{int(self._first_bad)}"
        )

    def state_dict(self) -> dict:
        """The running sums (weights_only-safe), so a mid-epoch resume logs the epoch's exact
        means. Taken after a check, so no bad step is pending."""
        return {"count": self.count, "keys": list(self._keys), "sums": self._sums}

    def load_state_dict(self, state: dict) -> None:
        self.reset()
        if state.get("sums") is not None:
            self.count, self._keys = int(state["count"]), tuple(state["keys"])
            self._sums = state["sums"].to(self.device).clone()

    def means(self) -> dict[str, float]:
        """Mean of each metric since the last reset (host sync)."""
        if self._sums is None or self.count == 0:
            return {}
        return dict(zip(self._keys, (self._sums / self.count).tolist(), strict=True))
