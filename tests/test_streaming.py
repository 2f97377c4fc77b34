"""The streaming data path: a user Dataset read batch by batch by DataLoader workers gives the
same batches, losses and weights as the in-memory path on the same data and seed, and the two
loaders' states are interchangeable."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_RUN, PairDataset

import ebjdat
from ebjdat.data import Augment, TensorLoader, load_split_tensors, to_float01
from ebjdat.data.stream import StreamLoader
from ebjdat.train import build

TINY = {**TINY_RUN, "train.eval_limit": 16, "train.eval_steps": 1, "model.arch": "wrn-10-1"}


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_split_tensors("digits", "train")
    return (to_float01(x) * 255).round().to(torch.uint8), y


def _batches(loader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:  # noqa: ANN001
    out = []
    while len(out) < n:
        for batch in loader:
            out.append(batch)
            if len(out) == n:
                break
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_loader_serves_the_tensor_loaders_batches(digits, workers: int) -> None:  # noqa: ANN001
    x, y = digits[0][:200], digits[1][:200]
    aug = Augment(pad=2, flip=True, noise_std=0.1)
    memory = TensorLoader(x, y, 48, generator=7, augment=aug)
    stream = StreamLoader(PairDataset(x, y), 48, generator=7, augment=aug, workers=workers)
    a, b = _batches(memory, 9), _batches(stream, 9)  # over two epoch boundaries
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64


def test_loader_states_are_interchangeable(digits) -> None:  # noqa: ANN001
    x, y = digits[0][:100], digits[1][:100]
    memory = TensorLoader(x, y, 16, generator=3, augment=Augment(pad=1, flip=False))
    stream = StreamLoader(PairDataset(x, y), 16, generator=99, augment=Augment(pad=1, flip=False))
    it = iter(memory)
    for _ in range(3):
        next(it)
    stream.load_state_dict(memory.state_dict())  # a memory-path checkpoint, resumed streaming
    want = _batches(memory, 5)
    got = _batches(stream, 5)
    for (xa, ya), (xb, yb) in zip(want, got, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_streamed_images_are_checked_as_they_arrive(digits) -> None:  # noqa: ANN001
    x = to_float01(digits[0][:40])
    x[20] = 1.5  # one bad image in the second batch
    loader = StreamLoader(PairDataset(x, digits[1][:40]), 16, generator=0, shuffle=False)
    it = iter(loader)
    next(it)
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        next(it)
    with pytest.raises(ValueError, match="workers"):
        StreamLoader(PairDataset(x, digits[1][:40]), 16, workers=-1)


def _fit(data, loader: str, **overrides):  # noqa: ANN001, ANN202
    x, y = data
    return ebjdat.fit(
        None,
        PairDataset(x, y),
        config={**TINY, "data.loader": loader, **overrides},
        device="cpu",
        progress_bar=False,
        log=lambda m: None,
    )


def test_streamed_training_equals_in_memory_training(digits) -> None:  # noqa: ANN001
    """Same user Dataset, seed and config: two DataLoader workers or the on-device tensors
    give bit-identical losses, metrics and weights (the class Gaussians, the held-out split
    and every batch agree)."""
    memory = _fit(digits, "memory", **{"train.checkpoint_every_iters": 0})
    stream = _fit(digits, "stream", **{"data.workers": 2})
    assert isinstance(stream.labelled, StreamLoader) and isinstance(memory.labelled, TensorLoader)
    rows_m, rows_s = memory.state.history, stream.state.history
    for a, b in zip(rows_m, rows_s, strict=True):
        assert {k: v for k, v in a.items() if k != "time_s"} == {
            k: v for k, v in b.items() if k != "time_s"
        }
    for (name, p), q in zip(
        memory.model.state_dict().items(), stream.model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    assert torch.equal(memory.buffer.buffer, stream.buffer.buffer)


def test_auto_streams_a_dataset_larger_than_the_budget(digits, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(build, "MEMORY_BUDGET_BYTES", 1000)
    messages: list[str] = []
    x, y = digits
    data = build.user_data(PairDataset(x, y), None, 1, messages.append, "auto", 0)
    assert data.streamed and data.num_train + len(data.val_x) == len(x)
    assert any("streaming train_data" in m for m in messages)
    small = build.user_data(PairDataset(x[:50], y[:50]), None, 1, messages.append, "memory", 0)
    assert not small.streamed
    # the same held-out examples either way
    whole = build.user_data(PairDataset(x, y), None, 1, messages.append, "memory", 0)
    assert torch.equal(whole.val_x, data.val_x) and torch.equal(whole.val_y, data.val_y)
