"""ebjdat-eval with several checkpoints: one comparison row per checkpoint equal to that
checkpoint's own report.json, the sanity checks as one table, the training curves read from each
run's metrics.jsonl, bad inputs refused in one line before anything is written, and the
digits-table script as a call of the comparison. Tiny runs and the cheapest flags throughout."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import torch
from helpers import train_smoke_run
from misuse import tree_state

from ebjdat.cli import eval as eval_cli
from ebjdat.eval.compare import build_comparison, flat_sanity, read_curves, row_names
from ebjdat.eval.report import _plain

CHEAP = ["--limit", "16", "--attacks", "pgd20", "--no-sanity", "--gen-n", "16", "--gen-steps",
         "2", "--no-gen-uniform", "--no-progress", "--device", "cpu"]  # fmt: skip
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """digits (1 epoch), digits-pgd-at (2 epochs), and a copy of the first outside any run
    directory (so without metrics.jsonl)."""
    base = tmp_path_factory.mktemp("runs")
    a = train_smoke_run(base / "digits", "digits", 1)
    b = train_smoke_run(base / "digits-pgd-at", "digits-pgd-at", 2)
    loose = base / "loose" / "model.pt"
    loose.parent.mkdir()
    shutil.copy(a, loose)
    return [a, b, loose]


@pytest.fixture(scope="module")
def compared(ckpts: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compare") / "cmp"
    assert eval_cli.run([*map(str, ckpts), "--out", str(out), *CHEAP]) == 0
    return out


def test_one_row_per_checkpoint_equal_to_its_report(compared: Path, ckpts: list[Path]) -> None:
    comparison = json.loads((compared / "compare.json").read_text())
    rows = comparison["rows"]
    # Run names label the rows; the loose copy is named by its preset, and the two "digits"
    # are told apart by their file names.
    assert [r["name"] for r in rows] == ["digits-last", "digits-pgd-at", "digits-model"]
    assert [r["checkpoint"] for r in rows] == [str(c) for c in ckpts]
    keys = {c["key"] for c in comparison["columns"]}
    assert keys >= {"clean_acc", "pgd20_acc", "fid_digits", "fid_digits_init", "fid_digits_real",
                    "ece", "ood_auroc", "energy_gap_clean_adv"}  # fmt: skip
    for row in rows:
        report = json.loads((compared / row["name"] / "report.json").read_text())
        assert (compared / row["name"] / "report.html").is_file()
        assert row["report"] == f"{row['name']}/report.json"
        for key in keys:
            for k in (key, f"{key}_ci95"):
                assert row.get(k) == report.get(k), (row["name"], k)
        assert row["warnings"] == report["warnings"]
        assert "clean_acc_ci95" in row and "pgd20_acc_ci95" in row
    # The settings are recorded once, as the flags gave them.
    s = comparison["settings"]
    assert s["limit"] == 16 and s["attacks"] == ["pgd20"] and s["gen_n"] == 16
    assert s["gen_sampler"]["steps"] == 2 and s["sanity"] is False
    assert not any("differ" in w for w in comparison["warnings"])
    page = (compared / "compare.html").read_text()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert page.count("<tr><td><a href=") == 3
    assert "no sanity checks were run" in page  # --no-sanity: said so, no empty table


def test_curves_come_from_metrics_jsonl(compared: Path, ckpts: list[Path]) -> None:
    comparison = json.loads((compared / "compare.json").read_text())
    curves = comparison["curves"]
    for name, ckpt in (("digits-last", ckpts[0]), ("digits-pgd-at", ckpts[1])):
        lines = [json.loads(x) for x in (ckpt.parent.parent / "metrics.jsonl").read_text()
                 .splitlines()]  # fmt: skip
        assert curves["val_acc"][name] == [[r["epoch"], r["val_acc"]] for r in lines]
    assert len(curves["val_acc"]["digits-pgd-at"]) == 2
    assert "digits-model" not in curves["val_acc"]  # no run directory, so no curves ...
    assert any(n.startswith("digits-model: no training curves") for n in comparison["notes"])
    assert "epoch" not in curves and "time_s" not in curves
    page = (compared / "compare.html").read_text()
    assert page.count("<svg") == len(curves)
    assert "id='curve-val_acc'" in page


def test_read_curves_skips_what_it_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"epoch": 1, "val_acc": 0.5, "x": NaN}\nnot json\n{"epoch": 2, "val_acc": 0.6}\n'
    )
    curves, notes = read_curves(path)
    assert curves == {"val_acc": [[1, 0.5], [2, 0.6]]}
    assert notes == [f"{path} line 2 is not JSON: skipped"]
    assert read_curves(tmp_path / "none.jsonl")[0] == {}


def test_sanity_table_has_the_reports_checks() -> None:
    """The sanity block of two reports (from the real sanity_report on a toy model) becomes one
    row per check and one column per checkpoint, values unchanged."""
    from ebjdat.eval.compare import render_comparison
    from ebjdat.eval.robustness import sanity_report

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(12, 1, 4, 4), torch.randint(0, 3, (12,))
    reports = {}
    for name, eps in (("a", 0.1), ("b", 0.1)):
        sanity = sanity_report(model, x, y, eps=eps, norm="linf", steps=2, max_examples=12)
        sanity.pop("warnings")
        reports[name] = _plain({"clean_acc": 0.5, "sanity": sanity, "warnings": [], "notes": []})
    entries = [{"name": n, "checkpoint": f"{n}.pt", "report": r} for n, r in reports.items()]
    comparison = _plain(build_comparison(entries, {"protocol": "standard"}))
    flat = flat_sanity(reports["a"]["sanity"])
    assert set(comparison["sanity"]) == set(flat)
    assert "pgd_acc_by_eps[0.05]" in flat and "pgd_acc_by_eps[0.05]_ci95" in flat
    for check, by_row in comparison["sanity"].items():
        assert by_row == {n: flat_sanity(r["sanity"])[check] for n, r in reports.items()}
    page = render_comparison(comparison)
    table = page.split("id='sanity'")[1].split("</table>")[0]
    checks = [c for c in flat if not c.endswith("_ci95")]
    assert table.count("<tr><td><code>") == len(checks)
    assert "<th>a</th><th>b</th>" in table
    assert '"sanity"' not in page and "{" not in table  # a table, not a JSON dump


def test_row_names_are_unique(tmp_path: Path) -> None:
    run = tmp_path / "r1" / "checkpoints"
    paths = [run / "best.pt", run / "last.pt", tmp_path / "x.pt", tmp_path / "y" / "x.pt"]
    assert row_names(paths, ["digits"] * 4) == ["r1-best", "r1-last", "digits-x", "digits-x-2"]
    assert row_names([tmp_path / "a.pt"], ["compare.json"]) == ["compare.json-2"]


def _failure(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert eval_cli.run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ebjdat-eval: error: ")
    return err


def test_bad_inputs_one_line_exit_2_nothing_written(
    ckpts: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = str(ckpts[0]), str(ckpts[1])
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = tmp_path / "out"
    watched = [tmp_path, ckpts[0].parent.parent, ckpts[1].parent.parent]
    before = [tree_state(w) for w in watched]
    cases = [  # (checkpoints, the error's words, flags after the cheap ones)
        ([a, str(tmp_path / "missing.pt")], "missing.pt does not exist", []),
        ([a, b, a], "is given twice", []),
        ([a, str(junk)], str(junk), []),
        ([a, str(ckpts[0].parent.parent)], "is a directory", []),
        ([a, b], "--limit", ["--limit", "0"]),
    ]
    for paths, words, flags in cases:
        err = _failure([*paths, "--out", str(out), *CHEAP, *flags], capsys)
        assert words in err, err
    assert "--out is required" in _failure([a, b, *CHEAP], capsys)
    assert "--out" in _failure([a, b, "--out", str(blocker / "sub"), *CHEAP], capsys)
    assert not out.exists()
    assert [tree_state(w) for w in watched] == before


def test_single_checkpoint_output_unchanged(
    ckpts: list[Path], compared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One checkpoint: the usual files in --out, no comparison, the usual summary, and the same
    numbers as that checkpoint's row of the comparison."""
    out = tmp_path / "one"
    assert eval_cli.run([str(ckpts[1]), "--out", str(out), *CHEAP]) == 0
    stdout = capsys.readouterr().out.splitlines()
    assert stdout[-1] == f"wrote {out / 'report.json'} and {out / 'report.html'}"
    assert stdout[0].startswith("clean_acc ")
    assert not (out / "compare.json").exists() and not (out / "compare.html").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in (compared / "digits-pgd-at").iterdir()
    )
    mine = json.loads((out / "report.json").read_text())
    theirs = json.loads((compared / "digits-pgd-at" / "report.json").read_text())
    for key in ("clean_acc", "pgd20_acc", "pgd20_acc_ci95", "ece", "fid_digits", "ood_auroc"):
        assert mine[key] == theirs[key], key


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("digits_table", ROOT / "scripts" /
                                                  "digits_table.py")  # fmt: skip
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_table_script_calls_the_comparison(
    compared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Trains only the presets whose run is missing, then makes one ebjdat-eval call with the
    three best checkpoints; prints the table from compare.json."""
    script = _script()
    runs = tmp_path / "runs"
    for preset in script.PRESETS[:2]:  # two runs exist already; the third must be trained
        (runs / preset / "checkpoints").mkdir(parents=True)
        (runs / preset / "checkpoints" / "best.pt").write_bytes(b"")
    trained: list[str] = []
    calls: list[list[str]] = []

    def fake_train(preset: str, run: Path) -> None:
        trained.append(preset)
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "best.pt").write_bytes(b"")

    def fake_eval(argv: list[str]) -> int:
        calls.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        shutil.copy(compared / "compare.json", out / "compare.json")
        return 0

    monkeypatch.setattr(script, "train", fake_train)
    monkeypatch.setattr(script.eval_cli, "run", fake_eval)
    assert script.main(["--runs", str(runs), "--limit", "200", "--attacks", "pgd20"]) == 0
    assert trained == [script.PRESETS[2]]
    (argv,) = calls
    assert argv[:3] == [str(runs / p / "checkpoints" / "best.pt") for p in script.PRESETS]
    assert argv[argv.index("--out") + 1] == str(runs / "compare")
    assert argv[argv.index("--eps") + 1] == "0.1"
    assert argv[-4:] == ["--limit", "200", "--attacks", "pgd20"]
    table = capsys.readouterr().out
    assert table.count("\n| digits") == 3 and "| Clean |" in table
    assert (runs / "compare" / "table.md").read_text() in table
    with pytest.raises(SystemExit):  # --no-train with a run missing: one line, nothing run
        script.main(["--runs", str(tmp_path / "empty"), "--no-train"])
    assert len(calls) == 1
