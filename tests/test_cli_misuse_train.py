"""ebjdat-train misuse, table-driven: each case exits 2 with one stderr line naming the cause, and
leaves every file it was not asked to create byte-identical (a real run, its checkpoints and the
user's own files included)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from misuse import Case, check_misuse, run_read_only, tree_state

from ebjdat import checkpoint
from ebjdat.cli import train as train_cli
from ebjdat.models import build_model
from ebjdat.ops import _library

TINY = [
    "model.arch=wrn-10-1",
    "sgld.buffer_size=64",
    "sgld.steps=1",
    "adv.steps=1",
    "train.eval_limit=16",
    "train.eval_steps=1",
    "optim.warmup_iters=0",
    "data.batch_size=32",
    "data.labelled_batch_size=32",
    "train.sample_grid=4",
]
SETS = [arg for a in TINY for arg in ("--set", a)]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real, finished one-epoch run that every case works on a copy of."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert train_cli.run(["--out", str(out), "--epochs", "1", "--no-progress", *SETS]) == 0
    return out


@pytest.fixture(autouse=True)
def _fresh_backend_choice():  # noqa: ANN202
    """Backend choices are cached per process; EBJDAT_BACKEND cases need a fresh look."""
    _library._choice.clear()
    yield
    _library._choice.clear()


def _rewrite_last(run: Path, edit) -> None:  # noqa: ANN001
    path = run / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def _foreign_run_id(state: dict) -> None:
    state["run_id"] = "0" * 32


def _other_width(state: dict) -> None:
    other = build_model("wrn-10-2", num_classes=10, in_channels=1, image_size=8)
    state["model"] = other.state_dict()


class Evil:
    def __reduce__(self):  # noqa: ANN204
        return (os.system, ("echo pwned > /tmp/ebjdat-pwned",))


def _prepare(tmp_path: Path, base_run: Path, setup: str) -> None:
    """The file-system situation a case starts from, in tmp_path."""
    run = tmp_path / "run"
    if setup in ("run", "no-config", "config-str", "no-progress", "foreign", "width", "garbage",
                 "evil", "no-marker-foreign", "extra-file"):
        shutil.copytree(base_run, run)
    if setup == "no-config":
        _rewrite_last(run, lambda s: s.pop("config"))
    elif setup == "config-str":
        _rewrite_last(run, lambda s: s.__setitem__("config", "digits"))
    elif setup == "no-progress":
        _rewrite_last(run, lambda s: s.pop("progress"))
    elif setup == "foreign":
        _rewrite_last(run, _foreign_run_id)
    elif setup == "width":
        _rewrite_last(run, _other_width)
    elif setup == "garbage":
        (run / "checkpoints" / "last.pt").write_bytes(os.urandom(2048))
    elif setup == "evil":
        torch.save({"format": checkpoint.FORMAT, "version": 1, "x": Evil()},
                   run / "checkpoints" / "last.pt")
    elif setup == "no-marker-foreign":
        # A run made before markers existed, whose last.pt was copied in from another config.
        (run / ".ebjdat-run").unlink()
        _rewrite_last(run, lambda s: s["config"]["sgld"].__setitem__("steps", 7))
    elif setup == "extra-file":
        (run / "notes.txt").write_text("my notes")
    elif setup == "user-dir":
        run.mkdir()
        (run / "thesis.txt").write_text("x")
    elif setup == "file":
        run.write_text("not a directory")
    (tmp_path / "bad.toml").write_bytes(b"[sgld]\nsteps = \xff\xfe\n")
    (tmp_path / "broken.toml").write_text("[sgld\nsteps = 3\n")
    (tmp_path / "ok.toml").write_text('extends = "digits"\n[sgld]\nsteps = 2\n')


def case(name: str, setup: str, argv: list[str], message: str, **env: str) -> pytest.param:
    return pytest.param(setup, Case(name, tuple(argv), message, tuple(env.items())), id=name)


R = ["--out", "{run}"]
CASES = [
    # Data loss: --overwrite acts only after everything is validated, and only on runs.
    case("overwrite-unknown-key", "run", [*R, "--overwrite", "--set", "sgld.stepz=1"],
         "unknown key sgld.stepz"),
    case("overwrite-missing-data", "run",
         [*R, "--overwrite", "--dataset", "cifar10", "--data-root", "{tmp}/empty"],
         "CIFAR-10 not found"),
    case("overwrite-user-dir", "user-dir", [*R, "--overwrite", "--epochs", "0"],
         "is not an ebjdat run"),
    case("overwrite-run-with-user-file", "extra-file", [*R, "--overwrite", "--epochs", "0"],
         "holds files ebjdat did not write (notes.txt)"),
    case("overwrite-batch-too-large", "run",
         [*R, "--overwrite", "--set", "data.labelled_batch_size=100000"],
         "data.labelled_batch_size = 100000 is larger than the digits training split"),
    case("existing-run-no-flag", "run", [*R, "--epochs", "1"], "--resume to continue it"),
    case("existing-user-dir-no-flag", "user-dir", [*R, "--epochs", "1"], "--overwrite to replace"),
    case("out-is-a-file", "file", [*R, "--epochs", "1"], "exists and is not a directory"),
    case("out-is-cwd", "none", ["--out", ".", "--epochs", "1"], "is the current directory"),
    case("new-run-missing-data", "none",
         ["--out", "{tmp}/a/b/run", "--dataset", "svhn", "--data-root", "{tmp}/empty"],
         "SVHN not found"),
    # Config values: a range for every key, checked before anything is built.
    case("lr-nan", "none", [*R, "--set", "optim.lr=nan"], "optim.lr must be a finite number"),
    case("augment-pad-negative", "none", [*R, "--set", "data.augment_pad=-1"],
         "data.augment_pad must be >= 0"),
    case("dropout-2", "none", [*R, "--set", "model.dropout=2"], "model.dropout must be < 1"),
    case("arch-resnet", "none", [*R, "--set", "model.arch=resnet-18"], "model.arch:"),
    case("seed-2-70", "none", [*R, "--seed", str(2**70)], "train.seed must be <="),
    case("seed-negative", "none", [*R, "--seed", "-1"], "train.seed must be >= 0"),
    case("max-loss-negative", "none", [*R, "--set", "train.max_loss=-1"],
         "train.max_loss must be > 0"),
    case("max-energy-inf", "none", [*R, "--set", "train.max_energy=inf"],
         "train.max_energy must be a finite number"),
    case("max-retries-negative", "none", [*R, "--set", "train.max_retries=-1"],
         "train.max_retries must be >= 0"),
    case("sync-every-0", "none", [*R, "--set", "train.sync_every=0"],
         "train.sync_every must be >= 1"),
    case("retry-factor-0", "none", [*R, "--set", "train.retry_lr_factor=0"],
         "train.retry_lr_factor must be > 0"),
    case("checkpoint-every-negative", "none", [*R, "--set", "train.checkpoint_every_iters=-5"],
         "train.checkpoint_every_iters must be >= 0"),
    case("eval-eps-2", "none", [*R, "--set", "train.eval_eps=2"], "train.eval_eps must be <= 1"),
    case("adv-eps-nan", "none", [*R, "--set", "adv.eps=nan"], "adv.eps must be a finite"),
    case("grad-clip-0", "none", [*R, "--set", "sgld.grad_clip=0"], "sgld.grad_clip must be > 0"),
    case("betas-one", "none", [*R, "--set", "optim.betas=[0.9]"], "optim.betas must hold two"),
    case("decay-unsorted", "none", [*R, "--set", "optim.decay_epochs=[80,40]"],
         "optim.decay_epochs must be in increasing order"),
    case("robust-select-without-eval", "none",
         [*R, "--set", "train.select_metric=val_robust_acc", "--set", "train.eval_steps=0"],
         "train.select_metric = val_robust_acc needs train.eval_steps"),
    case("cuda-graphs-on-cpu", "none", [*R, "--set", "train.cuda_graphs=true"],
         "train.cuda_graphs needs a CUDA device"),
    case("epochs-negative", "none", [*R, "--epochs", "-1"], "train.epochs must be >= 0"),
    case("epochs-not-int", "none", [*R, "--epochs", "abc"], "argument --epochs: invalid int"),
    case("set-not-an-int", "none", [*R, "--set", "sgld.steps=lots"],
         "sgld.steps: cannot use 'lots' as int"),
    case("set-malformed", "none", [*R, "--set", "steps"], "must look like section.key=value"),
    case("unknown-preset", "none", [*R, "--preset", "nope"], "unknown preset 'nope'"),
    case("unknown-flag", "none", [*R, "--epoch", "3"], "unrecognized arguments"),
    # Config files.
    case("config-not-utf8", "none", [*R, "--config", "{tmp}/bad.toml"], "is not UTF-8"),
    case("config-broken-toml", "none", [*R, "--config", "{tmp}/broken.toml"], "not valid TOML"),
    case("config-missing", "none", [*R, "--config", "{tmp}/nope.toml"], "does not exist"),
    case("config-is-dir", "none", [*R, "--config", "{tmp}"], "is a directory"),
    # Devices and backends: refused at start-up, not mid-run.
    case("device-unknown", "none", [*R, "--device", "tpu"], "--device"),
    case("device-cuda-absent", "none", [*R, "--device", "cuda:0"], "no CUDA GPU is visible"),
    case("backend-cuda-on-cpu", "none", [*R, "--epochs", "1"], "EBJDAT_BACKEND=cuda",
         EBJDAT_BACKEND="cuda"),
    case("backend-triton-no-interpreter", "none", [*R, "--epochs", "1"], "EBJDAT_BACKEND=triton",
         EBJDAT_BACKEND="triton", TRITON_INTERPRET="0"),
    case("backend-unknown", "none", [*R, "--epochs", "1"], "EBJDAT_BACKEND must be one of",
         EBJDAT_BACKEND="fast"),
    # Resume never quietly goes wrong.
    case("resume-missing", "none", [*R, "--resume"], "last.pt does not exist"),
    case("resume-overwrite", "run", [*R, "--resume", "--overwrite"], "contradict"),
    case("resume-set", "run", [*R, "--resume", "--set", "sgld.steps=3"],
         "--set sgld.steps cannot change on --resume"),
    case("resume-preset", "run", [*R, "--resume", "--preset", "jem"],
         "--preset cannot be used with --resume"),
    case("resume-config", "run", [*R, "--resume", "--config", "{tmp}/ok.toml"],
         "--config cannot be used with --resume"),
    case("resume-dataset", "run", [*R, "--resume", "--dataset", "svhn"],
         "--dataset cannot be used with --resume"),
    case("resume-seed", "run", [*R, "--resume", "--seed", "5"],
         "--seed cannot be used with --resume"),
    case("resume-no-config", "no-config", [*R, "--resume"], "has no 'config' entry"),
    case("resume-config-string", "config-str", [*R, "--resume"], "'config'"),
    case("resume-no-progress", "no-progress", [*R, "--resume"], "has no 'progress' entry"),
    case("resume-foreign-checkpoint", "foreign", [*R, "--resume", "--epochs", "2"],
         "belongs to another run"),
    case("resume-foreign-legacy", "no-marker-foreign", [*R, "--resume", "--epochs", "2"],
         "does not belong to"),
    case("resume-other-width", "width", [*R, "--resume", "--epochs", "2"],
         "does not fit the model"),
    case("resume-random-bytes", "garbage", [*R, "--resume"], "truncated, corrupt"),
    case("resume-malicious-pickle", "evil", [*R, "--resume"], "pickled Python object"),
]


@pytest.mark.parametrize(("setup", "c"), CASES)
def test_train_misuse(
    setup: str,
    c: Case,
    tmp_path: Path,
    base_run: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _prepare(tmp_path, base_run, setup)
    for key, value in c.env:
        monkeypatch.setenv(key, value)
    argv = [a.replace("{run}", str(tmp_path / "run")).replace("{tmp}", str(tmp_path))
            for a in (*c.argv, "--no-progress")]
    line = check_misuse(train_cli.run, argv, c.message, prog="ebjdat-train", capsys=capsys,
                        watch=[tmp_path])
    assert "weights_only" not in line  # never the advice to unpickle anyway
    assert not Path("/tmp/ebjdat-pwned").exists()


def test_case_table_is_large_and_distinct() -> None:
    names = [p.values[1].name for p in CASES]
    assert len(names) >= 40 and len(set(names)) == len(names)


def test_read_only_places_are_refused_early(base_run: Path, tmp_path: Path) -> None:
    """A read-only parent (new run) or run directory (resume, overwrite): one line, early, no
    traceback, nothing changed."""
    ro = tmp_path / "ro"
    ro.mkdir()
    run = ro / "run"
    shutil.copytree(base_run, run)
    before = tree_state(ro)
    for argv, expected in [
        (["--out", str(ro / "new"), "--epochs", "1"], "cannot write in"),
        (["--out", str(run), "--overwrite", "--epochs", "1"], "cannot write in"),
        (["--out", str(run), "--resume", "--epochs", "2"], "cannot write in"),
    ]:
        command = [sys.executable, "-m", "ebjdat.cli.train", "--no-progress", *argv]
        if "--resume" not in argv:
            command += SETS
        result = run_read_only(ro, command)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr
        assert len(lines) == 1 and lines[0].startswith("ebjdat-train: error:"), result.stderr
        assert expected in lines[0], lines[0]
        assert "Read-only file system" in lines[0] or "Permission denied" in lines[0], lines[0]
    assert tree_state(ro) == before
