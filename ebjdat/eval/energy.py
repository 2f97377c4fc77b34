"""The paper's Fig. 2: where clean, adversarial and generated samples sit on the energy axis.

EB-JDAT's premise (the paper's energy-landscape analysis, Fig. 2 and Tab. 1) is that
adversarial training closes the clean <-> adversarial energy gap, JEM training closes the
clean <-> generated gap, and a model that aligns all three is accurate, robust and generative
at once. `energy_histogram` draws the three E(x)
distributions on shared bins; `energy_gaps` gives the mean gaps for the report.

Gaps are signed: energy_gap_clean_adv = mean E(adversarial) - mean E(clean). Positive means the
adversarial inputs have higher energy (lower unnormalised log p(x)) than clean data.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

# Canonical names and their aliases; the figure and the report use the canonical ones.
_ALIASES = {"adv": "adversarial", "gen": "generated", "samples": "generated"}
_STYLE = {
    "clean": ("#2b6cb0", "clean test data"),
    "adversarial": ("#d94841", "adversarial (PGD)"),
    "generated": ("#2f9e44", "generated (SGLD)"),
}
_EXTRA_COLOURS = ["#7048e8", "#e67700", "#0c8599", "#868e96"]


def _canonical(energies: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, values in energies.items():
        key = _ALIASES.get(name, name)
        arr = np.asarray(torch.as_tensor(values).detach().double().cpu().reshape(-1))
        arr = arr[np.isfinite(arr)]
        if arr.size:
            out[key] = arr
    return out


def energy_gaps(energies: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, float]:
    """energy_mean_<name> and energy_std_<name> for every set, plus the signed mean gaps
    energy_gap_clean_adv and energy_gap_clean_gen (set minus clean) when those sets are given."""
    e = _canonical(energies)
    out: dict[str, float] = {}
    for name, arr in e.items():
        out[f"energy_mean_{name}"] = float(arr.mean())
        out[f"energy_std_{name}"] = float(arr.std())
    if "clean" in e:
        for other, key in (("adversarial", "adv"), ("generated", "gen")):
            if other in e:
                out[f"energy_gap_clean_{key}"] = float(e[other].mean() - e["clean"].mean())
    return out


def _bins(arrays: list[np.ndarray]) -> np.ndarray:
    """Shared bins over the central 99.8% of all values, so one far outlier (a diverged chain)
    cannot squash the histograms into a single bar; the rest is counted in the edge bins."""
    both = np.concatenate(arrays)
    lo, hi = np.percentile(both, [0.1, 99.9])
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    n = int(np.clip(np.sqrt(both.size), 15, 50))
    return np.linspace(lo, hi, n + 1)


def _kde(values: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
    """Gaussian kernel density (Silverman's bandwidth) on `grid`; None when degenerate."""
    std = float(values.std())
    if values.size < 5 or not std > 0:
        return None
    h = 1.06 * std * values.size ** (-1 / 5)
    out = np.zeros_like(grid)
    for chunk in np.array_split(values, max(1, values.size // 2048)):
        out += np.exp(-0.5 * ((grid[:, None] - chunk[None, :]) / h) ** 2).sum(axis=1)
    return out / (values.size * h * np.sqrt(2 * np.pi))


def energy_histogram(
    path: str | Path,
    energies: Mapping[str, torch.Tensor | np.ndarray],
    title: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Overlaid density histograms of E(x) per set (clean / adversarial / generated, any
    others after them) on shared bins: translucent fills, a smooth density line per set, dashed
    mean lines, a legend with n and means, and the mean gaps in a corner box. `labels`
    overrides legend names (e.g. {"adversarial": "PGD-20, eps=0.1"}). Writes a PNG; returns
    its path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    e = _canonical(energies)
    if not e:
        raise ValueError("energy_histogram needs at least one non-empty set of energies")
    names = {_ALIASES.get(k, k): v for k, v in (labels or {}).items()}
    order = [k for k in _STYLE if k in e] + [k for k in e if k not in _STYLE]
    bins = _bins([e[k] for k in order])
    lo, hi = bins[0], bins[-1]
    grid = np.linspace(lo, hi, 400)

    fig, ax = plt.subplots(figsize=(8.0, 4.6), dpi=150)
    extra = iter(_EXTRA_COLOURS)
    for name in order:
        colour, label = _STYLE.get(name, (next(extra, "#495057"), name))
        label = names.get(name, label)
        arr = np.clip(e[name], lo, hi)
        mean = float(e[name].mean())
        legend = f"{label}  (n={e[name].size}, mean {mean:.2f})"
        ax.hist(arr, bins=bins, density=True, color=colour, alpha=0.28, label=legend)
        density = _kde(e[name], grid)
        if density is not None:
            ax.plot(grid, density, color=colour, linewidth=2.0)
        else:
            ax.hist(arr, bins=bins, density=True, histtype="step", color=colour, linewidth=1.6)
        ax.axvline(mean, color=colour, linestyle="--", linewidth=1.5, alpha=0.95)

    gaps = energy_gaps(energies)
    lines = []
    if "energy_gap_clean_adv" in gaps:
        lines.append(f"E(adv) − E(clean) = {gaps['energy_gap_clean_adv']:+.2f}")
    if "energy_gap_clean_gen" in gaps:
        lines.append(f"E(gen) − E(clean) = {gaps['energy_gap_clean_gen']:+.2f}")
    if lines:
        ax.text(
            0.985,
            0.96,
            "mean gaps\n" + "\n".join(lines),
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=9,
            family="monospace",
            bbox={
                "boxstyle": "round,pad=0.45",
                "facecolor": "white",
                "edgecolor": "#adb5bd",
                "alpha": 0.92,
            },
        )
    ax.set_xlabel(
        "energy  E(x) = −logsumexp$_y$ f(x)[y]     (lower = more probable under the model)"
    )
    ax.set_ylabel("density (each set normalised)")
    ax.set_title(title or "Energy distributions: clean vs adversarial vs generated", fontsize=12)
    ax.set_xlim(lo, hi)
    ax.grid(axis="y", color="#e9ecef", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    legend = ax.legend(loc="upper left", fontsize=8.5, frameon=True, framealpha=0.92)
    legend.get_frame().set_edgecolor("#dee2e6")
    ymax = ax.get_ylim()[1]
    ax.set_ylim(0, ymax * 1.28)  # head-room for the legend and the gap box
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
