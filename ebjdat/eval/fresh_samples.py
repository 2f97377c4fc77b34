"""Fresh SGLD samples of a trained checkpoint, with the checkpoint's own sampler settings unless
overridden. Unlike the replay buffer stored in the checkpoint, these samples are new: they show
what the model generates from scratch (ebjdat-sample, and the generation section of
ebjdat-eval)."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ebjdat.checks import MAX_TORCH_SEED, SettingsError, check_setting
from ebjdat.sampling import SGLDConfig

from .checkpoints import (
    data_root,
    default_out,
    image_shape,
    load_checkpoint,
    non_finite_weights,
    pick_device,
    train_gaussians,
)


class FromConfig(enum.Enum):
    """The type of FROM_CONFIG (an enum member survives copies and pickling as itself)."""

    FROM_CONFIG = "from the checkpoint's config"


# "Not given: take the checkpoint's value", where None already means "no value" (no clip).
FROM_CONFIG = FromConfig.FROM_CONFIG


@dataclass(frozen=True)
class SamplerOverrides:
    """SGLD settings that replace the checkpoint's [sgld] ones; None (grad_clip: FROM_CONFIG)
    keeps the checkpoint's value.

    The chain length too defaults to the training chains' (sgld.steps): a model trained with
    short-run chains generates at that length. On the default digits run (1000 samples, the
    weight average that preset checkpoints) fid_digits is 14.5 at the class-Gaussian start,
    9.5 after 5 steps, 4.2 after the training 20 and after 40, and 5.0 after 100; the live
    weights, unaveraged, drifted away from the data as chains grew longer."""

    start: str | None = None  # "noise" (U(-1, 1)) or "class" (the training split's Gaussians)
    steps: int | None = None
    step_size: float | None = None
    noise_std: float | None = None
    grad_clip: float | None | FromConfig = FROM_CONFIG  # None: no clipping
    bn_train: bool | None = None
    conditional: bool = False  # sample p(x, y) for the start labels instead of p(x)

    def validate(self, prefix: str = "") -> SamplerOverrides:
        """SettingsError naming `prefix` + the field; returns self."""
        if self.start not in (None, "noise", "class"):
            raise SettingsError(f"{prefix}start", f"must be 'noise' or 'class', got {self.start!r}")
        check_setting(f"{prefix}steps", self.steps, low=0)
        check_setting(f"{prefix}step_size", self.step_size, low=0.0)
        check_setting(f"{prefix}noise_std", self.noise_std, low=0.0)
        if self.grad_clip is not FROM_CONFIG:
            check_setting(f"{prefix}grad_clip", self.grad_clip, low=0.0, low_open=True)
        return self

    def resolve(self, cfg: Any) -> FreshSampler:
        """The sampler to draw with: these overrides over the checkpoint's [sgld] section."""
        s = cfg.sgld
        chain = dataclasses.replace(
            s,
            steps=s.steps if self.steps is None else self.steps,
            step_size=s.step_size if self.step_size is None else self.step_size,
            noise_std=s.noise_std if self.noise_std is None else self.noise_std,
            grad_clip=s.grad_clip if self.grad_clip is FROM_CONFIG else self.grad_clip,
            bn_train=s.bn_train if self.bn_train is None else self.bn_train,
        )
        start = self.start or ("class" if s.init == "gaussian" else "noise")
        return FreshSampler(chain, start, bool(self.conditional))


@dataclass(frozen=True)
class FreshSampler:
    """Fresh chains: the SGLD settings, where they start and whether they are conditional."""

    sgld: SGLDConfig
    start: str  # "noise" (U(-1, 1)) or "class" (the training split's Gaussians)
    conditional: bool

    def record(self) -> dict[str, Any]:
        """The settings as the report and samples.json show them."""
        g = self.sgld
        return {
            "start": self.start,
            "steps": g.steps,
            "step_size": g.step_size,
            "noise_std": g.noise_std,
            "grad_clip": g.grad_clip,
            "clamp": bool(g.clamp),
            "bn_train": bool(g.bn_train),
            "conditional": self.conditional,
            "units": "internal [-1, 1] images (as the training sampler)",
        }


def sample_with(
    model: Any,
    n: int,
    sampler: FreshSampler,
    *,
    gaussians: Any,
    shape: tuple[int, ...] | None,
    generator: torch.Generator,
    batch_size: int,
    progress: bool,
    on_start: Callable[[torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fresh samples and their labels: class-balanced when the start or the chain is
    class-conditional, else None. on_start: see draw_samples."""
    from .generation import draw_samples

    labels = (
        torch.arange(n) % model.num_classes
        if sampler.start == "class" or sampler.conditional
        else None
    )
    x = draw_samples(
        model, n, sampler.sgld, start=sampler.start, conditional=sampler.conditional,
        gaussians=gaussians, labels=labels, shape=shape, generator=generator,
        batch_size=batch_size, progress=progress, on_start=on_start,
    )
    return x, labels


def save_grid(
    x01: torch.Tensor,
    path: Path,
    nrow: int,
    *,
    labels: torch.Tensor | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[Path, str]:
    """[0, 1] images as one readable PNG grid (at least ~400 px wide) and its layout. With
    labels (and at most 20 classes), one class per row, labelled on the left; else `nrow`
    images per row, row-major."""
    from ebjdat.grids import class_rows
    from ebjdat.grids import save_grid as write

    k = num_classes or 0
    if labels is not None and 0 < k <= 20:
        cells, width, rows = class_rows(x01, labels, k)
        names = [class_names[r] if class_names else str(r) for r in rows]
        return write(cells, path, width, row_labels=names), "one class per row"
    return write(x01, path, nrow), "row-major"


@dataclass(frozen=True)
class SampleSettings:
    """What sample_checkpoint draws and writes; out None: RUN/fresh_samples next to the
    checkpoint, data_root None: the checkpoint's."""

    n: int = 64
    sampler: SamplerOverrides = field(default_factory=SamplerOverrides)
    seed: int = 0
    batch_size: int = 500
    npz: bool = False  # also write OUT/samples.npz
    data_root: str | Path | None = None
    progress: bool = True
    out: str | Path | None = None

    def validate(self) -> SampleSettings:
        """SettingsError naming the field, before anything is loaded; returns self."""
        check_setting("n", self.n, low=1)
        self.sampler.validate("sampler.")
        check_setting("seed", self.seed, low=0, high=MAX_TORCH_SEED)
        check_setting("batch_size", self.batch_size, low=1)
        return self


def sample_checkpoint(
    path: str | Path, settings: SampleSettings, device: str | torch.device | None = None
) -> dict[str, Any]:
    """Draws settings.n fresh samples from the checkpoint at `path` and writes OUT/samples.png
    (class starts: one class per row), OUT/samples.json (the returned record of every
    setting) and, with settings.npz, OUT/samples.npz ([0, 1] samples, start labels, predicted
    labels, energies). CheckpointError / DatasetNotFoundError / SettingsError come before any
    sampling."""
    from ebjdat import ops

    settings.validate()
    device = pick_device(device)
    out = Path(settings.out) if settings.out else default_out(path, "fresh_samples")
    model, state, cfg = load_checkpoint(path, device)
    sampler = settings.sampler.resolve(cfg)
    root = data_root(cfg, settings.data_root)
    gaussians = (
        train_gaussians(cfg, root, model.num_classes) if sampler.start == "class" else None
    )
    shape = None if gaussians is not None else image_shape(state, cfg, root)

    n = settings.n
    generator = torch.Generator(device).manual_seed(settings.seed)
    start = time.perf_counter()
    x, labels = sample_with(
        model, n, sampler, gaussians=gaussians, shape=shape, generator=generator,
        batch_size=settings.batch_size, progress=settings.progress,
    )
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        xs = x.to(device)
        logits = torch.cat([model(xs[i : i + 500]) for i in range(0, len(xs), 500)])
        energy = ops.energy_head(logits).energy.cpu()
        pred = logits.argmax(dim=1).cpu()
    grid, layout = save_grid(
        x, out / "samples.png", max(1, math.ceil(math.sqrt(n))), labels=labels,
        num_classes=model.num_classes,
    )
    nrow = math.ceil(n / model.num_classes) if layout == "one class per row" else (
        max(1, math.ceil(math.sqrt(n)))
    )
    files = {"grid": str(grid)}
    if settings.npz:
        import numpy as np

        np.savez_compressed(
            out / "samples.npz",
            samples=x.numpy().astype(np.float32),
            start_labels=(labels if labels is not None else torch.full((n,), -1)).numpy(),
            predicted=pred.numpy(),
            energy=energy.numpy(),
        )
        files["npz"] = str(out / "samples.npz")
    finite = torch.isfinite(energy)
    bad, _ = non_finite_weights(model)
    warnings = []
    if bad:
        warnings.append(f"the checkpoint's weights are not finite ({bad[0]} and others)")
    if not bool(finite.all()):
        warnings.append(
            f"{int((~finite).sum())} of {len(energy)} samples have a non-finite energy; "
            "energy_mean is over the finite ones"
        )
    record = {
        "checkpoint": str(path),
        "dataset": cfg.data.dataset,
        "preset": cfg.preset,
        "n": n,
        **sampler.record(),
        "seed": settings.seed,
        "device": str(device),
        "batch_size": settings.batch_size,
        "grid_columns": nrow,
        "grid_layout": layout,
        "time_s": round(elapsed, 3),
        "predicted_class_counts": torch.bincount(pred, minlength=model.num_classes).tolist(),
        "files": files,
        "warnings": warnings,
    }
    if bool(finite.any()):
        record["energy_mean"] = float(energy[finite].mean())
    (out / "samples.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
