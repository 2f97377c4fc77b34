"""User mistakes with ebjdat-eval, ebjdat-sample and ebjdat-bench: each is exit code 2 and one
stderr line `PROG: error: ...` naming the flag or argument and the cause, found before anything
is computed or written (the watched directories stay byte-identical; see tests/misuse.py).

The CLIs run in this process (no interpreter start-up per case); only the read-only cases run in
one subprocess, because root writes through any mode bits: that subprocess runs as `nobody`, or,
where `nobody` cannot run this interpreter, as root without CAP_DAC_OVERRIDE, so the kernel
refuses the writes as it would for any other user."""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from helpers import train_smoke_run
from misuse import Case, check_misuse, demotion, tree_state

from ebjdat import checkpoint
from ebjdat.cli import bench as bench_cli
from ebjdat.cli import eval as eval_cli
from ebjdat.cli import sample as sample_cli
from ebjdat.ops import _library

FAST = ("--device", "cpu", "--no-progress")
MAINS: dict[str, Callable[[list[str]], int | None]] = {
    "ebjdat-eval": eval_cli.run,
    "ebjdat-sample": sample_cli.run,
    "ebjdat-bench": bench_cli.main,
}
BIG_SEED = str(2**70)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One digits run trained for one short epoch: RUN/checkpoints/last.pt, RUN/metrics.jsonl."""
    run = tmp_path_factory.mktemp("run")
    assert train_smoke_run(run).is_file()
    return run


def _variant(state: dict, edit: Callable[[dict], None]) -> dict:
    state = copy.deepcopy({k: v for k, v in state.items() if k not in ("format", "version")})
    edit(state)
    return state


@pytest.fixture(scope="module")
def bad_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoints that are wrong in one way each."""
    bad = tmp_path_factory.mktemp("bad")
    good = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    (bad / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.zeros(3)}, bad / "foreign.pt")

    def model_cfg(**changes: object) -> Callable[[dict], None]:
        return lambda s: s.__setitem__("model_config", {**s["model_config"], **changes})

    edits: dict[str, Callable[[dict], None]] = {
        "noconfig": lambda s: s.pop("config"),
        "strconfig": lambda s: s.__setitem__("config", "digits"),
        "badconfig": lambda s: s["config"]["sgld"].__setitem__("steps", "many"),
        "nomodel": lambda s: s.pop("model"),
        "listmodelcfg": lambda s: s.__setitem__("model_config", [10, 1]),
        "resnet": model_cfg(backbone="resnet"),
        "wider": model_cfg(widen=2),
        "strayarg": model_cfg(colour="blue"),
        "renamed": lambda s: s.__setitem__(
            "model", {k.replace("class_output", "head"): v for k, v in s["model"].items()}
        ),
    }
    for name, edit in edits.items():
        checkpoint.save(bad / f"{name}.pt", _variant(good, edit))
    return bad


CKPT_CASES = [
    Case("eval-missing-ckpt", ("ebjdat-eval", "{tmp}/missing.pt"), "does not exist"),
    Case("eval-ckpt-is-dir", ("ebjdat-eval", "{run}"), "is a directory, not a checkpoint file"),
    Case("eval-corrupt-ckpt", ("ebjdat-eval", "{bad}/corrupt.pt"), "corrupt"),
    Case("eval-foreign-ckpt", ("ebjdat-eval", "{bad}/foreign.pt"), "not an ebjdat checkpoint"),
    Case("eval-no-config", ("ebjdat-eval", "{bad}/noconfig.pt"), "holds no config"),
    Case("eval-config-not-table", ("ebjdat-eval", "{bad}/strconfig.pt"), "config is a str"),
    Case("eval-config-bad-value", ("ebjdat-eval", "{bad}/badconfig.pt"), "sgld.steps"),
    Case("eval-no-model", ("ebjdat-eval", "{bad}/nomodel.pt"), "holds no model"),
    Case("eval-model-config-list", ("ebjdat-eval", "{bad}/listmodelcfg.pt"),
         "model_config is a list"),  # fmt: skip
    Case("eval-unknown-backbone", ("ebjdat-eval", "{bad}/resnet.pt"), "unknown backbone"),
    Case("eval-model-config-stray-key", ("ebjdat-eval", "{bad}/strayarg.pt"),
         "model_config is not usable"),  # fmt: skip
    Case("eval-tensor-shapes-differ", ("ebjdat-eval", "{bad}/wider.pt"),
         "does not fit the model: backbone.layer1.0.conv1.weight is [16, 16, 3, 3] in the "
         "checkpoint but [32, 16, 3, 3] in the model (and 16 more tensors); missing: "
         "backbone.layer1.0.shortcut.0.weight"),  # fmt: skip
    Case("eval-tensor-names-differ", ("ebjdat-eval", "{bad}/renamed.pt"),
         "missing: class_output.weight, class_output.bias; unexpected: head.weight"),  # fmt: skip
    Case("sample-ckpt-is-dir", ("ebjdat-sample", "{run}"), "did you mean"),
    Case("sample-tensor-shapes-differ", ("ebjdat-sample", "{bad}/wider.pt"),
         "does not fit the model"),  # fmt: skip
]

EVAL = ("ebjdat-eval", "{ckpt}")
EVAL_CASES = [
    Case("eval-gen-noise-std-negative", (*EVAL, "--gen-noise-std", "-1"),
         "--gen-noise-std must be a finite number >= 0, got -1"),  # fmt: skip
    Case("eval-gen-noise-std-inf", (*EVAL, "--gen-noise-std", "inf"), "--gen-noise-std must be"),
    Case("eval-gen-step-size-nan", (*EVAL, "--gen-step-size", "nan"),
         "--gen-step-size must be a finite number >= 0, got nan"),  # fmt: skip
    Case("eval-gen-steps-negative", (*EVAL, "--gen-steps", "-1"), "--gen-steps must be >= 0"),
    Case("eval-gen-grad-clip-zero", (*EVAL, "--gen-grad-clip", "0"),
         "--gen-grad-clip must be a finite number > 0"),  # fmt: skip
    Case("eval-gen-grad-clip-nan", (*EVAL, "--gen-grad-clip", "nan"), "--gen-grad-clip"),
    Case("eval-gen-grad-clip-word", (*EVAL, "--gen-grad-clip", "lots"),
         "expected a number or 'none'"),  # fmt: skip
    Case("eval-eps-inf", (*EVAL, "--eps", "inf"), "--eps must be a finite number in (0, 1]"),
    Case("eval-eps-zero", (*EVAL, "--eps", "0"), "--eps must be a finite number in (0, 1]"),
    Case("eval-eps-linf-above-1", (*EVAL, "--eps", "8"), "got 8"),
    Case("eval-eps-l2-nan", (*EVAL, "--norm", "l2", "--eps", "nan"),
         "--eps must be a finite number > 0, got nan"),  # fmt: skip
    Case("eval-seed-too-big", (*EVAL, "--seed", BIG_SEED), "--seed must be an integer in [0, "),
    Case("eval-seed-negative", (*EVAL, "--seed", "-1"), "--seed must be an integer in [0, "),
    Case("eval-seed-not-int", (*EVAL, "--seed", "1.5"), "argument --seed: invalid int value"),
    Case("eval-batch-size-zero", (*EVAL, "--batch-size", "0"), "--batch-size must be >= 1"),
    Case("eval-limit-zero", (*EVAL, "--limit", "0"), "--limit must be >= 1, got 0"),
    Case("eval-gen-n-one", (*EVAL, "--gen-n", "1"),
         "--gen-n must be an integer in [2, 50000], got 1"),  # fmt: skip
    Case("eval-gen-n-too-many", (*EVAL, "--gen-n", "50001"),
         "--gen-n must be an integer in [2, 50000], got 50001"),  # fmt: skip
    Case("eval-buffer-ratio-zero", (*EVAL, "--buffer-ratio", "0"),
         "--buffer-ratio must be a finite number in (0, 1], got 0"),  # fmt: skip
    Case("eval-buffer-ratio-nan", (*EVAL, "--buffer-ratio", "nan"), "--buffer-ratio must be"),
    Case("eval-unknown-attack", (*EVAL, "--attacks", "fgsm"), "unknown attack 'fgsm'"),
    Case("eval-pgd-zero-steps", (*EVAL, "--attacks", "pgd0"), "--attacks pgd0: PGD needs"),
    Case("eval-aa-impl-unknown", (*EVAL, "--aa-impl", "foolbox"),
         "argument --aa-impl: invalid choice: 'foolbox'"),  # fmt: skip
    Case("eval-aa-version-unknown", (*EVAL, "--aa-version", "paper"),
         "argument --aa-version: invalid choice: 'paper'"),  # fmt: skip
    Case("eval-aa-version-full-original", (*EVAL, "--aa-version", "full"),
         "--aa-version full is not a version of the original AutoAttack"),  # fmt: skip
    Case("eval-aa-version-full-original-explicit",
         (*EVAL, "--aa-impl", "original", "--aa-version", "full"),
         "--aa-version full is not a version of the original AutoAttack"),  # fmt: skip
    Case("eval-aa-impl-original-paper", (*EVAL, "--protocol", "paper", "--aa-impl", "original"),
         "--aa-impl original cannot run the paper protocol"),  # fmt: skip
    Case("eval-aa-version-paper-protocol",
         (*EVAL, "--protocol", "paper", "--aa-impl", "torchattacks", "--aa-version", "standard"),
         "--aa-version standard cannot be chosen under the paper protocol"),  # fmt: skip
    Case("eval-unknown-flag", (*EVAL, "--epz", "0.1"), "unrecognized arguments: --epz"),
    Case("eval-bad-device", (*EVAL, "--device", "tpu"), "--device"),
    Case("eval-out-is-a-file", (*EVAL, "--out", "{run}/metrics.jsonl"),
         "exists and is not a directory"),  # fmt: skip
    Case("eval-out-below-a-file", (*EVAL, "--out", "{run}/metrics.jsonl/eval"),
         "is not a directory"),  # fmt: skip
]

SAMPLE = ("ebjdat-sample", "{ckpt}")
SAMPLE_CASES = [
    Case("sample-n-zero", (*SAMPLE, "--n", "0"), "--n must be >= 1, got 0"),
    Case("sample-steps-negative", (*SAMPLE, "--steps", "-5"), "--steps must be >= 0"),
    Case("sample-step-size-nan", (*SAMPLE, "--step-size", "nan"),
         "--step-size must be a finite number >= 0, got nan"),  # fmt: skip
    Case("sample-noise-std-negative", (*SAMPLE, "--noise-std", "-0.1"), "--noise-std must be"),
    Case("sample-grad-clip-negative", (*SAMPLE, "--grad-clip", "-1"), "--grad-clip must be"),
    Case("sample-seed-too-big", (*SAMPLE, "--seed", BIG_SEED),
         "--seed must be an integer in [0, 18446744073709551615]"),  # fmt: skip
    Case("sample-batch-size-zero", (*SAMPLE, "--batch-size", "0"), "--batch-size must be >= 1"),
    Case("sample-out-is-a-file", (*SAMPLE, "--out", "{run}/metrics.jsonl"),
         "exists and is not a directory"),  # fmt: skip
    Case("sample-missing-ckpt", ("ebjdat-sample", "{tmp}/missing.pt"), "does not exist"),
]

BENCH_CASES = [
    Case("bench-step-unknown-set-key", ("ebjdat-bench", "step", "--set", "sgld.stepz=1"),
         "--set sgld.stepz=1: unknown key sgld.stepz"),  # fmt: skip
    Case("bench-step-set-no-equals", ("ebjdat-bench", "step", "--set", "sgld.steps"),
         "must look like section.key=value"),  # fmt: skip
    Case("bench-step-set-bad-type", ("ebjdat-bench", "step", "--set", "sgld.steps=abc"),
         "cannot use 'abc' as int"),  # fmt: skip
    Case("bench-step-set-out-of-range", ("ebjdat-bench", "step", "--set", "sgld.steps=-3"),
         "sgld.steps must be >= 0"),  # fmt: skip
    Case("bench-step-second-set-bad",
         ("ebjdat-bench", "step", "--set", "sgld.steps=2", "--set", "adv.eps=nan"),
         "--set adv.eps=nan"),  # fmt: skip
    Case("bench-step-batch-zero", ("ebjdat-bench", "step", "--batch", "0"), "--batch must be >= 2"),
    Case("bench-step-repeats-zero", ("ebjdat-bench", "step", "--repeats", "0"),
         "--repeats must be >= 1, got 0"),  # fmt: skip
    Case("bench-step-unknown-arch", ("ebjdat-bench", "step", "--models", "wrn-10-2", "resnet18"),
         "--models resnet18: arch must look like 'wrn-DEPTH-WIDEN'"),  # fmt: skip
    Case("bench-step-json-is-dir", ("ebjdat-bench", "step", "--json", "{tmp}"), "is a directory"),
    Case("bench-step-json-below-file", ("ebjdat-bench", "step", "--json",
         "{run}/metrics.jsonl/step.json"), "is not a directory"),  # fmt: skip
    Case("bench-step-cuda-graphs-on-cpu",
         ("ebjdat-bench", "step", "--device", "cpu", "--variants", "cuda-graphs"),
         "needs --device cuda"),  # fmt: skip
    Case("bench-ops-threads-zero", ("ebjdat-bench", "ops", "--threads", "0"),
         "--threads must be >= 1, got 0"),  # fmt: skip
    Case("bench-ops-min-run-time-zero", ("ebjdat-bench", "ops", "--min-run-time", "0"),
         "--min-run-time must be a finite number > 0, got 0"),  # fmt: skip
    Case("bench-ops-min-run-time-negative", ("ebjdat-bench", "ops", "--min-run-time", "-1"),
         "--min-run-time must be"),  # fmt: skip
    Case("bench-ops-min-run-time-nan", ("ebjdat-bench", "ops", "--min-run-time", "nan"),
         "got nan"),  # fmt: skip
    Case("bench-ops-json-is-dir", ("ebjdat-bench", "ops", "--json", "{run}"), "is a directory"),
    Case("bench-ops-bad-dtype", ("ebjdat-bench", "ops", "--dtype", "int8"),
         "ops: argument --dtype: invalid choice: 'int8'"),  # fmt: skip
    Case("bench-ops-bad-device", ("ebjdat-bench", "ops", "--device", "nonsense"),
         "unknown device 'nonsense'"),  # fmt: skip
    Case("bench-no-command", ("ebjdat-bench",), "required: COMMAND"),
]

# EBJDAT_BACKEND naming a backend that cannot run here: refused at start-up, not mid-run.
BACKEND_CASES = [
    Case("eval-backend-cuda-on-cpu", EVAL, "EBJDAT_BACKEND=cuda", (("EBJDAT_BACKEND", "cuda"),)),
    Case("sample-backend-triton-no-interpreter", SAMPLE, "EBJDAT_BACKEND=triton",
         (("EBJDAT_BACKEND", "triton"), ("TRITON_INTERPRET", "0"))),  # fmt: skip
    Case("bench-ops-backend-unknown", ("ebjdat-bench", "ops", "--device", "cpu"),
         "EBJDAT_BACKEND must be one of", (("EBJDAT_BACKEND", "fast"),)),  # fmt: skip
]

ALL_CASES = CKPT_CASES + EVAL_CASES + SAMPLE_CASES + BENCH_CASES + BACKEND_CASES


@pytest.mark.parametrize("case", ALL_CASES, ids=str)
def test_misuse_is_one_line_exit_2(
    case: Case,
    run_dir: Path,
    bad_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in case.env:
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(_library, "_choice", {})  # backend choices are cached per process
    fill = {
        "{tmp}": str(tmp_path),
        "{run}": str(run_dir),
        "{ckpt}": str(run_dir / "checkpoints" / "last.pt"),
        "{bad}": str(bad_dir),
    }
    prog, *argv = case.argv
    for key, value in fill.items():
        argv = [a.replace(key, value) for a in argv]
    if prog != "ebjdat-bench":  # the case's own flags come last, so they win
        argv = [*FAST, *(() if "--out" in argv else ("--out", str(tmp_path / "out"))), *argv]
    check_misuse(
        MAINS[prog], argv, case.message, prog=prog, capsys=capsys,
        watch=[run_dir, bad_dir, tmp_path],
    )  # fmt: skip


# ---- read-only output places ----------------------------------------------------------------

READ_ONLY_CASES = [
    Case("eval-out-read-only", ("ebjdat-eval", "{ckpt}", "--out", "{run}/eval"),
         "--out {run}/eval: cannot write in {run} (Permission denied)"),  # fmt: skip
    Case("eval-default-out-in-read-only-run", ("ebjdat-eval", "{ckpt}"),
         "--out (default) {run}/eval: cannot write in {run}"),  # fmt: skip
    Case("sample-out-read-only-parent", ("ebjdat-sample", "{ckpt}", "--out", "{run}/a/b"),
         "cannot write in {run} (Permission denied)"),  # fmt: skip
    Case("sample-default-out-in-read-only-run", ("ebjdat-sample", "{ckpt}"),
         "--out (default) {run}/fresh_samples: cannot write in {run}"),  # fmt: skip
    Case("bench-step-json-read-only", ("ebjdat-bench", "step", "--json", "{run}/step.json"),
         "--json {run}: cannot write in {run} (Permission denied)"),  # fmt: skip
    Case("bench-ops-json-read-only", ("ebjdat-bench", "ops", "--json", "{run}/new/ops.json"),
         "cannot write in {run}"),  # fmt: skip
]

_DRIVER = r"""
import contextlib, io, json, sys
from ebjdat.cli import bench, eval, sample
mains = {"ebjdat-eval": eval.run, "ebjdat-sample": sample.run, "ebjdat-bench": bench.main}
out = {}
for name, prog, argv in json.load(sys.stdin):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = mains[prog](argv)
        except SystemExit as exit_:
            code = exit_.code
    out[name] = {"code": 0 if code is None else int(code), "stderr": err.getvalue()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def read_only(run_dir: Path) -> Iterator[tuple[Path, dict[str, dict]]]:
    """A copy of the run in a 0o555 directory under a world-traversable temp dir, and what each
    read-only case gave, all from one unprivileged subprocess."""
    base = Path(tempfile.mkdtemp(prefix="ebjdat-ro-", dir="/tmp"))
    base.chmod(0o755)
    run = base / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy2(run_dir / "checkpoints" / "last.pt", run / "checkpoints" / "last.pt")
    (run / "checkpoints" / "last.pt").chmod(0o644)
    for d in (run / "checkpoints", run):
        d.chmod(0o555)
    try:
        demote = demotion(run)
        fill = {"{run}": str(run), "{ckpt}": str(run / "checkpoints" / "last.pt")}
        jobs = []
        for case in READ_ONLY_CASES:
            prog, *argv = case.argv
            argv = [_fill(a, fill) for a in argv]
            if prog != "ebjdat-bench":
                argv = [*FAST, *argv]
            jobs.append((case.name, prog, argv))
        before = tree_state(base)
        env = {**os.environ, "HOME": str(base)}
        proc = subprocess.run(
            [sys.executable, "-c", _DRIVER], input=json.dumps(jobs), capture_output=True,
            text=True, timeout=300, preexec_fn=demote, env=env, cwd=base,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = json.loads(proc.stdout.strip().splitlines()[-1])
        assert tree_state(base) == before, "a failed command changed the read-only run"
        yield run, results
    finally:
        for d in (run, run / "checkpoints"):
            d.chmod(stat.S_IRWXU)
        shutil.rmtree(base)


def _fill(text: str, fill: dict[str, str]) -> str:
    for key, value in fill.items():
        text = text.replace(key, value)
    return text


@pytest.mark.parametrize("case", READ_ONLY_CASES, ids=str)
def test_read_only_output_place(case: Case, read_only: tuple[Path, dict[str, dict]]) -> None:
    run, results = read_only
    got = results[case.name]
    lines = [line for line in got["stderr"].splitlines() if line.strip()]
    prog = case.argv[0]
    assert got["code"] == 2, got
    assert len(lines) == 1, got["stderr"]
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert _fill(case.message, {"{run}": str(run)}) in lines[0]


# ---- --help -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prog", "argv"),
    [
        ("ebjdat-eval", ["--help"]),
        ("ebjdat-sample", ["--help"]),
        ("ebjdat-bench", ["--help"]),
        ("ebjdat-bench", ["ops", "--help"]),
        ("ebjdat-bench", ["step", "--help"]),
    ],
)
def test_help_exits_0(prog: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        MAINS[prog](argv)
    assert exit_.value.code in (0, None)
    out = capsys.readouterr()
    assert out.out.startswith("usage: ") and not out.err


# ---- load_weights ---------------------------------------------------------------------------


def test_load_weights_names_the_first_mismatch_and_leaves_the_module_alone() -> None:
    from ebjdat.checkpoint import CheckpointError
    from ebjdat.models.loading import load_weights

    module = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.Conv2d(32, 8, 1))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.Conv2d(16, 8, 1)).state_dict()
    other["extra.weight"] = torch.zeros(1)
    del other["1.bias"]
    with pytest.raises(CheckpointError) as err:
        load_weights(module, other, "runs/x/last.pt")
    assert str(err.value) == (
        "checkpoint runs/x/last.pt does not fit the model: 0.weight is [16, 3, 3, 3] in the "
        "checkpoint but [32, 3, 3, 3] in the model (and 2 more tensors); missing: 1.bias; "
        "unexpected: extra.weight"
    )
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_weights(module, [1, 2], "runs/x/last.pt")  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="non-tensor entries"):
        load_weights(module, {**module.state_dict(), "0.weight": "w"}, "runs/x/last.pt")
    load_weights(module, {k: v + 1 for k, v in before.items()}, "runs/x/last.pt")
    assert torch.equal(module.state_dict()["0.bias"], before["0.bias"] + 1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "--aa-impl original (the default) needs pyautoattack, which is not installed (pip "
             "install pyautoattack)"),
        (("--aa-impl", "original"), "--aa-impl original needs pyautoattack"),
        (("--aa-impl", "torchattacks"), "--attacks autoattack needs torchattacks"),
    ],
    ids=["default", "original", "torchattacks"],
)  # fmt: skip
def test_missing_autoattack_package_is_one_line_exit_2(
    argv: tuple[str, ...],
    message: str,
    run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As if neither engine were installed: the flag that chose the engine is named, with the
    pip command. With autoattack left out of --attacks no package is needed."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("pyautoattack", "torchattacks") else real(name, *a),
    )
    ckpt = str(run_dir / "checkpoints" / "last.pt")
    base = [ckpt, *FAST, "--out", str(tmp_path / "out")]
    check_misuse(
        eval_cli.run, [*base, *argv], message, prog="ebjdat-eval", capsys=capsys,
        watch=[run_dir, tmp_path],
    )  # fmt: skip
    settings = eval_cli.settings_from(eval_cli.parser().parse_args([*base, "--attacks", "pgd5"]))
    assert settings.attacks == ("pgd5",) and settings.aa_impl is None


# ---- the same checks from Python ------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        ({"limit": 0}, "limit", "limit must be >= 1, got 0"),
        ({"eps": 2.0}, "eps", "eps must be a finite number in (0, 1], got 2"),
        ({"attacks": ("fgsm",)}, "attacks", "unknown attack 'fgsm'"),
        ({"attacks": ("pgd0",)}, "attacks", "pgd0: PGD needs at least 1 step"),
        ({"buffer_ratio": float("nan")}, "buffer_ratio", "buffer_ratio must be"),
        ({"seed": -1}, "seed", "seed must be an integer in [0, "),
        ({"aa_impl": "foolbox"}, "aa_impl", "aa_impl must be 'original' or 'torchattacks'"),
        ({"aa_version": "full"}, "aa_version", "full is not a version of the original"),
        ({"aa_version": "fast"}, "aa_version", "must be one of standard, plus, rand, full"),
        ({"protocol": "paper", "aa_impl": "original"}, "aa_impl",
         "cannot run the paper protocol"),  # fmt: skip
        ({"protocol": "paper", "aa_version": "plus"}, "aa_version", "under the paper protocol"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_eval_settings_name_the_field(settings: dict, field: str, message: str) -> None:
    from ebjdat.eval import EvalSettings, SettingsError

    with pytest.raises(SettingsError) as err:
        EvalSettings(**settings).validate()
    assert err.value.field == field and message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_sampler_settings_name_the_nested_field() -> None:
    from ebjdat.eval import EvalSettings, SamplerOverrides, SampleSettings, SettingsError

    with pytest.raises(SettingsError, match=r"^gen_sampler\.steps must be >= 0, got -1$"):
        EvalSettings(gen_sampler=SamplerOverrides(steps=-1)).validate()
    with pytest.raises(SettingsError, match=r"^n must be >= 1, got 0$"):
        SampleSettings(n=0).validate()
