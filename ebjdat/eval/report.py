"""`report.json` and a single-file `report.html` for one evaluated checkpoint.

The JSON is plain (numbers, strings, lists, dicts; non-finite floats become null) and holds only
the metrics that were run: an absent key means "not measured", never 0. The HTML needs no
network and no other file: figures are embedded as base64 data URIs. The evaluation protocol is
shown at the top, and the paper protocol is flagged as non-standard, so that a number is never
quoted without its units.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Row = tuple[str, str, str, str]  # (key, label, kind, note); kind "pct" prints a percentage

# The baselines each generation figure stands beside: (key suffix, short name, note).
_BASELINE_ROWS = [
    ("_init", "init only", "the samples' own starts, 0 SGLD steps: the baseline to beat"),
    ("_real", "real floor", "held-out real images, as many as the samples"),
    ("_uniform", "from uniform noise", "the same SGLD settings from uniform noise"),
    ("_uniform_init", "uniform noise", "the uniform-noise starts, 0 steps"),
]
_GEN_METRICS = [  # (key, label, which way is better)
    ("fid_digits", "fid_digits", "lower"),
    ("fid", "FID (Inception)", "lower"),
    ("inception_score", "Inception Score", "higher"),
    ("kid", "KID (Inception)", "lower"),
]
GENERATION_MEANING = {
    "digits": (
        "On digits, \"generation\" means fresh SGLD samples drawn from the same kind of start "
        "as the training replay buffer (the class-conditional Gaussians, or uniform noise if the "
        "run used it), scored by fid_digits, the Fréchet distance in the features of the "
        "package's own small digits classifier (not Inception): lower is better, the "
        "init-only column (the same starts after 0 SGLD steps) is what the sampler must beat, "
        "and the real floor (held-out real digits) is the best reachable."
    ),
    "other": (
        "\"Generation\" means fresh SGLD samples from the run's replay-buffer start, scored "
        "with Inception FID, IS and KID against the train split: the init-only column (the "
        "same starts after 0 SGLD steps) is what the sampler must beat, and the real floor "
        "(held-out real images) is the best reachable."
    ),
}

_SECTIONS: list[tuple[str, list[Row]]] = [
    (
        "Accuracy and robustness",
        [
            ("clean_acc", "Clean accuracy", "pct", "test split"),
            ("pgd20_acc", "PGD-20 accuracy", "pct", "correct clean and under PGD-20"),
            ("autoattack_acc", "AutoAttack accuracy", "pct", "correct clean and under AutoAttack"),
            ("autoattack_engine", "AutoAttack engine", "str",
             "original: Croce & Hein's code (pyautoattack); torchattacks: the port"),
            ("autoattack_version", "AutoAttack version", "str", ""),
            ("eps", "ε (applied)", "eps", "[0, 1] pixel units"),
            ("eps_requested", "ε (requested)", "eps", "as given on the command line"),
            ("norm", "Norm", "str", ""),
            ("input_noise", "Test-time noise σ", "num", "[0, 1] pixel units"),
            ("n_examples", "Test examples", "int", "the first N of the test split"),
        ],
    ),
    (
        "Generation",
        [
            (
                "fid",
                "FID (Inception)",
                "num",
                "fresh SGLD samples vs the train split; lower is better",
            ),
            ("inception_score", "Inception Score", "num", "fresh samples; higher is better"),
            ("kid", "KID (Inception)", "num", "fresh samples; lower is better"),
            *[
                (f"{key}{suffix}", f"{label}, {what}", "num", note)
                for suffix, what, note in _BASELINE_ROWS
                for key, label in (("fid", "FID"), ("inception_score", "IS"), ("kid", "KID"))
            ],
            (
                "fid_digits",
                "fid_digits",
                "num",
                "Fréchet distance in a small digits classifier's features (not Inception FID)",
            ),
            ("fid_digits_init", "fid_digits, init only", "num",
             "the same starts, 0 SGLD steps: the baseline the sampler must beat"),
            ("fid_digits_real", "fid_digits, real floor", "num",
             "held-out real digits, as many as the samples: the best reachable"),
            ("fid_digits_uniform", "fid_digits, from uniform noise", "num",
             "the same SGLD settings started from uniform noise (the hard case)"),
            ("fid_digits_uniform_init", "fid_digits, uniform noise", "num",
             "the uniform-noise starts themselves, 0 steps"),
            (
                "fid_digits_test_split",
                "fid_digits of real test digits",
                "num",
                "the same distance for held-out real digits: the floor to compare against",
            ),
            (
                "buffer_fid",
                "Buffer FID (official variant)",
                "num",
                "most confident replay-buffer images (the official protocol), not fresh samples",
            ),
            (
                "buffer_inception_score",
                "Buffer IS (official variant)",
                "num",
                "the same replay-buffer selection",
            ),
            (
                "buffer_fid_digits",
                "Buffer fid_digits (official selection)",
                "num",
                "most confident replay-buffer images, not fresh samples",
            ),
            ("n_generated", "Fresh samples", "int", ""),
            ("n_buffer_selected", "Buffer images selected", "int", ""),
        ],
    ),
    (
        "Calibration and OOD",
        [
            ("ece", "ECE", "pct", "expected calibration error, 15 bins; lower is better"),
            ("ood_auroc", "OOD AUROC (log p(x))", "num", "mean over the OOD sets; 0.5 = chance"),
        ],
    ),
    (
        "Energies",
        [
            ("energy_mean_clean", "Mean E(x), clean", "num", "E(x) = −logsumexp f(x)"),
            ("energy_mean_adversarial", "Mean E(x), adversarial", "num", "PGD examples"),
            ("energy_mean_generated", "Mean E(x), generated", "num", "fresh SGLD samples"),
            ("energy_gap_clean_adv", "Gap E(adv) − E(clean)", "num", "signed"),
            ("energy_gap_clean_gen", "Gap E(gen) − E(clean)", "num", "signed"),
            ("energy_std_clean", "Std E(x), clean", "num", ""),
            ("energy_std_adversarial", "Std E(x), adversarial", "num", ""),
            ("energy_std_generated", "Std E(x), generated", "num", ""),
        ],
    ),
]

# Headline cards: (key, label, kind)
_CARDS = [
    ("clean_acc", "Clean", "pct"),
    ("pgd20_acc", "PGD-20", "pct"),
    ("autoattack_acc", "AutoAttack", "pct"),
    ("fid", "FID", "num"),
    ("inception_score", "IS", "num"),
    ("fid_digits", "fid_digits", "num"),
    ("ece", "ECE", "pct"),
    ("ood_auroc", "OOD AUROC", "num"),
]

# The report.json order: what people look for first, then the rest as produced.
_FIRST = [
    "checkpoint", "dataset", "preset", "epoch", "weights", "protocol", "protocol_note",
    "n_examples",
    "eps", "eps_requested", "norm", "clean_acc", "pgd20_acc", "autoattack_acc",
    "autoattack_engine", "fid",
    "fid_init", "fid_real",
    "inception_score", "kid", "fid_digits", "fid_digits_init", "fid_digits_real",
    "fid_digits_uniform", "fid_digits_uniform_init", "buffer_fid", "buffer_fid_digits", "ece",
    "ood_auroc", "energy_gap_clean_adv", "energy_gap_clean_gen", "warnings", "notes",
]  # fmt: skip
_LAST = ["ood", "sanity", "settings", "timings", "created"]

_FIGURE_TITLES = {
    "samples": "Fresh SGLD samples (class-conditional starts: one class per row)",
    "uniform_samples": "SGLD samples started from uniform noise (the hard case)",
    "buffer_samples": "Replay-buffer selection scored by the official 'buffer FID'",
    "energy": "Energy distributions (the paper's Fig. 2)",
    "energy_histogram": "Energy distributions (the paper's Fig. 2)",
    "reliability": "Reliability diagram",
}
_PGD = re.compile(r"^pgd(\d+)_acc$")
_CI = "_ci95"  # suffix of a metric's 95% interval [low, high]

_CSS = """
*{box-sizing:border-box}
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;
background:#f4f6f8;color:#1f2933;line-height:1.4}
main{max-width:1080px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:30px 0 10px}
.meta{color:#52606d;font-size:13px;margin-bottom:14px}
code{background:#e4e7eb;padding:1px 5px;border-radius:3px;font-size:12.5px}
.protocol{border-radius:8px;padding:12px 16px;margin:12px 0 16px;font-size:13.5px}
.protocol.standard{background:#e3f9e5;border:1px solid #51ca58}
.protocol.paper{background:#fff3c4;border:3px solid #e12d39}
.protocol .tag{font-weight:700;font-size:15px;margin-bottom:4px}
.protocol.paper .tag{color:#a61b1b}
.warnings{background:#fff8e1;border:1px solid #f0b429;border-radius:8px;padding:8px 16px;
margin-bottom:12px}
.warnings li{margin:4px 0}.notes{color:#3e4c59;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0 4px}
.card{background:#fff;border-radius:8px;padding:10px 16px;min-width:120px;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
.card .v{font-size:22px;font-weight:700;font-variant-numeric:tabular-nums}
.card .k{font-size:12px;color:#616e7c;text-transform:uppercase;letter-spacing:.04em}
table{border-collapse:collapse;width:100%;background:#fff;border-radius:8px;overflow:hidden;
box-shadow:0 1px 2px rgba(0,0,0,.06);margin-bottom:8px}
th,td{padding:6px 12px;border-bottom:1px solid #e4e7eb;text-align:left;font-size:14px}
th{background:#eef1f4;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;font-weight:600;white-space:nowrap}
td.note{color:#616e7c;font-size:12.5px}
.ci{font-weight:400;color:#52606d;font-size:12.5px}
tr.group td{background:#f5f7fa;font-weight:700;color:#323f4b}
.figs{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
figure{background:#fff;margin:0;padding:12px;border-radius:8px;flex:1 1 420px;
box-shadow:0 1px 2px rgba(0,0,0,.06);text-align:center}
figure.wide{flex-basis:100%}
figure img{max-width:100%;height:auto}
figure img.pixel{image-rendering:pixelated;width:min(100%,460px)}
figure img.plot{width:min(100%,900px)}
figure img.diagram{width:min(100%,460px)}
figcaption{color:#52606d;font-size:13px;margin-top:6px}
pre{background:#fff;padding:10px;border-radius:6px;font-size:12px;overflow:auto}
"""


def _plain(value: Any) -> Any:
    """JSON-safe: tensors / numpy scalars to Python, paths to str, NaN/inf to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f if math.isfinite(f) else None


def _ordered(report: Mapping[str, Any]) -> dict[str, Any]:
    """Headline keys first, the bulky ones last; each `<key>_ci95` right after its key."""
    first = [k for k in _FIRST if k in report]
    last = [k for k in _LAST if k in report]
    middle = [k for k in report if k not in first and k not in last]
    keys: list[str] = []
    for k in first + middle + last:
        if k.endswith(_CI) and k[: -len(_CI)] in report:
            continue  # placed with its metric
        keys.append(k)
        if f"{k}{_CI}" in report:
            keys.append(f"{k}{_CI}")
    return {k: report[k] for k in keys}


def _ci(report: Mapping[str, Any], key: str) -> tuple[float, float] | None:
    """The metric's 95% interval when the report holds a usable one."""
    ci = report.get(f"{key}{_CI}")
    if (
        isinstance(ci, (list, tuple))
        and len(ci) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ci)
    ):
        return float(ci[0]), float(ci[1])
    return None


def _fmt_ci(report: Mapping[str, Any], key: str, kind: str) -> str:
    """' [low, high]' after a value (percent points for a percentage), or ''."""
    ci = _ci(report, key)
    if ci is None:
        return ""
    low, high = (100 * v for v in ci) if kind == "pct" else ci
    unit = "%" if kind == "pct" else ""
    return f"<span class='ci'> [{low:.1f}, {high:.1f}]{unit}</span>"


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if kind == "pct" and isinstance(value, (int, float)):
        return f"{100 * value:.2f}%"
    if kind == "eps" and isinstance(value, (int, float)):
        k = value * 255
        tail = f" = {round(k)}/255" if abs(k - round(k)) < 1e-6 and 0 < value < 1 else ""
        return f"{value:.4g}{tail}"
    if kind == "int" and isinstance(value, (int, float)):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _data_uri(path: Path) -> str:
    mime = {
        ".png": "image/png",
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".svg": "image/svg+xml",
    }.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _protocol_box(report: Mapping[str, Any]) -> str:
    protocol = str(report.get("protocol", "standard"))
    note = report.get("protocol_note")
    if protocol == "paper":
        head = (
            "PAPER PROTOCOL — NON-STANDARD. Reproduces the official EB-JDAT evaluation: ε applied "
            "in [−1, 1] units (half the pixel ε), test-time noise and a reduced AutoAttack. Not "
            "comparable to standard (RobustBench-style) robustness numbers."
        )
        cls = "paper"
    else:
        head = "Standard protocol: ε in [0, 1] pixel units, unmodified attacks, no test-time noise."
        cls = "standard"
    body = f"<div class='tag'>{html.escape(head)}</div>"
    if note:
        body += f"<div>{html.escape(str(note))}</div>"
    return f"<div class='protocol {cls}' id='protocol' data-protocol='{cls}'>{body}</div>"


def _cards(report: Mapping[str, Any]) -> str:
    cards = [
        f"<div class='card'><div class='k'>{html.escape(label)}</div>"
        f"<div class='v'>{_fmt(report[key], kind)}</div>"
        f"{_card_ci(report, key, kind)}{_card_baselines(report, key)}</div>"
        for key, label, kind in _CARDS
        if isinstance(report.get(key), (int, float))
    ]
    return f"<div class='cards' id='headline'>{''.join(cards)}</div>" if cards else ""


def _card_baselines(report: Mapping[str, Any], key: str) -> str:
    """'init X · real Y' under a generation card, so the figure is never read alone."""
    if key not in {m[0] for m in _GEN_METRICS}:
        return ""
    parts = [
        f"{name} {_fmt(report[f'{key}{suffix}'], 'num')}"
        for suffix, name in (("_init", "init"), ("_real", "real"))
        if isinstance(report.get(f"{key}{suffix}"), (int, float))
    ]
    return f"<div class='k ci'>{' · '.join(parts)}</div>" if parts else ""


def _card_ci(report: Mapping[str, Any], key: str, kind: str) -> str:
    text = _fmt_ci(report, key, kind)
    return f"<div class='k ci'>95% CI{text}</div>" if text else ""


def _sections(report: Mapping[str, Any]) -> list[tuple[str, list[Row]]]:
    """The fixed sections plus any other pgdK_acc in the robustness section."""
    sections = [(title, list(rows)) for title, rows in _SECTIONS]
    known = {r[0] for _, rows in sections for r in rows}
    for key in report:
        m = _PGD.match(key)
        if m and key not in known:
            sections[0][1].insert(2, (key, f"PGD-{m.group(1)} accuracy", "pct", ""))
    return sections


def _table(report: Mapping[str, Any]) -> str:
    rows = [
        "<table id='metrics'><tr><th>Metric</th><th>Value [95% Wilson interval]</th>"
        "<th>Note</th></tr>"
    ]
    shown: set[str] = set()
    for title, items in _sections(report):
        present = [it for it in items if it[0] in report]
        if not present:
            continue
        rows.append(f"<tr class='group'><td colspan='3'>{html.escape(title)}</td></tr>")
        for key, label, kind, note in present:
            shown.add(key)
            rows.append(
                f"<tr><td>{html.escape(label)} <code>{html.escape(key)}</code></td>"
                f"<td class='num'>{_fmt(report[key], kind)}{_fmt_ci(report, key, kind)}</td>"
                f"<td class='note'>{html.escape(note)}</td></tr>"
            )
    skip = {"protocol", "protocol_note", "checkpoint", "dataset", "preset", "created"}
    other = [
        k
        for k, v in report.items()
        if k not in shown and k not in skip and isinstance(v, (int, float, str))
    ]
    if other:
        rows.append("<tr class='group'><td colspan='3'>Other</td></tr>")
        for key in other:
            kind = "num" if isinstance(report[key], float) else "str"
            rows.append(
                f"<tr><td><code>{html.escape(key)}</code></td>"
                f"<td class='num'>{_fmt(report[key], kind)}</td><td class='note'></td></tr>"
            )
    rows.append("</table>")
    return "\n".join(rows)


def _generation_table(report: Mapping[str, Any]) -> str:
    """Each generation figure in one row beside its baselines and the real floor."""
    metrics = [m for m in _GEN_METRICS if isinstance(report.get(m[0]), (int, float))]
    if not metrics:
        return ""
    cols = [("", "fresh SGLD samples")] + [(suf, what) for suf, what, _ in _BASELINE_ROWS]
    cols = [c for c in cols if any(f"{k}{c[0]}" in report for k, _, _ in metrics)]
    head = "".join(f"<th>{html.escape(what)}</th>" for _, what in cols)
    rows = [f"<table id='generation'><tr><th>Metric</th>{head}</tr>"]
    for key, label, better in metrics:
        cells = "".join(
            f"<td class='num'>{_fmt(report.get(f'{key}{suf}'), 'num')}</td>" for suf, _ in cols
        )
        rows.append(
            f"<tr><td>{html.escape(label)} <span class='ci'>({better} is better)</span></td>"
            f"{cells}</tr>"
        )
    rows.append("</table>")
    meaning = GENERATION_MEANING["digits" if report.get("dataset") == "digits" else "other"]
    return f"<p class='notes' id='generation-meaning'>{html.escape(meaning)}</p>" + "\n".join(rows)


def _ood_table(ood: Mapping[str, Any]) -> str:
    sets = [s for s, v in ood.items() if isinstance(v, Mapping)]
    if not sets:
        return ""
    scores: list[str] = []
    for s in sets:
        scores.extend(k for k in ood[s] if k not in scores)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in scores)
    rows = [f"<table id='ood'><tr><th>OOD set (AUROC, higher is better)</th>{head}</tr>"]
    for s in sets:
        cells = "".join(f"<td class='num'>{_fmt(ood[s].get(k), 'num')}</td>" for k in scores)
        rows.append(f"<tr><td>{html.escape(str(s))}</td>{cells}</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _figures(figures: Mapping[str, Path]) -> str:
    order = ["samples", "uniform_samples", "buffer_samples", "energy", "energy_histogram"]
    order.append("reliability")
    names = [n for n in order if n in figures] + [n for n in figures if n not in order]
    parts = []
    for name in names:
        path = Path(figures[name])
        caption = _FIGURE_TITLES.get(name, name.replace("_", " "))
        if not path.is_file():
            parts.append(f"<p class='notes'>figure {html.escape(name)} is missing ({path})</p>")
            continue
        if "sample" in name:
            img_cls, fig_cls = "pixel", ""
        elif name.startswith("energy"):
            img_cls, fig_cls = "plot", " class='wide'"
        else:
            img_cls, fig_cls = "diagram", ""
        parts.append(
            f"<figure id='fig-{html.escape(name)}'{fig_cls}><img class='{img_cls}' "
            f"alt='{html.escape(caption)}' src='{_data_uri(path)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return f"<h2>Figures</h2><div class='figs'>{''.join(parts)}</div>" if parts else ""


def _details(report: Mapping[str, Any]) -> str:
    blocks = []
    for key in ("settings", "sanity", "timings"):
        if isinstance(report.get(key), Mapping) and report[key]:
            text = json.dumps(_plain(report[key]), indent=2, ensure_ascii=False)
            blocks.append(f"<h2>{key.capitalize()}</h2><pre>{html.escape(text)}</pre>")
    return "\n".join(blocks)


def render_html(report: Mapping[str, Any], figures: Mapping[str, Path]) -> str:
    """The report page as one string (see write_report)."""
    what = " on ".join(str(report[k]) for k in ("preset", "dataset") if report.get(k))
    title = f"ebjdat evaluation — {what}" if what else "ebjdat evaluation"
    meta = [
        f"{key}: <code>{html.escape(str(report[key]))}</code>"
        for key in ("checkpoint", "epoch", "n_examples", "device", "created")
        if report.get(key) is not None
    ]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{html.escape(title)}</h1><div class='meta'>{' · '.join(meta)}</div>",
        _protocol_box(report),
    ]
    warnings = [str(w) for w in report.get("warnings") or []]
    if warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
        parts.append(
            f"<div class='warnings' id='warnings'><b>Warnings ({len(warnings)})</b>"
            f"<ul>{items}</ul></div>"
        )
    parts.append(_cards(report))
    notes = [str(n) for n in report.get("notes") or []]
    if notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
        parts.append(f"<div class='notes' id='notes'><b>Notes</b><ul>{items}</ul></div>")
    parts.append("<h2>Numbers</h2>")
    parts.append(_table(report))
    generation = _generation_table(report)
    if generation:
        parts.append("<h2>Generation against its baselines</h2>")
        parts.append(generation)
    if isinstance(report.get("ood"), Mapping):
        parts.append("<h2>Out-of-distribution detection</h2>")
        parts.append(_ood_table(report["ood"]))
    parts.append(_figures(figures))
    parts.append(_details(report))
    parts.append("</main></body></html>")
    return "\n".join(p for p in parts if p)


def write_report(
    out_dir: str | Path, report: Mapping[str, Any], figures: Mapping[str, Path]
) -> tuple[Path, Path]:
    """Writes OUT/report.json (plain JSON of `report`, headline keys first) and OUT/report.html
    (one self-contained page: protocol banner, warnings, headline numbers, the full table, OOD
    table, figures embedded as data URIs, settings). Returns (json_path, html_path)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = _plain(dict(report))
    data.setdefault("created", dt.datetime.now().isoformat(timespec="seconds"))
    data = _ordered(data)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False) + "\n")
    html_path = out / "report.html"
    html_path.write_text(
        render_html(data, {k: Path(v) for k, v in figures.items()}), encoding="utf-8"
    )
    return json_path, html_path
