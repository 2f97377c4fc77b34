"""Export to safetensors: `ebjdat-export CKPT --out DIR` / `ebjdat.export.export_checkpoint`, and
`ebjdat.load_classifier(DIR)` back.

The references are independent of the export code: the checkpoint's own tensors, the module's own
`state_dict()` keys, plain `safetensors.torch.load_file`, and `load_classifier(CKPT)`, whose
logits an export must reproduce bit for bit. User mistakes with the CLI are exit code 2 and one
stderr line with nothing written (tests/misuse.py); every way an export can be broken is a
one-line CheckpointError naming the file."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import TINY_RUN
from misuse import Case, check_misuse, run_read_only, tree_state
from safetensors.torch import load_file, save, save_file
from torch import nn

import ebjdat
from ebjdat import checkpoint
from ebjdat.checkpoint import CheckpointError
from ebjdat.cli import export as export_cli
from ebjdat.data import load_split_tensors, to_float01
from ebjdat.export import ExportError, export_checkpoint, how_to_load
from ebjdat.models import JEM

TINY = TINY_RUN
# BatchNorm on (the digits preset has none), so that running statistics travel too.
WRN = {**TINY, "model.arch": "wrn-10-1", "model.norm": "batch", "sgld.buffer_size": 128,
       "data.batch_size": 128, "data.labelled_batch_size": 128}  # fmt: skip
TESTS = str(Path(__file__).resolve().parent)


class TinyNet(nn.Module):
    """A user's classifier, nothing from ebjdat; it takes arguments, so it has no builder."""

    def __init__(self, channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class DigitsNet(TinyNet):
    """Takes no arguments, so its class is its builder."""

    def __init__(self) -> None:
        super().__init__(1, 10)


class Tied(nn.Module):
    """Tied weights (two names, one tensor) and a non-contiguous parameter and buffer: what
    safetensors refuses to save as they come."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 64)
        self.b = nn.Linear(64, 64)
        self.b.weight = self.a.weight
        self.head = nn.Parameter(torch.randn(10, 64).t())  # [64, 10], transposed strides
        self.register_buffer("shift", torch.randn(64, 2)[:, 0])  # a strided view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x.flatten(1) + self.shift))
        return self.b(h) @ self.head


def _fit(model: nn.Module | None, out: Path, overrides: dict) -> Path:
    torch.manual_seed(0)
    ebjdat.fit(
        model, None, config=overrides, out_dir=out, device="cpu", progress_bar=False,
        log=lambda m: None,
    )  # fmt: skip
    return out / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def wrn_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ebjdat's own WideResNet on the digits preset, trained one tiny epoch (BatchNorm stats)."""
    return _fit(None, tmp_path_factory.mktemp("wrn") / "run", WRN)


@pytest.fixture(scope="module")
def user_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user model with a builder (its no-argument class), trained one tiny epoch."""
    return _fit(DigitsNet(), tmp_path_factory.mktemp("user") / "run", TINY)


@pytest.fixture(scope="module")
def builderless_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user model whose checkpoint records no builder (epoch 0: weights as initialised)."""
    return _fit(TinyNet(), tmp_path_factory.mktemp("nobuilder") / "run", {**TINY,
                "train.epochs": 0})  # fmt: skip


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    x, _ = load_split_tensors("digits", "val")
    return to_float01(x)[:64]


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


# ---- round trips -----------------------------------------------------------------------------


def test_wideresnet_export_loads_back_bit_exactly(
    wrn_ckpt: Path, images: torch.Tensor, tmp_path: Path
) -> None:
    out = export_checkpoint(wrn_ckpt, tmp_path / "export")
    assert out == tmp_path / "export"
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    state = checkpoint.load(wrn_ckpt)
    meta = json.loads((out / "model.json").read_text())
    assert meta["format"] == "ebjdat-export" and meta["version"] == 1
    assert meta["ebjdat_version"] == ebjdat.__version__
    assert meta["model_config"] == state["model_config"]
    assert meta["input_range"] == [0, 1] and meta["input_shape"] == [1, 8, 8]
    assert meta["num_classes"] == 10
    assert meta["source"] == {
        "checkpoint": "last.pt",
        "run_id": state["run_id"],
        "epoch": 1,
        "iteration": state["progress"]["iteration"],
        "dataset": "digits",
    }
    assert state["progress"]["iteration"] > 0
    # The JEM module's own state dict, BatchNorm running statistics included.
    plain = load_file(out / "model.safetensors")
    assert set(plain) == set(JEM.from_config(state["model_config"]).state_dict())
    assert any(k.endswith("running_var") for k in plain)
    for key, value in plain.items():
        assert torch.equal(value, state["model"][key]), key
    exported = ebjdat.load_classifier(str(out))
    assert type(exported) is JEM and not exported.training
    reference = ebjdat.load_classifier(str(wrn_ckpt))
    assert torch.equal(_logits(exported, images), _logits(reference, images))
    via_json = ebjdat.load_classifier(str(out / "model.json"))
    assert torch.equal(_logits(via_json, images), _logits(reference, images))
    assert how_to_load(out) == f'ebjdat.load_classifier("{out}")'


def test_user_model_export_holds_the_modules_own_keys(
    user_ckpt: Path, images: torch.Tensor, tmp_path: Path
) -> None:
    out = export_checkpoint(user_ckpt, tmp_path / "export")
    state = checkpoint.load(user_ckpt)
    plain = load_file(out / "model.safetensors")
    assert set(plain) == set(DigitsNet().state_dict())  # no "net." prefix: the user's names
    for key, value in plain.items():
        assert torch.equal(value, state["model"][f"net.{key}"]), key
    meta = json.loads((out / "model.json").read_text())
    assert meta["model_config"] == {
        "kind": "classifier",
        "builder": f"{__name__}:DigitsNet",
        "kwargs": {},
        "class": f"{__name__}:DigitsNet",
        "num_classes": 10,
    }
    assert meta["input_shape"] == [1, 8, 8] and meta["source"]["epoch"] == 1
    exported = ebjdat.load_classifier(str(out))
    assert type(exported) is DigitsNet and not exported.training
    reference = ebjdat.load_classifier(str(user_ckpt))
    assert torch.equal(_logits(exported, images), _logits(reference, images))
    # Anyone can load it without ebjdat: build the module, load_state_dict the plain file.
    independent = DigitsNet()
    independent.load_state_dict(plain)
    assert torch.equal(_logits(independent.eval(), images), _logits(reference, images))
    # The full energy model view works from an export too.
    energy = ebjdat.load_model(str(out))
    assert torch.equal(energy.energy(images[:4]), ebjdat.load_model(str(user_ckpt)).energy(
        images[:4]))  # fmt: skip


def test_a_model_without_a_builder_exports_and_loads_with_model(
    builderless_ckpt: Path, images: torch.Tensor, tmp_path: Path
) -> None:
    out = export_checkpoint(builderless_ckpt, tmp_path / "export")
    assert set(load_file(out / "model.safetensors")) == set(TinyNet().state_dict())
    assert "model=" in how_to_load(out) and "TinyNet" in how_to_load(out)
    with pytest.raises(CheckpointError, match="saved without a builder; pass the untrained"):
        ebjdat.load_classifier(str(out))
    given = TinyNet()
    exported = ebjdat.load_classifier(str(out), model=given)
    assert exported is given and not exported.training
    reference = ebjdat.load_classifier(str(builderless_ckpt), model=TinyNet())
    assert torch.equal(_logits(exported, images), _logits(reference, images))
    wrong = TinyNet(classes=4)
    before = {k: v.clone() for k, v in wrong.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        ebjdat.load_classifier(str(out), model=wrong)
    assert str(err.value) == (
        f"export {out / 'model.safetensors'} does not fit the model: body.7.weight is [10, 32] "
        "in the export but [4, 32] in the model (and 1 more tensors)"
    )
    assert all(torch.equal(before[k], v) for k, v in wrong.state_dict().items())
    # Given the module at export time, the weights are checked against it first.
    with pytest.raises(CheckpointError, match="does not fit the model"):
        export_checkpoint(builderless_ckpt, tmp_path / "checked", model=TinyNet(classes=4))
    assert not (tmp_path / "checked").exists()
    export_checkpoint(builderless_ckpt, tmp_path / "checked", model=TinyNet())


def test_explicit_builder_with_kwargs(tmp_path: Path, images: torch.Tensor) -> None:
    net = TinyNet(1, 7)
    clf = ebjdat.Classifier(net, 7, builder=f"{__name__}:TinyNet", kwargs={"classes": 7})
    checkpoint.save(tmp_path / "c.pt", {"model": clf.state_dict(), "model_config": clf.config})
    out = export_checkpoint(tmp_path / "c.pt", tmp_path / "export")
    meta = json.loads((out / "model.json").read_text())
    assert meta["num_classes"] == 7 and meta["model_config"]["kwargs"] == {"classes": 7}
    assert meta["input_shape"] is None  # nothing in this checkpoint tells the image size
    assert meta["source"]["epoch"] is None  # no progress recorded
    loaded = ebjdat.load_classifier(str(out))
    assert type(loaded) is TinyNet
    assert torch.equal(_logits(loaded, images), _logits(net.eval(), images))


def test_shared_and_non_contiguous_tensors_export(tmp_path: Path, images: torch.Tensor) -> None:
    torch.manual_seed(0)
    clf = ebjdat.Classifier(Tied(), 10)
    checkpoint.save(tmp_path / "c.pt", {"model": clf.state_dict(), "model_config": clf.config})
    state = checkpoint.load(tmp_path / "c.pt")
    weights = {k[len("net.") :]: v for k, v in state["model"].items()}
    assert weights["a.weight"].data_ptr() == weights["b.weight"].data_ptr()  # still shared
    assert not weights["head"].is_contiguous() and not weights["shift"].is_contiguous()
    with pytest.raises(RuntimeError, match="share memory"):  # safetensors as it is
        save_file(weights, str(tmp_path / "naive.safetensors"))
    with pytest.raises(ValueError, match="non contiguous"):
        save_file({"head": weights["head"]}, str(tmp_path / "naive.safetensors"))
    out = export_checkpoint(tmp_path / "c.pt", tmp_path / "export")
    plain = load_file(out / "model.safetensors")
    assert set(plain) == {"a.weight", "a.bias", "b.weight", "b.bias", "head", "shift"}
    for key, value in plain.items():
        assert value.is_contiguous() and torch.equal(value, weights[key]), key
    loaded = ebjdat.load_classifier(str(out))
    assert type(loaded) is Tied and loaded.b.weight is loaded.a.weight  # the tie is the module's
    assert torch.equal(_logits(loaded, images), _logits(clf.net.eval(), images))


def test_model_json_that_json_cannot_hold_is_refused(tmp_path: Path) -> None:
    clf = ebjdat.Classifier(DigitsNet(), 10)
    cfg = {**clf.config, "kwargs": {"size": float("nan")}}
    checkpoint.save(tmp_path / "c.pt", {"model": clf.state_dict(), "model_config": cfg})
    with pytest.raises(ExportError, match=r"model_config.kwargs.size is nan"):
        export_checkpoint(tmp_path / "c.pt", tmp_path / "export", model=DigitsNet())
    assert not (tmp_path / "export").exists()


def test_overwrite(user_ckpt: Path, tmp_path: Path) -> None:
    out = export_checkpoint(user_ckpt, tmp_path / "export")
    first = tree_state(out)
    with pytest.raises(ExportError, match="holds an export already; pass overwrite=True"):
        export_checkpoint(user_ckpt, out)
    assert tree_state(out) == first
    (out / "README.md").write_text("my notes")
    with pytest.raises(ExportError, match=r"not empty \(it holds README.md, model.json, mod"):
        export_checkpoint(user_ckpt, out)
    (out / "model.json").write_text("stale")
    export_checkpoint(user_ckpt, out, overwrite=True)
    assert (out / "README.md").read_text() == "my notes"  # other files are left alone
    assert json.loads((out / "model.json").read_text())["format"] == "ebjdat-export"
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        export_checkpoint(user_ckpt, out, overwrite="yes")  # type: ignore[arg-type]


def test_loading_an_export_never_unpickles(
    user_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = export_checkpoint(user_ckpt, tmp_path / "export")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an export was unpickled")

    for target, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(target, name, refuse)
    assert type(ebjdat.load_classifier(str(out))) is DigitsNet


# ---- the command line --------------------------------------------------------------------------


def test_cli_as_python_m(wrn_ckpt: Path, images: torch.Tensor, tmp_path: Path) -> None:
    out = tmp_path / "export"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "ebjdat.cli.export", str(wrn_ckpt), "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out / 'model.safetensors'} and {out / 'model.json'}" in proc.stdout
    assert f'load it with: ebjdat.load_classifier("{out}")' in proc.stdout
    exported = ebjdat.load_classifier(str(out))
    reference = ebjdat.load_classifier(str(wrn_ckpt))
    assert torch.equal(_logits(exported, images), _logits(reference, images))
    assert export_cli.run([str(wrn_ckpt), "--out", str(out), "--overwrite"]) == 0


def test_cli_tells_how_to_load_a_builderless_export(
    builderless_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export_cli.run([str(builderless_ckpt), "--out", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "model=...)" in out and f"{__name__}:TinyNet" in out


def test_cli_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        export_cli.run(["--help"])
    assert exit_.value.code in (0, None)
    out = capsys.readouterr()
    assert out.out.startswith("usage: ebjdat-export") and not out.err


def _variant(state: dict, edit: Callable[[dict], None]) -> dict:
    state = copy.deepcopy({k: v for k, v in state.items() if k not in ("format", "version")})
    edit(state)
    return state


@pytest.fixture(scope="module")
def places(
    wrn_ckpt: Path, user_ckpt: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Broken checkpoints and output directories in each state a user may hand over."""
    bad = tmp_path_factory.mktemp("bad")
    (bad / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.zeros(3)}, bad / "foreign.pt")
    good = checkpoint.load(wrn_ckpt)
    user = checkpoint.load(user_ckpt)
    edits = {
        "nomodel.pt": (good, lambda s: s.pop("model")),
        "wider.pt": (good, lambda s: s.__setitem__("model_config", {**s["model_config"],
                                                                     "widen": 2})),
        "nobuilder.pt": (user, lambda s: s.__setitem__("model_config", {**s["model_config"],
                         "builder": "no_such_module:Net"})),
    }  # fmt: skip
    for name, (state, edit) in edits.items():
        checkpoint.save(bad / name, _variant(state, edit))
    outs = tmp_path_factory.mktemp("outs")
    (outs / "full").mkdir()
    (outs / "full" / "notes.txt").write_text("mine")
    export_checkpoint(wrn_ckpt, outs / "export")
    (outs / "jsondir" / "model.json").mkdir(parents=True)
    (outs / "afile").write_text("a file")
    return {"bad": bad, "outs": outs, "run": wrn_ckpt.parent.parent}


MISUSE_CASES = [
    Case("missing-ckpt", ("{tmp}/missing.pt", "--out", "{tmp}/x"), "missing.pt does not exist"),
    Case("ckpt-is-a-run-dir", ("{run}", "--out", "{tmp}/x"),
         "is a directory, not a checkpoint file; did you mean"),  # fmt: skip
    Case("corrupt-ckpt", ("{bad}/corrupt.pt", "--out", "{tmp}/x"), "truncated, corrupt"),
    Case("foreign-ckpt", ("{bad}/foreign.pt", "--out", "{tmp}/x"), "not an ebjdat checkpoint"),
    Case("no-model", ("{bad}/nomodel.pt", "--out", "{tmp}/x"), "holds no model"),
    Case("shapes-differ", ("{bad}/wider.pt", "--out", "{tmp}/x"),
         "does not fit the model: backbone.layer1.0.conv1.weight is [16, 16, 3, 3] in the "
         "checkpoint but [32, 16, 3, 3]"),  # fmt: skip
    Case("builder-not-importable", ("{bad}/nobuilder.pt", "--out", "{tmp}/x"),
         "its model_config is not usable (No module named 'no_such_module')"),  # fmt: skip
    Case("out-is-a-file", ("{ckpt}", "--out", "{outs}/afile"), "exists and is not a directory"),
    Case("out-below-a-file", ("{ckpt}", "--out", "{outs}/afile/x"), "is not a directory"),
    Case("out-not-empty", ("{ckpt}", "--out", "{outs}/full"),
         "--out {outs}/full: it is not empty (it holds notes.txt); use a new or empty directory, "
         "or pass --overwrite"),  # fmt: skip
    Case("out-holds-an-export", ("{ckpt}", "--out", "{outs}/export"),
         "it holds an export already; pass --overwrite to replace it"),  # fmt: skip
    Case("out-model-json-is-a-dir", ("{ckpt}", "--out", "{outs}/jsondir", "--overwrite"),
         "model.json exists and is not a file"),  # fmt: skip
    Case("no-out", ("{ckpt}",), "the following arguments are required: --out"),
    Case("no-ckpt", ("--out", "{tmp}/x"), "the following arguments are required: CKPT"),
    Case("unknown-flag", ("{ckpt}", "--out", "{tmp}/x", "--overwrit"),
         "unrecognized arguments: --overwrit"),  # fmt: skip
]


@pytest.mark.parametrize("case", MISUSE_CASES, ids=str)
def test_cli_misuse_is_one_line_exit_2(
    case: Case,
    places: dict[str, Path],
    wrn_ckpt: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fill = {
        "{tmp}": str(tmp_path),
        "{run}": str(places["run"]),
        "{ckpt}": str(wrn_ckpt),
        "{bad}": str(places["bad"]),
        "{outs}": str(places["outs"]),
    }

    def filled(text: str) -> str:
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    check_misuse(
        export_cli.run, [filled(a) for a in case.argv], filled(case.message),
        prog="ebjdat-export", capsys=capsys,
        watch=[places["run"], places["bad"], places["outs"], tmp_path],
    )  # fmt: skip


def test_cli_unwritable_out(wrn_ckpt: Path) -> None:
    """A directory the user cannot write into (root is demoted; see tests/misuse.py)."""
    base = Path(tempfile.mkdtemp(prefix="ebjdat-export-ro-", dir="/tmp"))
    try:
        base.chmod(0o755)
        shutil.copy2(wrn_ckpt, base / "last.pt")
        (base / "last.pt").chmod(0o644)
        (base / "ro").mkdir()
        before = tree_state(base)
        proc = run_read_only(
            base / "ro",
            [sys.executable, "-m", "ebjdat.cli.export", str(base / "last.pt"), "--out",
             str(base / "ro" / "export")],
        )  # fmt: skip
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1, proc.stderr
        assert lines[0] == (
            f"ebjdat-export: error: --out {base}/ro/export: cannot write in {base}/ro "
            "(Permission denied)"
        )
        assert tree_state(base) == before
    finally:
        shutil.rmtree(base)


# ---- broken exports ---------------------------------------------------------------------------


def _rehash(out: Path) -> None:
    """Makes model.json's digest match whatever model.safetensors now holds."""
    meta = json.loads((out / "model.json").read_text())
    meta["weights_sha256"] = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    (out / "model.json").write_text(json.dumps(meta))


def _edit_json(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(out: Path) -> None:
        meta = json.loads((out / "model.json").read_text())
        change(meta)
        (out / "model.json").write_text(json.dumps(meta))

    return edit


def _truncate(out: Path) -> None:
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 2])


def _garbage_weights(out: Path) -> None:
    (out / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    _rehash(out)


def _other_shapes(out: Path) -> None:
    (out / "model.safetensors").write_bytes(save(TinyNet(classes=4).state_dict()))
    _rehash(out)


BROKEN = [
    ("truncated-weights", _truncate,
     "model.safetensors does not match model.json (its sha256 differs"),  # fmt: skip
    ("garbage-weights", _garbage_weights, "model.safetensors is not a readable safetensors file"),
    ("missing-weights", lambda o: (o / "model.safetensors").unlink(),
     "model.safetensors does not exist"),  # fmt: skip
    ("missing-json", lambda o: (o / "model.json").unlink(),
     "is not an ebjdat export: it holds no model.json; write one with ebjdat-export"),  # fmt: skip
    ("json-not-json", lambda o: (o / "model.json").write_text('{"format": '),
     "model.json is not valid JSON (Expecting value at line 1)"),  # fmt: skip
    ("json-binary", lambda o: (o / "model.json").write_bytes(b"\xff\xfe\x00garbage"),
     "model.json is not UTF-8 text"),  # fmt: skip
    ("json-a-list", lambda o: (o / "model.json").write_text("[1, 2]"),
     "model.json is not an ebjdat export's model.json"),  # fmt: skip
    ("future-version", _edit_json(lambda m: m.__setitem__("version", 2)),
     "model.json has format version 2; this ebjdat reads version 1"),  # fmt: skip
    ("other-input-range", _edit_json(lambda m: m.__setitem__("input_range", [-1, 1])),
     "model.json: input_range is [-1, 1]; ebjdat models take [0, 1] images"),  # fmt: skip
    ("no-model-config", _edit_json(lambda m: m.pop("model_config")),
     "model.json: model_config is missing or not a table"),  # fmt: skip
    ("num-classes-disagree", _edit_json(lambda m: m.__setitem__("num_classes", 5)),
     "num_classes 5 disagrees with model_config.num_classes 10"),  # fmt: skip
    ("bad-input-shape", _edit_json(lambda m: m.__setitem__("input_shape", [1, 8])),
     "model.json: input_shape is [1, 8], not [C, H, W] or null"),  # fmt: skip
    ("no-digest", _edit_json(lambda m: m.pop("weights_sha256")),
     "weights_sha256 is None, not a sha256 hex digest"),  # fmt: skip
    ("builder-not-importable",
     _edit_json(lambda m: m["model_config"].__setitem__("builder", "no_such_module:Net")),
     "model.json: its model_config is not usable (No module named 'no_such_module')"),  # fmt: skip
    ("shapes-do-not-fit", _other_shapes,
     "model.safetensors does not fit the model: body.7.weight is [4, 32] in the export but "
     "[10, 32] in the model (and 1 more tensors)"),  # fmt: skip
]


@pytest.fixture(scope="module")
def good_export(user_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_checkpoint(user_ckpt, tmp_path_factory.mktemp("good") / "export")


@pytest.mark.parametrize(("name", "break_it", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_export_is_one_line_naming_the_file(
    name: str, break_it: Callable[[Path], None], message: str, good_export: Path, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    shutil.copytree(good_export, out)
    break_it(out)
    with pytest.raises(CheckpointError) as err:
        ebjdat.load_classifier(str(out))
    text = str(err.value)
    assert "\n" not in text and str(out) in text, text
    assert message in text, text


def test_a_run_directory_is_not_an_export(wrn_ckpt: Path) -> None:
    run = wrn_ckpt.parent.parent
    with pytest.raises(CheckpointError, match="holds no model.json; it looks like a run directory"):
        ebjdat.load_classifier(str(run))
