"""Several checkpoints evaluated under one set of settings and set side by side: DIR/<name>/ holds
each checkpoint's usual report, DIR/compare.json and DIR/compare.html one row per checkpoint.

A paper's table compares methods on the same test examples, attacks and sample counts, so the
settings are shared by construction and recorded once. Each checkpoint's report is written as
soon as it is done, so a failure later in the list loses nothing; the row of a checkpoint that
failed says why. The numbers in a row are read back from that checkpoint's own report.json, so
the comparison can never disagree with the reports it links to.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .evaluation import EvalSettings

_CI = "_ci95"
_PGD = re.compile(r"^pgd(\d+)_acc$")

# The comparison's columns: (key, header, kind). pgdK_acc other than PGD-20 join the
# robustness group when a report has them.
ROBUSTNESS = [
    ("clean_acc", "Clean", "pct"),
    ("pgd20_acc", "PGD-20", "pct"),
    ("autoattack_acc", "AutoAttack", "pct"),
]
GENERATION = [
    ("fid_digits", "fid_digits", "num"),
    ("fid_digits_init", "fid_digits init", "num"),
    ("fid_digits_real", "fid_digits real", "num"),
    ("fid", "FID", "num"),
    ("fid_init", "FID init", "num"),
    ("fid_real", "FID real", "num"),
    ("inception_score", "IS", "num"),
    ("inception_score_init", "IS init", "num"),
    ("inception_score_real", "IS real", "num"),
    ("kid", "KID", "num"),
    ("kid_init", "KID init", "num"),
    ("kid_real", "KID real", "num"),
]
OTHER = [
    ("ece", "ECE", "pct"),
    ("ood_auroc", "OOD AUROC", "num"),
    ("energy_gap_clean_adv", "E(adv) − E(clean)", "num"),
    ("energy_gap_clean_gen", "E(gen) − E(clean)", "num"),
]
# What each row carries besides its metrics, from the report.
IDENTITY = ["preset", "dataset", "epoch", "protocol", "norm", "eps", "n_examples",
            "autoattack_engine", "autoattack_version", "n_generated"]  # fmt: skip
# Per-row values that must agree for the rows to be comparable.
MUST_AGREE = ["dataset", "protocol", "norm", "eps", "n_examples", "n_generated"]
# metrics.jsonl columns drawn first; the rest follow in name order.
CURVES_FIRST = ["val_acc", "val_robust_acc", "train_loss", "train_acc", "train_acc_adv",
                "train_ce", "train_px", "train_e_pos", "train_e_q", "train_e_adv"]  # fmt: skip
_NOT_CURVES = {"epoch", "iteration", "time_s"}
_RESERVED = {"compare.json", "compare.html"}
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22"]  # fmt: skip


# ---- inputs ---------------------------------------------------------------------------------


def run_name(path: str | Path, preset: str) -> str:
    """A checkpoint's label: its run directory's name for RUN/checkpoints/X.pt, else its preset."""
    parent = Path(path).resolve().parent
    return parent.parent.name if parent.name == "checkpoints" else preset


def row_names(paths: Sequence[str | Path], presets: Sequence[str]) -> list[str]:
    """Unique, directory-safe labels: the run (or preset) name; where two share one, the
    checkpoint's file stem is added (best, last), then a counter."""
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", run_name(p, s)).lstrip(".") or "checkpoint"
            for p, s in zip(paths, presets, strict=True)]  # fmt: skip
    named = [
        n if safe.count(n) == 1 else f"{n}-{re.sub(r'[^A-Za-z0-9._-]+', '_', Path(p).stem)}"
        for n, p in zip(safe, paths, strict=True)
    ]
    taken: set[str] = set(_RESERVED)
    names = []
    for n in named:
        name, k = n, 1
        while name in taken:
            k += 1
            name = f"{n}-{k}"
        taken.add(name)
        names.append(name)
    return names


def check_checkpoints(paths: Sequence[str | Path]) -> list[str]:
    """Every path names a distinct, loadable ebjdat checkpoint (CheckpointError naming the path
    otherwise, before anything is evaluated); returns their labels (see row_names)."""
    from ebjdat.checkpoint import CheckpointError

    from .checkpoints import load_checkpoint

    if not paths:
        raise CheckpointError("no checkpoint to compare")
    seen: dict[Path, str] = {}
    for p in paths:
        key = Path(p).resolve()
        if key in seen:
            raise CheckpointError(f"checkpoint {p} is given twice (also as {seen[key]})")
        seen[key] = str(p)
    presets = []
    for p in paths:
        _, _, cfg = load_checkpoint(p, torch.device("cpu"))
        presets.append(str(cfg.preset))
    return row_names(paths, presets)


def metrics_path(checkpoint: str | Path) -> Path:
    """RUN/metrics.jsonl for RUN/checkpoints/X.pt, else metrics.jsonl beside the checkpoint."""
    parent = Path(checkpoint).resolve().parent
    return (parent.parent if parent.name == "checkpoints" else parent) / "metrics.jsonl"


def read_curves(path: Path) -> tuple[dict[str, list[list[float]]], list[str]]:
    """{column: [[epoch, value], ...]} of a metrics.jsonl, finite numbers only, and notes on
    what could not be read (a missing file is a note, never an error)."""
    if not path.is_file():
        return {}, [f"no training curves: {path} does not exist"]
    curves: dict[str, list[list[float]]] = {}
    notes: list[str] = []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            notes.append(f"{path} line {i} is not JSON: skipped")
            continue
        if not isinstance(row, dict):
            continue
        x = row.get("epoch", i)
        if not _is_number(x):
            continue
        for key, value in row.items():
            if key not in _NOT_CURVES and _is_number(value) and math.isfinite(value):
                curves.setdefault(key, []).append([x, value])
    return curves, notes


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---- the comparison -------------------------------------------------------------------------


def settings_record(settings: EvalSettings) -> dict[str, Any]:
    """The shared evaluation settings as plain values (where the reports go and progress bars
    say nothing about the numbers, so they are left out)."""
    from .report import _plain

    record: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        if f.name in ("out", "progress"):
            continue
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            value = {g.name: getattr(value, g.name) for g in dataclasses.fields(value)}
            value = {k: getattr(v, "value", v) if not _is_number(v) else v
                     for k, v in value.items()}  # fmt: skip
        record[f.name] = value
    return _plain(record)


def metric_keys(reports: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """The comparison's columns that at least one report holds, in table order."""
    pgd = sorted(
        {k for r in reports for k in r if _PGD.match(k) and k != "pgd20_acc"},
        key=lambda k: int(_PGD.match(k).group(1)),  # type: ignore[union-attr]
    )
    robustness = ROBUSTNESS[:2] + [(k, f"PGD-{k[3:-4]}", "pct") for k in pgd] + ROBUSTNESS[2:]
    return [c for c in robustness + GENERATION + OTHER if any(c[0] in r for r in reports)]


def flat_sanity(sanity: Mapping[str, Any]) -> dict[str, Any]:
    """The report's sanity block as {check: value}: a per-eps table becomes one check per eps
    ("pgd_acc_by_eps[0.05]"), and each interval sits at "<check>_ci95"."""
    flat: dict[str, Any] = {}
    for key, value in sanity.items():
        ci = key.endswith(_CI)
        base = key[: -len(_CI)] if ci else key
        if isinstance(value, Mapping):
            for sub, v in value.items():
                flat[f"{base}[{sub}]{_CI if ci else ''}"] = v
        else:
            flat[key] = value
    return flat


def build_comparison(
    entries: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """The comparison of evaluated checkpoints. Each entry holds name, checkpoint and either
    report (the report.json as written) or error; curves and curve_notes come from its run."""
    import ebjdat

    done = [e for e in entries if e.get("report") is not None]
    columns = metric_keys([e["report"] for e in done])
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    notes: list[str] = []
    sanity: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, list[list[float]]]] = {}
    for e in entries:
        name = e["name"]
        row: dict[str, Any] = {"name": name, "checkpoint": str(e["checkpoint"])}
        report = e.get("report")
        if report is None:
            row["error"] = str(e.get("error", "not evaluated"))
            warnings.append(f"{name}: evaluation failed: {row['error']}")
            rows.append(row)
            continue
        row["report"] = f"{name}/report.json"
        row["html"] = f"{name}/report.html"
        row.update({k: report[k] for k in IDENTITY if k in report})
        for key, _, _ in columns:
            for k in (key, f"{key}{_CI}"):
                if k in report:
                    row[k] = report[k]
        row["warnings"] = list(report.get("warnings") or [])
        row["notes"] = list(report.get("notes") or [])
        row["metrics_jsonl"] = e.get("metrics_jsonl")
        notes.extend(f"{name}: {n}" for n in e.get("curve_notes") or [])
        for check, value in flat_sanity(report.get("sanity") or {}).items():
            sanity.setdefault(check, {})[name] = value
        for metric, points in (e.get("curves") or {}).items():
            curves.setdefault(metric, {})[name] = points
        rows.append(row)
    for key in MUST_AGREE:
        values = {json.dumps(r.get(key)) for r in rows if "error" not in r}
        if len(values) > 1:
            each = ", ".join(f"{r['name']} {r.get(key)}" for r in rows if "error" not in r)
            warnings.append(f"the rows differ in {key} ({each}): not directly comparable")
    order = [k for k in CURVES_FIRST if k in curves] + sorted(k for k in curves
                                                              if k not in CURVES_FIRST)
    return {
        "comparison": "ebjdat-eval",
        "ebjdat_version": ebjdat.__version__,
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "settings": dict(settings),
        "columns": [{"key": k, "label": label, "kind": kind} for k, label, kind in columns],
        "rows": rows,
        "sanity": sanity,
        "curves": {k: curves[k] for k in order},
        "warnings": warnings,
        "notes": notes,
    }


def compare_checkpoints(
    paths: Sequence[str | Path],
    settings: EvalSettings,
    out: str | Path,
    device: str | torch.device | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluates each checkpoint into OUT/<name>/ (its usual report) and writes OUT/compare.json
    and OUT/compare.html; returns the comparison.

    Every path is checked (exists, distinct, loads as a checkpoint), the settings validated and
    OUT checked writable before anything is evaluated or written: CheckpointError or
    SettingsError. A checkpoint that fails once evaluation has begun becomes a row with its
    error and the others go on.
    """
    from ebjdat.checkpoint import CheckpointError
    from ebjdat.checks import SettingsError
    from ebjdat.files import unwritable_reason

    from .checkpoints import pick_device
    from .evaluation import evaluate_checkpoint

    settings = settings.validate()
    out = Path(out)
    reason = unwritable_reason(out)
    if reason is not None:
        raise SettingsError("out", f"{out}: {reason}")
    names = check_checkpoints(paths)
    dev = pick_device(device)
    say = log or (lambda message: None)
    entries: list[dict[str, Any]] = []
    for i, (path, name) in enumerate(zip(paths, names, strict=True), 1):
        where = out / name
        say(f"[{i}/{len(paths)}] {name}: {path} -> {where}")
        entry: dict[str, Any] = {"name": name, "checkpoint": str(path)}
        start = time.perf_counter()
        try:
            evaluate_checkpoint(path, dataclasses.replace(settings, out=where), dev, log=log)
            entry["report"] = json.loads((where / "report.json").read_text())
        except (SettingsError, CheckpointError, OSError, RuntimeError, ValueError) as err:
            # One checkpoint's failure (its dataset missing, too few classes for AutoAttack,
            # out of memory) must not cost the rows already evaluated or still to come.
            entry["error"] = " ".join(str(err).split()) or type(err).__name__
            say(f"[{i}/{len(paths)}] {name}: failed: {entry['error']}")
        else:
            say(f"[{i}/{len(paths)}] {name}: done in {time.perf_counter() - start:.0f} s")
        mj = metrics_path(path)
        entry["curves"], entry["curve_notes"] = read_curves(mj)
        entry["metrics_jsonl"] = str(mj) if mj.is_file() else None
        entries.append(entry)
    comparison = build_comparison(entries, settings_record(settings))
    write_comparison(out, comparison)
    return comparison


def write_comparison(out: str | Path, comparison: Mapping[str, Any]) -> tuple[Path, Path]:
    """OUT/compare.json (plain JSON) and OUT/compare.html (one page, curves as inline SVG)."""
    from .report import _plain

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = _plain(dict(comparison))
    json_path = out / "compare.json"
    json_path.write_text(json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False) + "\n")
    html_path = out / "compare.html"
    html_path.write_text(render_comparison(data), encoding="utf-8")
    return json_path, html_path


# ---- the page -------------------------------------------------------------------------------


def _cell(values: Mapping[str, Any], key: str, kind: str) -> str:
    from .report import _fmt, _fmt_ci

    if key not in values:
        return "<td class='num'>—</td>"
    return f"<td class='num'>{_fmt(values[key], kind)}{_fmt_ci(values, key, kind)}</td>"


def _main_table(comparison: Mapping[str, Any]) -> str:
    columns = [(c["key"], c["label"], c["kind"]) for c in comparison["columns"]]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in columns)
    lines = [f"<table id='comparison'><tr><th>Checkpoint</th><th>Preset</th><th>Epoch</th>"
             f"{head}</tr>"]  # fmt: skip
    for row in comparison["rows"]:
        name = html.escape(row["name"])
        if "error" in row:
            lines.append(
                f"<tr class='failed'><td>{name}</td><td colspan='{len(columns) + 2}' "
                f"class='note'>evaluation failed: {html.escape(row['error'])}</td></tr>"
            )
            continue
        label = f"<a href='{html.escape(row['html'])}'>{name}</a>"
        cells = "".join(_cell(row, key, kind) for key, _, kind in columns)
        lines.append(
            f"<tr><td>{label}</td><td>{html.escape(str(row.get('preset', '')))}</td>"
            f"<td class='num'>{html.escape(str(row.get('epoch', '—')))}</td>{cells}</tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def _sanity_kind(check: str) -> str:
    if "acc" in check or check == "zero_grad_fraction":
        return "pct"
    if check == "n_examples":
        return "int"
    return "str" if check == "strong_pgd" else "num"


def _sanity_table(comparison: Mapping[str, Any]) -> str:
    sanity: Mapping[str, Mapping[str, Any]] = comparison["sanity"]
    if not sanity:
        return "<p class='notes'>no sanity checks were run (--no-sanity, or no attack)</p>"
    names = [r["name"] for r in comparison["rows"] if "error" not in r]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    lines = [f"<table id='sanity'><tr><th>Check</th>{head}</tr>"]
    for check, by_row in sanity.items():
        if check.endswith(_CI):
            continue
        kind = _sanity_kind(check)
        cells = []
        for n in names:
            values = {check: by_row[n]} if n in by_row else {}
            ci = sanity.get(f"{check}{_CI}", {})
            if n in ci:
                values[f"{check}{_CI}"] = ci[n]
            cells.append(_cell(values, check, kind))
        lines.append(f"<tr><td><code>{html.escape(check)}</code></td>{''.join(cells)}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def svg_curve(title: str, series: Mapping[str, Sequence[Sequence[float]]],
              colours: Mapping[str, str]) -> str:  # fmt: skip
    """One small line chart, every run overlaid in its colour; a dot marks each epoch, so a
    one-epoch run still shows."""
    w, h, left, right, top, bottom = 320, 190, 52, 12, 26, 30
    points = [p for pts in series.values() for p in pts]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        pad = abs(y0) * 0.05 or 1.0
        y0, y1 = y0 - pad, y1 + pad

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - right)

    def sy(y: float) -> float:
        return top + (y1 - y) / (y1 - y0) * (h - top - bottom)

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' class='curve' width='{w}' height='{h}' "
        f"viewBox='0 0 {w} {h}' role='img' aria-label='{html.escape(title)}'>",
        f"<text x='{w / 2}' y='16' text-anchor='middle' font-size='13' "
        f"font-weight='600'>{html.escape(title)}</text>",
        f"<rect x='{left}' y='{top}' width='{w - left - right}' height='{h - top - bottom}' "
        "fill='none' stroke='#c3cad2'/>",
        f"<text x='{left - 4}' y='{top + 4}' text-anchor='end' font-size='10'>{y1:.3g}</text>",
        f"<text x='{left - 4}' y='{h - bottom}' text-anchor='end' font-size='10'>{y0:.3g}</text>",
        f"<text x='{left}' y='{h - bottom + 13}' font-size='10'>{x0:g}</text>",
        f"<text x='{w - right}' y='{h - bottom + 13}' text-anchor='end' "
        f"font-size='10'>{x1:g}</text>",
        f"<text x='{(left + w - right) / 2}' y='{h - 4}' text-anchor='middle' "
        "font-size='10'>epoch</text>",
    ]
    for name, pts in series.items():
        colour = colours.get(name, "#333")
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(
            f"<polyline fill='none' stroke='{colour}' stroke-width='1.8' points='{coords}'>"
            f"<title>{html.escape(name)}</title></polyline>"
        )
        parts.extend(f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='2.2' fill='{colour}'/>"
                     for x, y in pts)  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def _curves(comparison: Mapping[str, Any]) -> str:
    curves: Mapping[str, Mapping[str, Any]] = comparison["curves"]
    if not curves:
        return "<p class='notes'>no training curves (no metrics.jsonl found)</p>"
    names = [r["name"] for r in comparison["rows"]]
    colours = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
    legend = " ".join(
        f"<span class='key'><span class='swatch' style='background:{colours[n]}'></span>"
        f"{html.escape(n)}</span>"
        for n in names
        if any(n in series for series in curves.values())
    )
    charts = "".join(
        f"<figure class='chart' id='curve-{html.escape(m)}'>"
        f"{svg_curve(m, series, colours)}</figure>"
        for m, series in curves.items()
    )
    return f"<div class='legend'>{legend}</div><div class='figs'>{charts}</div>"


def _settings_table(settings: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td><code>{html.escape(k)}</code></td><td>"
        f"{html.escape(json.dumps(v, ensure_ascii=False))}</td></tr>"
        for k, v in settings.items()
    )
    return f"<table id='settings'><tr><th>Setting</th><th>Value</th></tr>{rows}</table>"


def _list(title: str, items: Sequence[str], cls: str, ident: str) -> str:
    if not items:
        return ""
    lis = "".join(f"<li>{html.escape(str(i))}</li>" for i in items)
    return f"<div class='{cls}' id='{ident}'><b>{title} ({len(items)})</b><ul>{lis}</ul></div>"


_EXTRA_CSS = """
main{max-width:1400px}
.legend{margin:6px 0 10px;font-size:13px}.key{margin-right:14px;white-space:nowrap}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;
vertical-align:-1px}
figure.chart{flex:0 0 auto;padding:6px}
tr.failed td{background:#fde8e8}
details{margin:6px 0}summary{cursor:pointer;font-size:13.5px}
"""


def render_comparison(comparison: Mapping[str, Any]) -> str:
    """The comparison page as one string: settings once, one row per checkpoint, the sanity
    checks as a table, the training curves overlaid, each row's warnings and notes."""
    from .report import _CSS, _protocol_box

    rows = comparison["rows"]
    protocol = next((r.get("protocol") for r in rows if r.get("protocol")), None)
    protocol = protocol or comparison["settings"].get("protocol", "standard")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>ebjdat comparison — {len(rows)} checkpoints</title>",
        f"<style>{_CSS}{_EXTRA_CSS}</style></head><body><main>",
        f"<h1>ebjdat comparison — {len(rows)} checkpoints</h1>",
        f"<div class='meta'>created {html.escape(str(comparison.get('created', '')))} · "
        f"ebjdat {html.escape(str(comparison.get('ebjdat_version', '')))} · every row under "
        "the same settings (below); each name links to its full report</div>",
        _protocol_box({"protocol": protocol}),
        _list("Warnings", comparison.get("warnings") or [], "warnings", "warnings"),
        "<h2>One row per checkpoint</h2>",
        "<p class='notes'>Accuracies in %, with their 95% Wilson interval in brackets. "
        "Generation: lower is better for FID, fid_digits and KID, higher for IS; "
        "<i>init</i> is the samples' own starts after 0 SGLD steps (the baseline to beat), "
        "<i>real</i> held-out real images (the floor).</p>",
        _main_table(comparison),
        "<h2>Gradient-masking sanity checks</h2>",
        _sanity_table(comparison),
        "<h2>Training curves (metrics.jsonl)</h2>",
        _curves(comparison),
        _list("Notes", comparison.get("notes") or [], "notes", "notes"),
        "<h2>Per checkpoint</h2>",
    ]
    for row in rows:
        items = [*(f"warning: {w}" for w in row.get("warnings", [])), *row.get("notes", [])]
        if items:
            lis = "".join(f"<li>{html.escape(str(i))}</li>" for i in items)
            parts.append(
                f"<details><summary>{html.escape(row['name'])}: {len(items)} warnings and "
                f"notes</summary><ul class='notes'>{lis}</ul></details>"
            )
    parts += ["<h2>Settings (shared by every row)</h2>", _settings_table(comparison["settings"]),
              "</main></body></html>"]  # fmt: skip
    return "\n".join(p for p in parts if p)
