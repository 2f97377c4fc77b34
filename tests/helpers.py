"""Shared test machinery: the backends reachable on CPU, layouts, tolerances."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from hypothesis import strategies as st

from ebjdat import ops
from ebjdat.ops._library import has_native_kernel, triton_status

HALF = (torch.float16, torch.bfloat16)


def cpu_backends() -> list[str]:
    """Every implementation that runs on CPU tensors here."""
    names = ["reference"]
    if has_native_kernel("sgld_step", "CPU"):
        names.append("cpu")
    if triton_status("cpu")[0]:
        names.append("triton")
    return names


NATIVE_CPU = has_native_kernel("sgld_step", "CPU")
TRITON_CPU = os.environ.get("TRITON_INTERPRET") == "1" and triton_status("cpu")[0]


def dtypes_for(backend: str) -> list[torch.dtype]:
    base = [torch.float32, torch.float16, torch.bfloat16]
    return base + [torch.float64] if backend != "triton" else base


def tol(dtype: torch.dtype) -> dict[str, float]:
    """Output tolerance against the float64 reference: one rounding of the output dtype plus
    float32 arithmetic."""
    if dtype == torch.float64:
        return {"atol": 1e-6, "rtol": 1e-6}  # noise is float32-generated on every backend
    if dtype == torch.float32:
        return {"atol": 2e-5, "rtol": 2e-5}
    if dtype == torch.float16:
        return {"atol": 2e-3, "rtol": 2e-3}
    return {"atol": 1.6e-2, "rtol": 1.6e-2}


def relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided" and t.dim() >= 1:
        big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1] + 1, dtype=t.dtype)
        view = big[..., 1::2]
        view.copy_(t)
        return view
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    return t


LAYOUTS = ["contiguous", "channels_last", "strided", "transposed"]


def shapes(min_dims: int = 0, max_dims: int = 4, max_side: int = 7) -> st.SearchStrategy:
    return st.lists(st.integers(0, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


def run(backend: str, fn, *args, **kwargs):  # noqa: ANN001, ANN201
    with ops.use_backend(backend):
        return fn(*args, **kwargs)


def values(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * scale


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# The smallest training run that still exercises every part (SGLD, the adversarial sampler,
# validation with PGD): "section.key" overrides shared by the library-API tests.
TINY_RUN = {
    "sgld.buffer_size": 64,
    "sgld.steps": 2,
    "adv.steps": 1,
    "train.eval_limit": 32,
    "train.eval_steps": 2,
    "optim.warmup_iters": 0,
    "optim.lr": 0.01,
    "data.batch_size": 32,
    "data.labelled_batch_size": 32,
    "train.sample_grid": 0,
    "train.epochs": 1,
}


class PairDataset(torch.utils.data.Dataset):
    """(image, int label) items of two tensors, as a user's own Dataset returns them."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def assert_same(a: Any, b: Any, where: str = "checkpoint") -> None:
    """Recursively identical: tensors bit for bit (dtype and shape too), everything else ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        same = torch.equal(a, b)
        assert same, f"{where} differs by up to {(a.double() - b.double()).abs().max().item():g}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a, key=str) == sorted(b, key=str), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def comparable(state: dict) -> dict:
    """A checkpoint without what two runs of one config never share: the run's id and the
    wall-clock times of its metrics rows."""
    return {**{k: v for k, v in state.items() if k != "run_id"},
            "history": without_time(state["history"])}  # fmt: skip


def checkpoint_iteration(last: Path) -> int:
    """The iteration a checkpoint file holds; -1 while it is missing or half-written."""
    from ebjdat import checkpoint

    try:
        return int(checkpoint.load(last)["progress"]["iteration"])
    except checkpoint.CheckpointError:
        return -1


# The smallest digits run the evaluation tests train on: a few seconds per epoch.
SMOKE_RUN = (
    "model.arch=wrn-10-1",
    "sgld.buffer_size=128",
    "sgld.steps=2",
    "adv.steps=1",
    "train.eval_limit=32",
    "train.eval_steps=2",
    "optim.warmup_iters=0",
    "data.batch_size=128",
    "data.labelled_batch_size=128",
    "train.sample_grid=0",
)


def train_smoke_run(run: Path, preset: str = "digits", epochs: int = 1) -> Path:
    """Trains `preset` with SMOKE_RUN into `run` (seed 0); returns RUN/checkpoints/last.pt."""
    from ebjdat.train import config
    from ebjdat.train.trainer import Trainer

    cfg = config.load_preset(preset)
    for assignment in (*SMOKE_RUN, f"train.epochs={epochs}"):
        config.override(cfg, assignment)
    torch.manual_seed(0)
    Trainer(config=cfg.validate(), out_dir=run, progress_bar=False, log=lambda m: None).fit()
    return run / "checkpoints" / "last.pt"
