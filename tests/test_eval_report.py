"""ebjdat-eval and ebjdat-sample end to end on a tiny digits checkpoint: report.json keys and
types (metrics not run are absent), the paper protocol labels itself, the HTML is one
self-contained page that Chromium renders, the sampler writes its files, and CLI errors are one
line with exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ebjdat import checkpoint
from ebjdat.cli import eval as eval_cli
from ebjdat.cli import sample as sample_cli
from ebjdat.train import config
from ebjdat.train.trainer import Trainer

TINY = [
    "model.arch=wrn-10-1",
    "sgld.buffer_size=64",
    "sgld.steps=2",
    "adv.steps=1",
    "train.eval_limit=32",
    "train.eval_steps=2",
    "data.batch_size=32",
    "data.labelled_batch_size=32",
    "train.sample_grid=0",
    "train.epochs=0",
]
FAST = ["--no-progress", "--device", "cpu", "--seed", "0"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An (untrained) digits checkpoint with a replay buffer, and the shared extractor cache."""
    cache = tmp_path_factory.getbasetemp() / "ebjdat-cache"
    old = os.environ.get("EBJDAT_CACHE")
    os.environ["EBJDAT_CACHE"] = str(cache)
    run = tmp_path_factory.mktemp("run")
    cfg = config.load_preset("digits")
    for assignment in TINY:
        config.override(cfg, assignment)
    torch.manual_seed(0)
    Trainer(config=cfg.validate(), out_dir=run, progress_bar=False, log=lambda m: None).fit()
    yield run / "checkpoints" / "last.pt"
    if old is None:
        os.environ.pop("EBJDAT_CACHE", None)
    else:
        os.environ["EBJDAT_CACHE"] = old


@pytest.fixture(scope="module")
def standard(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval")
    code = eval_cli.run(
        [str(ckpt), "--out", str(out), "--limit", "32", "--attacks", "pgd20", "--gen-n", "32",
         "--gen-steps", "3", *FAST]
    )  # fmt: skip
    assert code == 0
    return out


def test_report_json_keys_and_types(standard: Path) -> None:
    report = json.loads((standard / "report.json").read_text())
    floats = ["clean_acc", "pgd20_acc", "eps", "eps_requested", "ece", "ood_auroc", "fid_digits",
              "buffer_fid_digits", "energy_gap_clean_adv", "energy_gap_clean_gen",
              "energy_mean_clean", "energy_mean_adversarial", "energy_mean_generated"]  # fmt: skip
    for key in floats:
        assert isinstance(report[key], float), (key, report.get(key))
    for key in ("clean_acc", "pgd20_acc", "ood_auroc"):
        assert 0.0 <= report[key] <= 1.0
    assert report["pgd20_acc"] <= report["clean_acc"]
    for key in ("clean_acc", "pgd20_acc"):  # each accuracy with its 95% Wilson interval
        low, high = report[f"{key}_ci95"]
        assert isinstance(low, float) and isinstance(high, float)
        assert 0.0 <= low <= report[key] <= high <= 1.0, key
    assert report["n_examples"] == 32 and isinstance(report["n_examples"], int)
    assert report["protocol"] == "standard" and report["norm"] == "linf"
    assert report["eps"] == pytest.approx(0.1)  # the digits default, pixel units
    assert report["dataset"] == "digits" and report["preset"] == "digits"
    assert report["checkpoint"].endswith("last.pt")
    assert report["weights"] == "exponential moving average, decay 0.99"  # the digits preset's
    assert isinstance(report["warnings"], list) and all(
        isinstance(w, str) for w in report["warnings"]
    )
    # Not run, so absent (never 0): AutoAttack; Inception metrics are not used for digits.
    for key in ("autoattack_acc", "autoattack_acc_ci95", "autoattack_engine", "fid",
                "inception_score", "kid"):  # fmt: skip
        assert key not in report
    ood = report["ood"]
    assert set(ood) >= {"inverted", "uniform_noise"}
    assert all(set(v) == {"log_px", "max_softmax", "grad_norm"} for v in ood.values())
    mean_log_px = sum(v["log_px"] for v in ood.values()) / len(ood)
    assert report["ood_auroc"] == pytest.approx(mean_log_px)
    assert report["settings"]["generation"]["steps"] == 3
    for name in ("samples.png", "energy_histogram.png", "reliability.png", "report.html"):
        assert (standard / name).stat().st_size > 0, name


def test_generation_baselines_and_sample_count_warning(ckpt: Path, standard: Path) -> None:
    """fid_digits stands beside its init-only baseline (recomputed here from the same starts),
    the real floor (as many held-out digits as samples) and the uniform-noise chains."""
    from PIL import Image

    from ebjdat.data import load_split_tensors
    from ebjdat.eval.generation import fid_digits
    from ebjdat.models.jem import JEM
    from ebjdat.sampling import fit_class_gaussians

    report = json.loads((standard / "report.json").read_text())
    for key in ("fid_digits_init", "fid_digits_real", "fid_digits_uniform",
                "fid_digits_uniform_init"):  # fmt: skip
        assert isinstance(report[key], float), key
    train, ytrain = load_split_tensors("digits", "train")
    test, _ = load_split_tensors("digits", "test")
    assert report["fid_digits_real"] == pytest.approx(fid_digits(test[:32], train), rel=1e-9)
    # The preset starts from the class Gaussians; one batch, generator seed 0 * 1000 + 3.
    gauss = fit_class_gaussians(train, ytrain.long(), 10)
    z0 = gauss.sample(32, classes=torch.arange(32) % 10, generator=torch.Generator().manual_seed(3))
    starts = JEM.from_internal(z0.float()).clamp(0, 1)
    assert report["fid_digits_init"] == pytest.approx(fid_digits(starts, train), rel=1e-6)
    uniform = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    assert report["fid_digits_uniform_init"] == pytest.approx(fid_digits(uniform, train), rel=1e-6)
    assert any("fewer than 10,000" in w for w in report["warnings"])
    assert list(report).index("fid_digits_init") == list(report).index("fid_digits") + 1
    page = (standard / "report.html").read_text()
    assert "id='generation'" in page and "init-only column" in page and "fewer than 10,000" in page
    for name in ("samples.png", "uniform_samples.png", "buffer_samples.png"):
        assert Image.open(standard / name).size[0] >= 400, name


def test_html_is_self_contained(standard: Path) -> None:
    page = (standard / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") >= 3
    for needle in ("id='metrics'", "Standard protocol", "fig-energy", "fig-reliability",
                   "fig-samples"):  # fmt: skip
        assert needle in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from outside
    assert "95% Wilson interval" in page and page.count("<span class='ci'>") >= 4


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)),
                None)  # fmt: skip


def test_html_renders_in_headless_chromium(standard: Path, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    shot = tmp_path / "page.png"
    url = (standard / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    result = subprocess.run(
        [browser, *flags, "--window-size=1100,1600", f"--screenshot={shot}", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    from PIL import Image

    img = Image.open(shot).convert("L")
    assert img.size == (1100, 1600)
    lo, hi = img.getextrema()
    assert hi - lo > 100  # text and figures were drawn, not a blank page
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    assert "Clean accuracy" in dom.stdout and "<img" in dom.stdout


@pytest.mark.parametrize("engine", ["original", "torchattacks"])
def test_autoattack_engine_in_the_report(ckpt: Path, tmp_path: Path, engine: str) -> None:
    """The standard protocol runs the original AutoAttack unless --aa-impl says otherwise; the
    report names the engine and gives the interval. A large eps breaks every example with the
    first attack, which keeps the run short (the Square attack then has nothing to do)."""
    pytest.importorskip("pyautoattack" if engine == "original" else "torchattacks")
    flags = [] if engine == "original" else ["--aa-impl", engine]
    code = eval_cli.run(
        [str(ckpt), "--out", str(tmp_path), "--limit", "16", "--attacks", "pgd5", "autoattack",
         "--eps", "0.5", "--no-generation", "--no-ood", "--no-sanity", *flags, *FAST]
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["autoattack_engine"] == engine and report["autoattack_version"] == "standard"
    assert report["autoattack_acc"] <= report["pgd5_acc"] <= report["clean_acc"]
    low, high = report["autoattack_acc_ci95"]
    assert 0.0 <= low <= report["autoattack_acc"] <= high <= 1.0
    assert isinstance(report["autoattack_checks"], list)
    keys = list(report)
    assert keys.index("autoattack_acc_ci95") == keys.index("autoattack_acc") + 1
    page = (tmp_path / "report.html").read_text()
    assert "AutoAttack engine" in page and f">{engine}<" in page


def test_paper_protocol_labels_itself(ckpt: Path, tmp_path: Path) -> None:
    code = eval_cli.run(
        [str(ckpt), "--out", str(tmp_path), "--protocol", "paper", "--limit", "16",
         "--attacks", "pgd20", "--no-generation", "--no-ood", "--no-sanity", *FAST]
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["protocol"] == "paper"
    assert "paper protocol" in report["protocol_note"].lower()
    assert "not" in report["protocol_note"].lower()  # "NOT a standard robustness evaluation"
    assert report["eps"] == pytest.approx(report["eps_requested"] / 2)
    for key in ("fid_digits", "ood_auroc", "energy_gap_clean_gen", "autoattack_acc"):
        assert key not in report
    assert "energy_gap_clean_adv" in report
    page = (tmp_path / "report.html").read_text()
    assert "PAPER PROTOCOL — NON-STANDARD" in page and "data-protocol='paper'" in page


def test_sample_cli_writes_grid_json_npz(ckpt: Path, tmp_path: Path) -> None:
    import numpy as np

    out = tmp_path / "s"
    code = sample_cli.run(
        [str(ckpt), "--out", str(out), "--n", "12", "--steps", "2", "--start", "class", "--npz",
         "--grad-clip", "none", *FAST]
    )  # fmt: skip
    assert code == 0
    meta = json.loads((out / "samples.json").read_text())
    assert meta["n"] == 12 and meta["start"] == "class" and meta["steps"] == 2
    assert meta["grad_clip"] is None and meta["step_size"] == 4.0  # the preset's sgld.step_size
    assert meta["grid_layout"] == "one class per row" and meta["grid_columns"] == 2
    from PIL import Image

    assert Image.open(out / "samples.png").size[0] >= 400
    with np.load(out / "samples.npz") as data:
        assert data["samples"].shape == (12, 1, 8, 8)
        assert 0 <= data["samples"].min() and data["samples"].max() <= 1
        assert list(data["start_labels"]) == [i % 10 for i in range(12)]
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG"


def test_nan_weights_report_what_can_be_computed(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint whose weights are NaN is evaluated, not crashed on: the metrics that need
    finite outputs are absent with a note saying why (never 0, never NaN), the model-free
    fid_digits of the real test split is still there, and the report opens with a warning."""
    state = checkpoint.load(ckpt)
    for value in state["model"].values():
        if value.is_floating_point():
            value.fill_(float("nan"))
    broken = tmp_path / "nan.pt"
    checkpoint.save(broken, {k: v for k, v in state.items() if k not in ("format", "version")})
    out = tmp_path / "eval"
    code = eval_cli.run(
        [str(broken), "--out", str(out), "--limit", "16", "--attacks", "pgd5", "--gen-n", "8",
         "--gen-steps", "1", "--no-sanity", *FAST]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "ebjdat-eval: warning: the checkpoint's weights are not finite" in err

    def no_nan(constant: str) -> float:
        raise AssertionError(f"report.json holds {constant}")

    report = json.loads((out / "report.json").read_text(), parse_constant=no_nan)
    assert report["weights_finite"] is False
    assert report["warnings"][0].startswith("the checkpoint's weights are not finite")
    for key in ("ood_auroc", "ood", "ece", "fid_digits", "buffer_fid_digits",
                "energy_mean_clean", "energy_gap_clean_adv", "energy_gap_clean_gen"):  # fmt: skip
        assert key not in report, key
    assert report["clean_acc"] == 0.0 and report["pgd5_acc"] == 0.0  # NaN logits predict nothing
    assert report["fid_digits_test_split"] > 0
    notes = report["notes"]
    assert any(
        n.startswith("OOD AUROC not computable: the model's scores are not finite") for n in notes
    )
    for needle in ("ECE not computable", "fid_digits not computable", "buffer FID not computable",
                   "energy histogram not drawn"):  # fmt: skip
        assert any(needle in n for n in notes), needle
    assert not (out / "energy_histogram.png").exists()
    page = (out / "report.html").read_text()
    assert page.index("weights are not finite") < page.index("id='metrics'")


def _corrupt(tmp: Path) -> Path:
    path = tmp / "corrupt.pt"
    path.write_bytes(b"not a checkpoint at all")
    return path


def _cifar_ckpt(ckpt: Path, tmp: Path) -> Path:
    state = checkpoint.load(ckpt)
    state["config"]["data"]["dataset"] = "cifar10"
    path = tmp / "cifar.pt"
    checkpoint.save(path, {k: v for k, v in state.items() if k not in ("format", "version")})
    return path


@pytest.mark.parametrize(
    ("cli", "args", "message"),
    [
        ("eval", ["{tmp}/missing.pt"], "does not exist"),
        ("eval", ["{corrupt}"], "corrupt"),
        ("eval", ["{ckpt}", "--attacks", "fgsm"], "unknown attack 'fgsm'"),
        ("eval", ["{ckpt}", "--limit", "0"], "--limit must be >= 1"),
        ("eval", ["{cifar}", "--data-root", "{tmp}/nodata"], "CIFAR-10 not found"),
        ("sample", ["{tmp}/missing.pt"], "does not exist"),
        ("sample", ["{ckpt}", "--n", "0"], "--n must be >= 1"),
    ],
)
def test_cli_errors_are_one_line_exit_2(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], cli: str, args: list[str],
    message: str,
) -> None:  # fmt: skip
    subs = {"{tmp}": str(tmp_path), "{ckpt}": str(ckpt)}
    if any("{corrupt}" in a for a in args):
        subs["{corrupt}"] = str(_corrupt(tmp_path))
    if any("{cifar}" in a for a in args):
        subs["{cifar}"] = str(_cifar_ckpt(ckpt, tmp_path))
    for key, value in subs.items():
        args = [a.replace(key, value) for a in args]
    module = eval_cli if cli == "eval" else sample_cli
    code = module.run([*args, "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"ebjdat-{cli}: error:"), err
    assert message in err[0]
