"""Data parallelism's data side: over one epoch the ranks' shards together hold every training
example once (DistributedSampler semantics: the tail that does not divide by the world size is
dropped, a different one each epoch), for the in-memory and the streaming loader alike."""

from __future__ import annotations

import pytest
import torch
from helpers import PairDataset

from ebjdat.data import Augment, Shard, StreamLoader, TensorLoader


def _epoch(loader) -> torch.Tensor:  # noqa: ANN001
    return torch.cat([y for _, y in loader])


def _loaders(kind: str, n: int, world: int, batch: int, seed: int = 11) -> list:
    x = torch.rand(n, 1, 4, 4)
    y = torch.arange(n)  # the label names the example
    out = []
    for rank in range(world):
        shard = Shard(rank, world, seed=seed)
        gen = 100 + rank  # augmentation stays per rank
        if kind == "memory":
            aug = Augment(pad=1)
            out.append(TensorLoader(x, y, batch, generator=gen, shard=shard, augment=aug))
        else:
            out.append(StreamLoader(PairDataset(x, y), batch, generator=gen, shard=shard))
    return out


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_two_ranks_see_every_example_once_per_epoch(kind: str) -> None:
    ranks = _loaders(kind, 100, 2, 10)
    assert [len(r) for r in ranks] == [5, 5] and ranks[0].num_samples == 50
    first = [_epoch(r) for r in ranks]
    seen = torch.cat(first)
    assert torch.equal(seen.sort().values, torch.arange(100))  # each exactly once
    second = [_epoch(r) for r in ranks]
    assert torch.equal(torch.cat(second).sort().values, torch.arange(100))
    assert not torch.equal(first[0], second[0])  # a new shuffle every epoch


def test_a_tail_that_does_not_divide_is_dropped_and_changes() -> None:
    ranks = _loaders("memory", 101, 2, 10)
    dropped = []
    for _ in range(4):
        seen = torch.cat([_epoch(r) for r in ranks])
        assert len(seen) == 100 and len(seen.unique()) == 100
        dropped.append(int(sorted(set(range(101)) - set(seen.tolist()))[0]))
    assert len(set(dropped)) > 1


def test_shards_agree_with_distributed_sampler() -> None:
    """The same split between ranks as torch's DistributedSampler given the same
    permutation (its own generator would draw a different one)."""
    n, world = 30, 3
    for rank in range(world):
        ours = Shard(rank, world, seed=5).order(n, epoch=2)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(5 + 2)).tolist()
        assert ours.tolist() == perm[rank:n:world]


def test_resume_mid_epoch_continues_the_shard() -> None:
    a, b = _loaders("memory", 60, 2, 6)[0], _loaders("memory", 60, 2, 6)[0]
    it = iter(a)
    head = [next(it)[1] for _ in range(2)]
    b.load_state_dict(a.state_dict())
    rest_a = [y for _, y in a]
    rest_b = [y for _, y in b]
    assert all(torch.equal(p, q) for p, q in zip(rest_a, rest_b, strict=True))
    assert len(head) + len(rest_a) == 5


def test_bad_shards_are_refused() -> None:
    with pytest.raises(ValueError, match="rank"):
        Shard(2, 2, seed=0)
    with pytest.raises(ValueError, match="exceeds"):
        _loaders("memory", 10, 2, 6)
