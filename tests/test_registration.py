"""Dispatcher registration: opcheck on every op, torch.compile(fullgraph=True), the CUDA
kernels of a CUDA build, backend choice and its override, and the no-extension fallback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import NATIVE_CPU, TRITON_CPU, values

from ebjdat import _native, info, ops
from ebjdat.ops._library import has_native_kernel

ALL_OPS = ["sgld_step", "sgld_step_", "pgd_init", "pgd_step", "energy_head", "energy_head_backward"]


def samples(op: str) -> list[tuple]:
    """Deterministic argument tuples per op (explicit noise; eps=0 starts), a few layouts."""
    x = values((4, 3, 5, 5), 0).float().abs()
    g = values(x.shape, 1).float()
    cl = x.contiguous(memory_format=torch.channels_last)
    logits = (values((6, 10), 2) * 4).float()
    y = torch.arange(6) % 10
    # Inputs that require grad exercise the (non-differentiable) autograd registration.
    xg = x.clone().requires_grad_()
    if op == "sgld_step":
        return [
            (x, g, 0.1, 0.05, 0.01, -1.0, 1.0, g, None),
            (cl, g, 0.1, None, 0.0, None, None, None, None),
            (xg, g.clone().requires_grad_(), 0.1, None, 0.0, None, None, None, None),
        ]
    if op == "sgld_step_":
        return [(x.clone(), g, 0.1, 0.05, 0.01, -1.0, 1.0, g, None)]
    if op == "pgd_init":
        return [
            (x, 0.0, "linf", 0.0, 1.0, None),
            (cl, 0.0, "l2", 0.0, 1.0, None),
            (xg, 0.0, "l2", None, None, None),
        ]
    if op == "pgd_step":
        return [
            (x, g, x, 0.1, 0.05, "linf", 0.0, 1.0),
            (cl, g, x, 0.1, 0.5, "l2", None, None),
            (xg, g, x, 0.1, 0.5, "l2", None, None),
        ]
    if op == "energy_head":
        return [(logits.requires_grad_(), y, 1.0), (logits.detach().requires_grad_(), None, 2.0)]
    ge = torch.randn(6)
    return [(logits.detach(), y, ge, ge, ge, 1.0), (logits.detach(), None, ge, None, None, 0.5)]


def _opcheck(packet, op: str) -> None:  # noqa: ANN001
    for args in samples(op):
        torch.library.opcheck(packet, args)


@pytest.mark.skipif(not NATIVE_CPU, reason="ebjdat._C is not built")
@pytest.mark.parametrize("op", ALL_OPS)
def test_opcheck_native(op: str) -> None:
    _opcheck(getattr(torch.ops.ebjdat, op), op)


@pytest.mark.skipif(not TRITON_CPU, reason="needs triton with TRITON_INTERPRET=1")
@pytest.mark.parametrize("op", ALL_OPS)
def test_opcheck_triton(op: str) -> None:
    _opcheck(getattr(torch.ops.ebjdat, f"{op}_triton"), op)


def _step_fn(x: torch.Tensor, g: torch.Tensor, logits: torch.Tensor, y: torch.Tensor):  # noqa: ANN202
    a = ops.sgld_step(x, g, step_size=0.1, grad_clip=0.05, noise_std=0.0)
    b = ops.sgld_step(x, g, step_size=0.1, noise_std=0.01)
    c = ops.pgd_step(a.abs(), g, x.abs(), step_size=0.01, eps=0.03)
    d = ops.pgd_init(c, eps=0.0, norm="l2")
    e = ops.energy_head(logits, y, temperature=1.0)
    buf = x.clone()
    ops.sgld_step_(buf, g, step_size=0.2, noise_std=0.0)
    return a, b.shape, c, d, e.energy.sum() + e.ce.sum() - e.cond_energy.sum(), buf


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_compile_fullgraph(backend: str) -> None:
    if backend == "cpu" and not NATIVE_CPU:
        pytest.skip("ebjdat._C is not built")
    x = values((4, 3, 8, 8), 0).float()
    g = values(x.shape, 1).float()
    logits = values((4, 10), 2).float().requires_grad_()
    y = torch.tensor([1, 2, 3, 4])
    with ops.use_backend(backend):
        eager = _step_fn(x, g, logits, y)
        torch._dynamo.reset()
        compiled = torch.compile(_step_fn, fullgraph=True)(x, g, logits, y)
    for want, got in zip(eager, compiled, strict=True):
        if isinstance(want, torch.Tensor):
            torch.testing.assert_close(got, want)
        else:
            assert want == got
    compiled[4].backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_cuda_kernels_registered_in_a_cuda_build() -> None:
    kind = _native.build_info().get("kind")
    if kind != "cuda":
        pytest.skip(f"extension built as {kind!r}, not with CUDA")
    for op in ALL_OPS:
        assert has_native_kernel(op, "CUDA"), op
        assert has_native_kernel(op, "CPU"), op


def test_cpu_kernels_registered_when_loaded() -> None:
    module, reason = _native.load()
    if module is None:
        pytest.skip(f"ebjdat._C not loaded: {reason}")
    assert all(has_native_kernel(op, "CPU") for op in ALL_OPS)
    assert ops.backend("sgld_step", "cpu") == "cpu"
    assert bool(module.with_cuda) == has_native_kernel("sgld_step", "CUDA")


def test_backend_override_and_errors() -> None:
    with ops.use_backend("reference"):
        assert {ops.backend(op, "cpu") for op in ops.ops()} == {"reference"}
    with ops.use_backend("cuda"), pytest.raises(RuntimeError, match="cannot run sgld_step"):
        ops.sgld_step(torch.zeros(2), torch.zeros(2), step_size=0.1)
    with pytest.raises(ValueError, match="backend must be one of"):
        with ops.use_backend("gpu"):
            pass
    with pytest.raises(ValueError, match="unknown op"):
        ops.backend("sgld", "cpu")


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "EBJDAT_BACKEND"} | env
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120
    )


def test_fresh_process_loads_the_extension() -> None:
    """`import ebjdat` first thing in a process (torch not yet imported) still loads _C."""
    if _native.load()[0] is None:
        pytest.skip("ebjdat._C is not built")
    result = _python("import ebjdat; print(ebjdat.ops.backend('sgld_step', 'cpu'))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cpu", result.stderr


def test_env_override_in_a_fresh_process() -> None:
    code = "from ebjdat import ops; print(ops.backend('pgd_step', 'cpu'))"
    assert _python(code, EBJDAT_BACKEND="reference").stdout.strip() == "reference"
    bad = _python(code, EBJDAT_BACKEND="fast")
    assert bad.returncode != 0 and "EBJDAT_BACKEND must be one of" in bad.stderr


def test_without_extension_is_loud_and_works() -> None:
    code = (
        "import torch; from ebjdat import ops; "
        "x = torch.zeros(3); print(ops.backend('sgld_step', 'cpu'), "
        "ops.sgld_step(x, x + 1, step_size=0.5).tolist())"
    )
    result = _python(code, EBJDAT_NO_NATIVE="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "reference"
    assert "native kernels unavailable" in result.stderr
    shown = _python("from ebjdat import info; info.main()", EBJDAT_NO_NATIVE="1")
    assert "ebjdat._C NOT loaded: EBJDAT_NO_NATIVE=1 is set" in shown.stdout


def test_info_reports_every_op(capsys: pytest.CaptureFixture[str]) -> None:
    assert info.main([]) == 0
    text = capsys.readouterr().out
    assert "torch" in text and "triton" in text
    for op in ops.ops():
        assert op in text
    data = info.collect()
    assert set(data["backend"]) == {"cpu", "cuda"}
    assert data["extension_loaded"] == (_native.load()[0] is not None)


def test_density_check_agrees_with_torch() -> None:
    """The layout rule the ops and the compiled graphs use, on views of every kind."""
    from torch._prims_common import is_non_overlapping_and_dense_or_false as torch_rule

    from ebjdat.ops._layout import is_non_overlapping_and_dense

    base = torch.randn(2, 3, 4, 5)
    views = [base, base.permute(0, 2, 3, 1), base.contiguous(memory_format=torch.channels_last),
             base[:, ::2], base[..., :3], base.transpose(1, 3), base[:1], base[:, 1:2],
             torch.randn(5, 1, 3).expand(5, 4, 3), torch.randn(6)[1:5], torch.randn(0, 3),
             torch.randn(3, 1).expand(3, 0), torch.randn(2, 1, 4).transpose(0, 1)]  # fmt: skip
    for view in views:
        assert is_non_overlapping_and_dense(view) == torch_rule(view), (view.shape, view.stride())
