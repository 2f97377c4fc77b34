"""The learning-rate schedule: linear warm-up over the first iterations, then a step decay at
given epochs; a divergence rollback scales it down further.

The warm-up counts optimiser steps i from 0. `optim.warmup_from = "one"` (the default) gives
step i the factor (i + 1) / warmup_iters, so no step is wasted and the last warm-up step runs at
the full rate. "zero" gives i / warmup_iters, as the official code does: its first step has LR 0
(it only fills the momentum buffer) and the full rate is reached at step warmup_iters."""

from __future__ import annotations

from .config import OptimConfig


def learning_rate(cfg: OptimConfig, iteration: int, epoch: int, scale: float = 1.0) -> float:
    lr = cfg.lr * scale
    if cfg.warmup_iters > 0 and iteration < cfg.warmup_iters:
        step = iteration + 1 if cfg.warmup_from == "one" else iteration
        return lr * step / cfg.warmup_iters
    for boundary in cfg.decay_epochs:
        if epoch >= boundary:
            lr *= cfg.decay_rate
    return lr
