"""Out-of-distribution detection with the JEM scores (Grathwohl et al., 2020, §5.3).

Every score is "higher = more in-distribution", so AUROC(in, out) > 0.5 means the score works:

- `log_px`: log p(x) up to the constant log Z, i.e. −E(x) = logsumexp_y f(x)[y];
- `max_softmax`: max_y p(y|x) (the classifier baseline of Hendrycks & Gimpel);
- `grad_norm`: −‖∇ₓ log p(x)‖₂ per sample, taken on the [0, 1] input (JEM's "approximate mass":
  in-distribution points sit near modes of p(x), where the density is flat).

OOD sets: CIFAR models use SVHN and CIFAR-100 (CIFAR-10 for CIFAR-100 models) when their files
are present; for every dataset, shifted sets made from the data itself are also available (see
`digits_ood_sets` and `ood_sets_for`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ebjdat import ops
from ebjdat.data import to_float01
from ebjdat.grad_modes import grad_mode, outside_inference_mode

Model01 = Callable[[torch.Tensor], torch.Tensor]
SCORES = ("log_px", "max_softmax", "grad_norm")


def _device_of(model: Model01, fallback: torch.device) -> torch.device:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
    return fallback


@outside_inference_mode
def ood_scores(
    model: Model01, x: torch.Tensor, *, batch_size: int = 500
) -> dict[str, torch.Tensor]:
    """The three JEM scores for images x (uint8 or float [0, 1]), as CPU float tensors [N].

    `model` maps [0, 1] images to logits (a JEM or any classifier); log p(x) comes from the
    fused energy head on those logits.
    """
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty [N, C, H, W] batch, got {tuple(x.shape)}")
    device = _device_of(model, x.device)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in SCORES}
    starts = range(0, x.shape[0], batch_size)
    for s in tqdm(starts, desc="ood scores", unit="batch", leave=False, disable=None):
        xb = to_float01(x[s : s + batch_size]).to(device)
        with grad_mode():
            xr = xb.detach().requires_grad_(True)
            logits = model(xr)
            log_px = -ops.energy_head(logits).energy
            (g,) = torch.autograd.grad(log_px.sum(), xr)
        with torch.no_grad():
            out["log_px"].append(log_px.detach().float().cpu())
            out["max_softmax"].append(logits.detach().float().softmax(dim=1).amax(dim=1).cpu())
            out["grad_norm"].append(-g.detach().float().flatten(1).norm(dim=1).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def auroc(
    scores_in: torch.Tensor | np.ndarray, scores_out: torch.Tensor | np.ndarray
) -> float:
    """P(score_in > score_out) + ½·P(tie): the ROC AUC with in-distribution as positive.

    Rank-based (Mann–Whitney U) with average ranks for ties, so it is exact, O(n log n), and
    agrees with sklearn's roc_auc_score.
    """
    a = np.asarray(torch.as_tensor(scores_in).detach().cpu().double().flatten())
    b = np.asarray(torch.as_tensor(scores_out).detach().cpu().double().flatten())
    if a.size == 0 or b.size == 0:
        raise ValueError("auroc needs at least one in- and one out-of-distribution score")
    both = np.concatenate([a, b])
    if np.isnan(both).any():
        raise ValueError("auroc: scores contain NaN")
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    # 1-based average rank of each distinct value: its last rank minus half the tie width.
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = avg_rank[inverse.reshape(-1)]
    u = ranks[: a.size].sum() - a.size * (a.size + 1) / 2.0
    return float(u / (a.size * b.size))


# ---- OOD sets --------------------------------------------------------------------------------


def _pixel_shuffle(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    n, c, h, w = x.shape
    keys = torch.rand(n, h * w, generator=generator, device=_gen_device(generator))
    perm = keys.argsort(dim=1).to(x.device)
    flat = x.reshape(n, c, h * w)
    return flat.gather(2, perm[:, None, :].expand(n, c, h * w)).reshape(n, c, h, w)


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(x.shape, generator=generator, device=_gen_device(generator)).to(x.device)


def interpolations(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """½(x_i + x_j) for random pairs: images with in-distribution statistics but no single
    object (JEM's "Interp" set)."""
    x = to_float01(x)
    perm = torch.randperm(x.shape[0], generator=generator, device=_gen_device(generator))
    return 0.5 * (x + x[perm.to(x.device)])


def digits_ood_sets(
    x: torch.Tensor, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Shifted sets made from the in-distribution images x themselves (float [0, 1], x's shape).

    - "inverted": 1 − x, white digits on black become black on white (same shapes, flipped
      intensity statistics: far OOD for a model that never saw a bright background);
    - "uniform_noise": i.i.d. U[0, 1] pixels (no structure at all);
    - "pixel_shuffle": each image's pixel positions permuted at random (exactly the same
      intensity histogram as a digit, no spatial structure);
    - "vflip": upside-down digits (near OOD: 0, 1, 3 and 8 stay digit-like, so even a perfect
      density model cannot reach AUROC 1 here).
    """
    x = to_float01(x)
    return {
        "inverted": 1.0 - x,
        "uniform_noise": _uniform_like(x, generator),
        "pixel_shuffle": _pixel_shuffle(x, generator),
        "vflip": x.flip(-2),
    }


# Real OOD data sets per in-distribution data set (the JEM / JEM++ choice).
_REAL_OOD: dict[str, tuple[str, ...]] = {
    "cifar10": ("svhn", "cifar100"),
    "cifar100": ("svhn", "cifar10"),
    "svhn": ("cifar10", "cifar100"),
}


def ood_sets_for(
    dataset: str,
    root: str | os.PathLike | None = None,
    n: int | None = 1000,
    generator: torch.Generator | None = None,
    x: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The OOD sets for a model trained on `dataset`, as {"sets": {name: images}, "skipped":
    {name: reason}}.

    Real data sets (SVHN, CIFAR-10/100 test splits) are read from `root` without downloading;
    those whose files are absent are listed in "skipped" with the reason. Shifted sets come from
    the in-distribution test images (`x`, else the dataset's test split): `digits_ood_sets` for
    digits, "uniform_noise" and "interp" for the others. Each set holds at most `n` images (the
    first n: the test splits are not ordered by class).
    """
    from ebjdat.data import DatasetNotFoundError, load_split_tensors

    name = str(dataset).lower()
    sets: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    for other in _REAL_OOD.get(name, ()):
        try:
            images, _ = load_split_tensors(other, "test", root, download=False)
        except (DatasetNotFoundError, OSError, ImportError) as err:
            skipped[other] = f"{type(err).__name__}: {err}"
            continue
        sets[other] = to_float01(images[:n])
    if x is None:
        x, _ = load_split_tensors(name, "test", root, download=False)
    x = to_float01(x[:n])
    if name == "digits":
        sets.update(digits_ood_sets(x, generator))
    else:
        sets["uniform_noise"] = _uniform_like(x, generator)
        sets["interp"] = interpolations(x, generator)
    return {"sets": sets, "skipped": skipped}


def ood_auroc(
    model: Model01,
    x_in: torch.Tensor,
    sets: Mapping[str, torch.Tensor],
    *,
    batch_size: int = 500,
) -> dict[str, dict[str, float]]:
    """AUROC of every JEM score for in-distribution x_in against each OOD set:
    result[set_name][score_name].

    A score that is not finite for every image of x_in or of the set (a model with NaN weights,
    overflowing logits) has no meaningful ranking: its entry is left out rather than computed
    from the finite part, so result[set_name] may lack some (or all) scores.
    """
    s_in = ood_scores(model, x_in, batch_size=batch_size)
    finite_in = {k: bool(torch.isfinite(v).all()) for k, v in s_in.items()}
    result: dict[str, dict[str, float]] = {}
    for set_name, x_out in sets.items():
        s_out = ood_scores(model, x_out, batch_size=batch_size)
        result[set_name] = {
            k: auroc(s_in[k], s_out[k])
            for k in SCORES
            if finite_in[k] and bool(torch.isfinite(s_out[k]).all())
        }
    return result
