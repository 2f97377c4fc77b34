"""The torchrun side of tests/test_data_parallel.py (two gloo processes on CPU).

For each optimiser (SGD, SAM) every process takes one training step on its slice of a fixed
global batch, with both samplers replaced by fixed samples, so that two processes and one see
the same examples; then one step with the real samplers, counting DDP's all-reduces. Rank 0
writes what it saw to the file named on the command line; the test compares it with one
process stepping on the whole batch."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn

from ebjdat.train import Trainer
from ebjdat.train.parallel import Distributed

PROCESSES = 2
PER_PROCESS = 8  # examples per process and stream; one process alone takes all 16
CONFIG = {
    "sgld.buffer_size": 64,
    "sgld.steps": 2,
    "adv.steps": 1,
    "optim.warmup_iters": 0,
    "optim.lr": 0.05,
    "train.eval_limit": 8,
    "train.eval_steps": 1,
    "train.sample_grid": 0,
    "train.channels_last": False,
}


class SmallNet(nn.Module):
    """No BatchNorm (its batch statistics would differ between 1 x 2b and 2 x b), and one
    parameter that the logits never use, which DDP has to be told about."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.head = nn.Linear(6 * 8 * 8, 10)
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


class FixedSamples(Trainer):
    """The trainer with its samplers' outputs given."""

    z_q: torch.Tensor
    z_adv: torch.Tensor

    def _samples(self) -> torch.Tensor:
        return self.z_q

    def _adversarial(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.z_adv


def global_batch() -> tuple[torch.Tensor, ...]:
    """Positives, labelled images, labels, SGLD samples and adversarial samples for the two
    processes together."""
    n = PER_PROCESS * PROCESSES
    g = torch.Generator().manual_seed(7)
    return (
        torch.rand(n, 1, 8, 8, generator=g),
        torch.rand(n, 1, 8, 8, generator=g),
        torch.randint(0, 10, (n,), generator=g),
        torch.rand(n, 1, 8, 8, generator=g) * 2 - 1,
        torch.rand(n, 1, 8, 8, generator=g) * 2 - 1,
    )


def trainer(optimizer: str, distributed: Distributed, batch: int, **kw: object) -> Trainer:
    config = {
        **CONFIG,
        **kw.pop("config", {}),  # type: ignore[dict-item]
        "optim.name": optimizer,
        "data.batch_size": batch,
        "data.labelled_batch_size": batch,
    }
    return (kw.pop("cls", None) or Trainer)(
        SmallNet(), None, config=config, device="cpu", distributed=distributed,
        progress_bar=False, handle_signals=False, **kw,
    )  # fmt: skip


def fixed_step(optimizer: str, distributed: Distributed, log: list[str]) -> dict:
    """One step on this process's share of the global batch (all of it for a single process):
    the loss, and every parameter's gradient and new value."""
    share = PER_PROCESS * PROCESSES // distributed.world_size
    part = slice(distributed.rank * share, (distributed.rank + 1) * share)
    x_pos, x_lab, y, z_q, z_adv = (t[part] for t in global_batch())
    t = trainer(optimizer, distributed, share, cls=FixedSamples, log=log.append)
    t.z_q, t.z_adv = z_q, z_adv
    terms = t.train_step(x_pos, x_lab, y)
    named = list(t.model.named_parameters())
    return {
        "loss": terms.total.detach(),
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in named},
        "params": {n: p.detach().clone() for n, p in named},
        "loss_forward": type(t.loss_logits).__name__,
    }


def count_allreduces(
    optimizer: str, distributed: Distributed, forwards: list[int] | None = None, **config: object
) -> list[int]:
    """Bucket indices all-reduced during one real step (SGLD and adversarial sampling
    included); `forwards` gets the number of forwards through DDP appended; `config` overrides
    CONFIG."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    t = trainer(optimizer, distributed, PER_PROCESS, log=lambda message: None, config=config)
    seen: list[int] = []
    calls = [0]
    t.loss_logits.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))

    # Unannotated: DDP compares the annotation with dist.GradBucket, which a string is not.
    def hook(state, bucket):  # noqa: ANN001, ANN202
        seen.append(bucket.index())
        return allreduce_hook(None, bucket)

    t.loss_logits.register_comm_hook(None, hook)
    x_pos, _ = next(iter(t.positives))
    x_lab, y = next(iter(t.labelled))
    t.train_step(x_pos, x_lab, y)
    if forwards is not None:
        forwards.append(calls[0])
    return seen


def main(out: str) -> None:
    distributed = Distributed.from_environment()
    result: dict = {"log": []}
    for optimizer in ("sgd", "sam"):
        mine = fixed_step(optimizer, distributed, result["log"])
        every: list = [None] * distributed.world_size
        dist.all_gather_object(every, mine)
        result[optimizer] = {
            "loss": torch.stack([r["loss"] for r in every]).mean(),
            "grads": mine["grads"],
            "params": [r["params"] for r in every],
            "loss_forward": mine["loss_forward"],
            "allreduced_buckets": count_allreduces(optimizer, distributed),
        }
    # train.official_bn_updates adds train-mode forwards outside DDP: the same all-reduces and
    # the same forwards through DDP (each would broadcast buffers) as without it.
    for on in (False, True):
        forwards: list[int] = []
        buckets = count_allreduces(
            "sgd", distributed, forwards, **{"train.official_bn_updates": on}
        )
        result[f"official_bn_updates={on}"] = {"allreduced_buckets": buckets, "forwards": forwards}
    if distributed.main:
        torch.save(result, out)
    distributed.teardown()


if __name__ == "__main__":
    main(sys.argv[1])
