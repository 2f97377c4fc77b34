"""The learning-rate schedule of the official code: linear warm-up over the first iterations,
then a step decay at given epochs; a divergence rollback scales it down further."""

from __future__ import annotations

from .config import OptimConfig


def learning_rate(cfg: OptimConfig, iteration: int, epoch: int, scale: float = 1.0) -> float:
    lr = cfg.lr * scale
    if cfg.warmup_iters > 0 and iteration < cfg.warmup_iters:
        return lr * (iteration + 1) / cfg.warmup_iters
    for boundary in cfg.decay_epochs:
        if epoch >= boundary:
            lr *= cfg.decay_rate
    return lr
