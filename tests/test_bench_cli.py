"""Smoke tests of `ebjdat-bench ops` and of scripts/gpu_check.py's CPU path: formats and exit
codes only, never timings (the numbers from --quick mean nothing). The rest of gpu_check.py is
tested in test_gpu_check.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ebjdat.benchmarks import ops as bench_ops
from ebjdat.cli.bench import main

ROOT = Path(__file__).resolve().parents[1]
GPU_CHECK = ROOT / "scripts" / "gpu_check.py"
ROW_TYPES = {"op": str, "shape": list, "dtype": str, "impl": str, "median_s": float, "gbps": float}


def test_ops_quick_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "ops.json"
    assert main(["ops", "--quick", "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert set(data) == {"machine", "rows"}
    machine = data["machine"]
    for key in ("torch", "device_name", "cpu_count", "backends", "copy"):
        assert key in machine
    assert set(machine["backends"]) >= {"sgld_step", "pgd_step", "energy_head"}

    rows = data["rows"]
    for row in rows:
        for key, kind in ROW_TYPES.items():
            assert isinstance(row[key], kind), (key, row)
        assert row["impl"] in bench_ops.IMPLS
        assert row["median_s"] > 0 and row["gbps"] > 0
        assert all(isinstance(n, int) for n in row["shape"])
    assert {r["op"] for r in rows} == set(bench_ops.OPS)
    for op in bench_ops.OPS:  # --quick skips torch.compile unless asked for
        assert {r["impl"] for r in rows if r["op"] == op} == {"eager", "fused"}
        (fused,) = (r for r in rows if r["op"] == op and r["impl"] == "fused")
        assert fused["speedup_vs_eager"] > 0 and fused["speedup_vs_compile"] is None
        assert op in printed


@pytest.mark.parametrize("case", bench_ops.cases(quick=True), ids=str)
def test_impls_compute_the_same_math(case: bench_ops.Case) -> None:
    """eager and fused must agree, or the speedups compare different work."""
    inputs = bench_ops.make_inputs(case, torch.device("cpu"))
    spec = case.spec
    if spec.backward:
        grads = []
        for fn in (spec.eager, spec.fused):
            inputs["logits"].grad = None
            bench_ops.energy_backward(fn(**inputs))
            grads.append(inputs["logits"].grad)
        torch.testing.assert_close(grads[1], grads[0])
        return
    eager, fused = spec.eager(**inputs), spec.fused(**inputs)
    if case.op == "sgld_step":  # independent noise: the difference is noise_std * (n1 - n2)
        assert (fused - eager).abs().max() < 12 * bench_ops.SGLD.noise_std
        assert (fused - eager).std() > 0.5 * bench_ops.SGLD.noise_std
    else:
        torch.testing.assert_close(fused, eager)


@pytest.mark.parametrize(
    "argv",
    [
        ["ops", "--device", "nonsense"],
        ["ops", "--device", "meta"],
        ["ops", "--quick", "--min-run-time", "0"],
        ["ops", "--quick", "--threads", "0"],
        ["ops", "--dtype", "int8"],
        [],
    ],
    ids=["unknown-device", "unsupported-device", "bad-min-run-time", "bad-threads", "bad-dtype",
         "no-command"],
)
def test_bad_input_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["ops", "--device", "cuda", "--quick"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA GPU" in err


def test_gpu_check_cpu_path(tmp_path: Path) -> None:
    """The no-GPU path end to end (forced with --cpu-only, so a GPU machine runs it too)."""
    proc = subprocess.run(
        [sys.executable, str(GPU_CHECK), "--cpu-only", "--skip-build", "--quick", "--write-cpu",
         "--out-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "GPU parts skipped" in proc.stdout
    (written,) = tmp_path.glob("cpu-*.json")
    results = json.loads(written.read_text())
    assert results["kind"] == "cpu" and results["ok"] is True and results["complete"] is True
    assert {r["impl"] for r in results["bench"]["rows"]} == {"eager", "fused"}
    assert not any(s["run"] for s in results["steps"] if s["name"].startswith(("build", "cuda")))


def test_step_quick_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`ebjdat-bench step --quick` runs both implementations and writes one JSON row per
    implementation and variant (`impl`, `model`, `batch`, `median_s`, `phases`) and a machine
    record."""
    out = tmp_path / "step.json"
    assert main(["step", "--quick", "--variants", "default", "bf16", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [r["impl"] for r in rows] == ["official", "ebjdat", "ebjdat+bf16"]
    assert data["machine"]["variants"] == ["default", "bf16"]
    rates = data["machine"]["matmul_tflops"]
    assert set(rates) == {"float32", "bfloat16"} and min(rates.values()) > 0
    for row in rows:
        assert row["model"] == "wrn-10-1" and row["batch"] == 4 and row["median_s"] > 0
        assert set(row["phases"]) == {"sgld", "adversarial", "loss_forward", "loss_backward",
                                      "optimizer"}
        assert row["flops"] > 0
        # The FLOP floor: the counted FLOPs at the measured bfloat16 matmul rate.
        assert row["floor_s"] == pytest.approx(row["flops"] / (rates["bfloat16"] * 1e12))
        assert row["x_floor"] == pytest.approx(row["median_s"] / row["floor_s"])
        assert row["cifar10_epoch_min"] == pytest.approx(12500 * row["median_s"] / 60)  # batch 4
    assert "x official" in capsys.readouterr().out


def test_step_variant_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["step", "--quick", "--device", "cpu", "--variants", "cuda-graphs"])
    assert exc.value.code == 2
    assert "--variants cuda-graphs needs --device cuda" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["step", "--quick", "--variants", "turbo"])
    assert exc.value.code == 2


def test_step_nproc_times_one_and_two_gloo_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`step --nproc 2`: the same per-process batch in 1 and in 2 processes, every process's
    median, and speed-up and efficiency computed from them."""
    out = tmp_path / "scaling.json"
    assert main(["step", "--quick", "--device", "cpu", "--nproc", "2", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["model"], row["processes"], row["backend"]) == ("wrn-10-1", 2, "gloo")
    assert row["batch_per_process"] == 4 and len(row["per_rank_median_s"]) == 2
    assert row["n_process_s"] == max(row["per_rank_median_s"]) and row["one_process_s"] > 0
    assert row["efficiency"] == pytest.approx(row["one_process_s"] / row["n_process_s"])
    assert row["speedup"] == pytest.approx(2 * row["efficiency"])
    assert "sanity check" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nproc", "1"], "--nproc must be >= 2"),
        (["--nproc", "2", "--variants", "bf16"], "--nproc times the default configuration"),
    ],
)
def test_step_nproc_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["step", "--quick", "--device", "cpu", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
