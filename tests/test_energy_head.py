"""energy_head forward and fused backward against float64 reference autograd."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import cpu_backends, dtypes_for, run, tol, values
from hypothesis import given
from hypothesis import strategies as st

from ebjdat import ops
from ebjdat.ops.energy_head import reference

BACKENDS = cpu_backends()


def weighted(out: tuple, w: tuple[float, float, float]) -> torch.Tensor:
    total = w[0] * out[0].sum()
    if out[1] is not None and out[1].numel():
        total = total + w[1] * out[1].sum() + w[2] * out[2].sum()
    return total


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_matches_float64_reference(backend: str, data: st.DataObject) -> None:
    dtype = data.draw(st.sampled_from(dtypes_for(backend)), "dtype")
    rows = data.draw(st.integers(0, 9), "B")
    classes = data.draw(st.integers(1, 40), "K")
    labelled = data.draw(st.booleans(), "y")
    temperature = data.draw(st.sampled_from([1.0, 0.5, 2.0]), "T")
    transposed = data.draw(st.booleans(), "transposed")
    weights = data.draw(st.tuples(*[st.sampled_from([0.0, 1.0, -0.7])] * 3), "weights")
    seed = data.draw(st.integers(0, 2**31), "seed")
    base = (values((rows, classes), seed) * 6).to(dtype)
    logits = base.t().contiguous().t() if transposed else base
    logits.requires_grad_(True)
    y = (
        torch.randint(0, classes, (rows,), generator=torch.Generator().manual_seed(seed))
        if labelled
        else None
    )
    out = run(backend, ops.energy_head, logits, y, temperature=temperature)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.energy.dtype == acc and out.energy.shape == (rows,)
    assert (out.cond_energy is None) == (y is None) and (out.ce is None) == (y is None)

    ref_logits = base.detach().double().requires_grad_(True)
    ref = reference(ref_logits, y, temperature)
    t = tol(dtype) if dtype != torch.float32 else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(out.energy.double(), ref[0], **t)
    if y is not None:
        torch.testing.assert_close(out.cond_energy.double(), ref[1], **t)
        torch.testing.assert_close(out.ce.double(), ref[2], **t)
    if rows == 0:
        return
    weighted(out, weights).backward()
    weighted(ref, weights).backward()
    assert logits.grad.dtype == dtype and logits.grad.shape == logits.shape
    torch.testing.assert_close(logits.grad.double(), ref_logits.grad, **tol(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_identities(backend: str) -> None:
    """Uniform logits c over K classes: E = -(c + log K); CE = log K; softmax gradient 1/K."""
    k = 7
    logits = torch.full((3, k), 2.0, requires_grad=True)
    y = torch.tensor([0, 3, 6])
    out = run(backend, ops.energy_head, logits, y)
    torch.testing.assert_close(out.energy, torch.full((3,), -(2.0 + math.log(k))))
    torch.testing.assert_close(out.ce, torch.full((3,), math.log(k)))
    torch.testing.assert_close(out.cond_energy, torch.full((3,), -2.0))
    out.energy.sum().backward()
    torch.testing.assert_close(logits.grad, torch.full((3, k), -1.0 / k))
    # Temperature: -T * logsumexp(l / T) tends to -max(l) as T -> 0.
    spread = torch.tensor([[1.0, 5.0, 2.0]])
    cold = run(backend, ops.energy_head, spread, temperature=0.01).energy
    torch.testing.assert_close(cold, torch.tensor([-5.0]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_infinite_and_nan_logits_follow_logsumexp(backend: str) -> None:
    inf, nan = math.inf, math.nan
    logits = torch.tensor([[inf, 0.0, 1.0], [-inf, -inf, -inf], [-inf, 0.0, 0.0], [nan, 0.0, 1.0]])
    out = run(backend, ops.energy_head, logits, torch.tensor([1, 0, 1, 1]))
    torch.testing.assert_close(out.energy, -torch.logsumexp(logits, 1), equal_nan=True)
    torch.testing.assert_close(
        out.ce, torch.logsumexp(logits, 1) - logits[range(4), [1, 0, 1, 1]], equal_nan=True
    )


def test_bad_input_names_the_argument() -> None:
    logits = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, 4\)"):
        ops.energy_head(logits, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, 4\)"):
        ops.energy_head(logits, torch.tensor([0, -1, 1]))
    with pytest.raises(TypeError, match="y must be an integer tensor"):
        ops.energy_head(logits, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"y must have shape \(3,\)"):
        ops.energy_head(logits, torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="logits must be 2-D"):
        ops.energy_head(torch.zeros(3))
    with pytest.raises(TypeError, match="logits must be float32"):
        ops.energy_head(torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ops.energy_head(logits, temperature=0.0)
    with pytest.raises(ValueError, match="y is on meta"):
        ops.energy_head(logits, torch.zeros(3, dtype=torch.int64, device="meta"))


def test_native_kernel_rejects_bad_labels_itself() -> None:
    """Called through torch.ops directly, the C++ kernel still refuses out-of-range labels."""
    from helpers import NATIVE_CPU

    if not NATIVE_CPU:
        pytest.skip("ebjdat._C is not built")
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, 4\); y\[1\] = 9"):
        torch.ops.ebjdat.energy_head(torch.zeros(2, 4), torch.tensor([0, 9]), 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [4, -1])
def test_label_range_on_every_backend(backend: str, bad: int) -> None:
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, 4\)"):
        run(backend, ops.energy_head, torch.zeros(3, 4), torch.tensor([0, bad, 1]))
