"""Calibration: expected calibration error and the reliability diagram (Guo et al., 2017).

Confidence is the top-class probability; the [0, 1] confidence range is cut into `n_bins`
equal-width bins (lower edge excluded, upper edge included, so a confidence of exactly 1 lands
in the last bin). ECE = Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)|.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class CalibrationBins:
    """Per-bin statistics (empty bins have count 0 and accuracy/confidence NaN)."""

    edges: np.ndarray  # [n_bins + 1]
    count: np.ndarray  # [n_bins]
    accuracy: np.ndarray  # [n_bins]
    confidence: np.ndarray  # [n_bins]

    @property
    def ece(self) -> float:
        total = self.count.sum()
        filled = self.count > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((self.count[filled] / total * gaps).sum())


def _as_numpy(a: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def calibration_bins(
    probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, n_bins: int = 15
) -> CalibrationBins:
    """Bin the top-class confidences of `probs` [N, K] (rows are probability vectors)."""
    p = _as_numpy(probs)
    lab = _as_numpy(labels).astype(np.int64)
    if p.ndim != 2 or lab.ndim != 1 or p.shape[0] != lab.shape[0] or p.shape[0] == 0:
        raise ValueError(f"probs must be [N, K] and labels [N], N > 0; got {p.shape}, {lab.shape}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = p.max(axis=1)
    hit = (p.argmax(axis=1) == lab).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin b holds (edges[b], edges[b+1]]; confidences are >= 1/K > 0, so none is lost.
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=hit, minlength=n_bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
    return CalibrationBins(edges, count.astype(np.int64), acc, mean_conf)


def expected_calibration_error(
    probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, n_bins: int = 15
) -> float:
    """ECE with equal-width confidence bins, |accuracy − confidence| weighted by bin mass."""
    return calibration_bins(probs, labels, n_bins).ece


def reliability_diagram(
    probs: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    n_bins: int = 15,
    title: str | None = None,
) -> float:
    """Write the reliability diagram as a PNG at `path`; returns the ECE shown in its title.

    Top: accuracy per confidence bin (bars), the gap to the bin's mean confidence (red), the
    diagonal of perfect calibration. Bottom: the share of samples per bin, so that a big gap in
    a nearly empty bin is read for what it is.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bins = calibration_bins(probs, labels, n_bins)
    ece = bins.ece
    width = 1.0 / n_bins
    centers = bins.edges[:-1] + width / 2
    filled = bins.count > 0
    acc = np.where(filled, bins.accuracy, 0.0)
    conf = np.where(filled, bins.confidence, 0.0)

    fig = Figure(figsize=(5.0, 6.0), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], ls="--", color="0.45", lw=1, label="perfect calibration", zorder=3)
    top.bar(
        centers[filled], acc[filled], width=width, color="#4C72B0", edgecolor="white", lw=0.8,
        label="accuracy", zorder=2,
    )
    gap_lo = np.minimum(acc, conf)[filled]
    top.bar(
        centers[filled], np.abs(conf - acc)[filled], bottom=gap_lo, width=width,
        color="#C44E52", alpha=0.35, edgecolor="#C44E52", lw=0.8, hatch="//",
        label="gap to confidence", zorder=2,
    )
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", aspect="auto")
    top.grid(True, color="0.9", lw=0.6, zorder=0)
    top.legend(loc="upper left", frameon=False, fontsize=8)
    head = f"{title} — " if title else ""
    n = int(bins.count.sum())
    top.set_title(f"{head}ECE = {100 * ece:.2f}%  (n = {n}, {n_bins} bins)", fontsize=10)

    share = bins.count / bins.count.sum()
    bottom.bar(centers, share, width=width, color="0.55", edgecolor="white", lw=0.8, zorder=2)
    bottom.set(xlim=(0, 1), xlabel="confidence (max softmax)", ylabel="share")
    bottom.grid(True, axis="y", color="0.9", lw=0.6, zorder=0)
    for ax in (top, bottom):
        ax.spines[["top", "right"]].set_visible(False)
    fig.savefig(os.fspath(path), format="png")
    return ece
