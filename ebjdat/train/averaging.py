"""The exponential moving average of the weights (train.ema_decay > 0): the model that is
validated, selected as best, checkpointed as "model" and so evaluated, exported and sampled.

An energy model's sampling quality swings from one iteration to the next, because the
contrastive loss chases its own samples; the average over the last ~1 / (1 - decay) steps does
not. Weight averaging is also a common ingredient of adversarial training, where it tends to
help robustness a little. The live weights keep training (and drive the replay buffer); a
checkpoint holds them as "live_model" so that resume continues exactly."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """EMA of a module's parameters and floating-point buffers (BatchNorm statistics), from
    torch.optim.swa_utils; integer buffers (BatchNorm's batch counts) follow the live model."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self._avg = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    @property
    def module(self) -> nn.Module:
        return self._avg.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average, after each optimiser step."""
        self._avg.update_parameters(model)
        for mine, live in zip(self.module.buffers(), model.buffers(), strict=True):
            if not mine.is_floating_point():
                mine.copy_(live)

    @property
    def steps(self) -> int:
        return int(self._avg.n_averaged)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "steps": self.steps}

    def load_state_dict(self, record: dict[str, Any]) -> None:
        """The step count of state_dict() (the averaged weights load as the model's)."""
        steps = record["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a count, got {steps!r}")
        self._avg.n_averaged.fill_(steps)
