"""The digits comparison table: EB-JDAT (`digits`), JEM (`digits-jem`) and PGD-AT
(`digits-pgd-at`), side by side on the TEST split.

Trains each preset whose run (RUNS/PRESET/checkpoints/best.pt) is missing (--retrain: all of
them again; --no-train: none), then compares the three best checkpoints with one `ebjdat-eval`
call into RUNS/compare/ (compare.json, compare.html, one full report per preset), and prints the
table as markdown (also RUNS/compare/table.md). Any other flag goes to ebjdat-eval unchanged.

    python scripts/digits_table.py --runs runs/digits-table
    python scripts/digits_table.py --no-train --limit 200 --attacks pgd20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from ebjdat.cli import eval as eval_cli

PRESETS = ("digits", "digits-jem", "digits-pgd-at")


def checkpoint(runs: Path, preset: str) -> Path:
    return runs / preset / "checkpoints" / "best.pt"


def train(preset: str, run: Path) -> None:
    """A full training run of the preset (the slow part; skipped where the run exists)."""
    subprocess.run([sys.executable, "-m", "ebjdat.cli.train", "--preset", preset,
                    "--out", str(run), "--overwrite"], check=True)  # fmt: skip


def _pct(row: dict[str, Any], key: str) -> str:
    if not isinstance(row.get(key), (int, float)):
        return "—"
    ci = row.get(f"{key}_ci95")
    tail = f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if isinstance(ci, list) else ""
    return f"{100 * row[key]:.1f}{tail}"


def _num(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.3g}" if isinstance(row.get(key), (int, float)) else "—"


def markdown(comparison: dict[str, Any]) -> str:
    """The comparison's headline columns as a markdown table (accuracies in %, 95% intervals)."""
    eps = next((r["eps"] for r in comparison["rows"] if "eps" in r), None)
    lines = [
        f"| model | Clean | PGD-20 @ eps {eps} | AutoAttack | fid_digits (init / real) | ECE "
        "| OOD AUROC |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in comparison["rows"]:
        if "error" in row:
            lines.append(f"| {row['name']} | failed: {row['error']} |||||")
            continue
        gen = (f"{_num(row, 'fid_digits')} ({_num(row, 'fid_digits_init')} / "
               f"{_num(row, 'fid_digits_real')})")  # fmt: skip
        lines.append(
            f"| {row['name']} | {_pct(row, 'clean_acc')} | {_pct(row, 'pgd20_acc')} | "
            f"{_pct(row, 'autoattack_acc')} | {gen} | {_pct(row, 'ece')} | "
            f"{_num(row, 'ood_auroc')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--runs", default="runs/digits-table", help="directory of the 3 runs")
    parser.add_argument("--no-train", action="store_true", help="evaluate existing runs only")
    parser.add_argument("--retrain", action="store_true", help="train all three again")
    parser.add_argument("--eps", type=float, default=0.1, help="L-inf eps, [0, 1] pixels")
    args, eval_args = parser.parse_known_args(argv)
    runs = Path(args.runs)
    if args.no_train and args.retrain:
        parser.error("--no-train and --retrain contradict each other")
    missing = [p for p in PRESETS if not checkpoint(runs, p).is_file()]
    if args.no_train and missing:
        first = checkpoint(runs, missing[0])
        parser.error(f"--no-train: no run for {', '.join(missing)} ({first} is missing)")
    for preset in PRESETS if args.retrain else missing:
        train(preset, runs / preset)
    out = runs / "compare"
    code = eval_cli.run([*(str(checkpoint(runs, p)) for p in PRESETS), "--out", str(out),
                         "--eps", str(args.eps), *eval_args])  # fmt: skip
    if not (out / "compare.json").is_file():  # a usage error: nothing was evaluated
        return code
    table = markdown(json.loads((out / "compare.json").read_text()))
    (out / "table.md").write_text(table)
    print(f"\n{table}", end="")
    return code  # 1 when a row failed: the table says which


if __name__ == "__main__":
    raise SystemExit(main())
