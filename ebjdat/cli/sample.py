"""`ebjdat-sample`: draw fresh samples from a trained EB-JDAT / JEM checkpoint by SGLD.

Chains start from uniform noise or from per-class Gaussians fitted to the training split (the
informative init of JEM++ / SADA-JEM) and run --steps SGLD steps (default 100) with the
checkpoint's own sampler settings unless overridden. Unlike the replay buffer stored in the
checkpoint, these samples are new: they show what the model generates from scratch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ebjdat import ops
from ebjdat.cpu_allocator import tune_cpu_allocator

from .common import (
    MAX_TORCH_SEED,
    Parser,
    UsageError,
    check_backends,
    check_output_dir,
    check_range,
    device_from,
    report_error,
)

PROG = "ebjdat-sample"

FROM_CONFIG: Any = object()  # "flag not given": take the value from the checkpoint's config


# ---- helpers shared with ebjdat-eval -------------------------------------------------------------


def optional_float(text: str) -> float | None:
    """argparse type: a float, or none/off for "no value" (e.g. no gradient clip)."""
    if text.strip().lower() in ("none", "off", "no"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def check_checkpoint_path(path: str | Path) -> None:
    """CKPT must name a checkpoint file: checked before anything is loaded or created."""
    from ebjdat.checkpoint import CheckpointError

    p = Path(path)
    if p.is_dir():
        hint = next(
            (c for c in (p / "checkpoints" / "last.pt", p / "last.pt") if c.is_file()), None
        )
        tail = f"; did you mean {hint}?" if hint is not None else ""
        raise CheckpointError(f"checkpoint {path} is a directory, not a checkpoint file{tail}")
    if not p.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")


def config_of(state: dict[str, Any], path: str | Path) -> Any:
    """The checkpoint's training Config, validated, or a CheckpointError naming the problem."""
    from ebjdat.checkpoint import CheckpointError
    from ebjdat.train.config import ConfigError, from_dict

    tree = state.get("config")
    if tree is None:
        raise CheckpointError(f"checkpoint {path} holds no config")
    if not isinstance(tree, dict):
        raise CheckpointError(
            f"checkpoint {path}: its config is a {type(tree).__name__}, not a table"
        )
    try:
        return from_dict(tree).validate()
    except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} has no usable config ({first})") from None


def load_checkpoint(path: str | Path, device: torch.device) -> tuple[Any, dict[str, Any], Any]:
    """(model in eval mode, raw checkpoint state, Config); CheckpointError for anything that is
    not a readable ebjdat checkpoint, so the CLIs can answer with one line."""
    from ebjdat.checkpoint import CheckpointError, load
    from ebjdat.models.loading import model_from_state

    check_checkpoint_path(path)
    try:
        state = load(path, map_location="cpu")
    except OSError as err:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({err.strerror or type(err).__name__})"
        ) from None
    cfg = config_of(state, path)
    model = model_from_state(state, str(path)).to(device).eval()
    return model, state, cfg


def non_finite_weights(model: torch.nn.Module) -> tuple[list[str], int]:
    """(names of the parameters and buffers holding NaN or Inf, number of floating tensors)."""
    floats = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    return [k for k, v in floats.items() if not bool(torch.isfinite(v).all())], len(floats)


def check_sampler_flags(args: argparse.Namespace, prefix: str = "") -> None:
    """The SGLD flags of add_sampler_flags, checked before anything is loaded."""

    def check(name: str, **limits: Any) -> None:
        value = getattr(args, prefix + name)
        if value is not FROM_CONFIG:
            check_range(f"--{prefix}{name}".replace("_", "-"), value, **limits)

    check("steps", low=0)
    check("step_size", low=0.0)
    check("noise_std", low=0.0)
    check("grad_clip", low=0.0, low_open=True)


def output_dir(args: argparse.Namespace, name: str) -> Path:
    """--out (or RUN/<name> next to the checkpoint), checked to be writable before any work."""
    out = Path(args.out) if args.out else default_out(args.checkpoint, name)
    check_output_dir("--out" if args.out else "--out (default)", out)
    return out


def default_out(ckpt: str | Path, name: str) -> Path:
    """RUN/<name> for RUN/checkpoints/x.pt (next to metrics.jsonl), else <ckpt dir>/<name>."""
    parent = Path(ckpt).resolve().parent
    run = parent.parent if parent.name == "checkpoints" else parent
    return run / name


def replay_buffer(state: dict[str, Any]) -> torch.Tensor | None:
    """Rank 0's replay buffer ([N, C, H, W], internal [-1, 1]), or None (e.g. PGD-AT runs)."""
    try:
        buf = state["ranks"][0]["buffer"]["buffer"]
    except (KeyError, IndexError, TypeError):
        return None
    return buf if isinstance(buf, torch.Tensor) and buf.dim() == 4 and len(buf) else None


def _image_size(cfg: Any) -> int | None:
    return (cfg.data.image_size or None) if cfg.data.dataset == "imagefolder" else None


def image_shape(state: dict[str, Any], cfg: Any, root: str | None) -> tuple[int, ...]:
    """(C, H, W) of the model's images: from the replay buffer, else from the dataset."""
    from ebjdat.data import dataset_info

    buf = replay_buffer(state)
    if buf is not None:
        return tuple(buf.shape[1:])
    info = dataset_info(cfg.data.dataset, root, image_size=_image_size(cfg))
    return (info.channels, info.image_size, info.image_size)


def data_root(cfg: Any, flag: str | None) -> str | None:
    return flag or (cfg.data.root or None)


def train_images(cfg: Any, root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split as float [0, 1] images and labels (for Gaussians, FID references)."""
    from ebjdat.data import load_split_tensors, to_float01

    x, y = load_split_tensors(cfg.data.dataset, "train", root, cfg.data.download, _image_size(cfg))
    return to_float01(x), y


def fit_gaussians(cfg: Any, root: str | None, num_classes: int) -> Any:
    """The per-class Gaussians of the training split, as training fits them."""
    from ebjdat.models.jem import JEM
    from ebjdat.sampling import ClassGaussians

    x, y = train_images(cfg, root)
    return ClassGaussians().fit(JEM.to_internal(x), y, num_classes)


def sampler_settings(cfg: Any, args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """SGLD settings: flags over the checkpoint's [sgld] section (steps default 100)."""
    s = cfg.sgld

    def flag(name: str) -> Any:
        return getattr(args, prefix + name)

    return {
        "start": flag("start") or ("class" if s.init == "gaussian" else "noise"),
        "steps": 100 if flag("steps") is None else flag("steps"),
        "step_size": s.step_size if flag("step_size") is None else flag("step_size"),
        "noise_std": s.noise_std if flag("noise_std") is None else flag("noise_std"),
        "grad_clip": s.grad_clip if flag("grad_clip") is FROM_CONFIG else flag("grad_clip"),
        "clamp": bool(s.clamp),
        "bn_train": bool(s.bn_train) if flag("bn_train") is None else flag("bn_train"),
        "conditional": bool(flag("conditional")),
        "units": "internal [-1, 1] images (as the training sampler)",
    }


def add_sampler_flags(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The SGLD flags (ebjdat-eval prefixes them with gen-)."""
    p.add_argument(
        f"--{prefix}start",
        choices=("noise", "class"),
        help="chain starts: U(-1, 1) noise or the per-class Gaussians of the training "
        "split (default: the checkpoint's buffer init)",
    )
    p.add_argument(
        f"--{prefix}steps", type=int, metavar="S", help="SGLD steps per chain (default: 100)"
    )
    p.add_argument(
        f"--{prefix}step-size",
        type=float,
        metavar="A",
        help="SGLD step size, [-1, 1] units (default: the checkpoint's sgld.step_size)",
    )
    p.add_argument(
        f"--{prefix}noise-std",
        type=float,
        metavar="S",
        help="SGLD noise std (default: the checkpoint's sgld.noise_std)",
    )
    p.add_argument(
        f"--{prefix}grad-clip",
        type=optional_float,
        default=FROM_CONFIG,
        metavar="C",
        help="clip gradients to +-C, or 'none' (default: the checkpoint's)",
    )
    p.add_argument(
        f"--{prefix}bn-train",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="BatchNorm in train mode while sampling (default: the checkpoint's "
        "sgld.bn_train; running statistics are restored afterwards)",
    )
    p.add_argument(
        f"--{prefix}conditional",
        action="store_true",
        help="sample p(x, y) for the start labels instead of p(x)",
    )


def sample_with(
    model: Any,
    n: int,
    settings: dict[str, Any],
    *,
    gaussians: Any,
    shape: tuple[int, ...] | None,
    generator: torch.Generator,
    batch_size: int,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fresh samples with the recorded sampler settings, and their labels: class-balanced when
    the start or the chain is class-conditional, else None."""
    from ebjdat.eval.generation import draw_samples

    labels = (
        torch.arange(n) % model.num_classes
        if settings["start"] == "class" or settings["conditional"]
        else None
    )
    keys = ("start", "steps", "step_size", "noise_std", "grad_clip", "clamp", "bn_train",
            "conditional")
    x = draw_samples(
        model, n, gaussians=gaussians, labels=labels, shape=shape, generator=generator,
        batch_size=batch_size, progress=progress, **{k: settings[k] for k in keys},
    )
    return x, labels


def save_grid(x01: torch.Tensor, path: Path, nrow: int) -> Path:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(x01, path, nrow=nrow, padding=1, pad_value=1.0)
    return path


# ---- the command ---------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "outputs: OUT/samples.png (class starts: one class per column), OUT/samples.json "
            "(every setting, for the record), OUT/samples.npz with --npz (samples in [0, 1], "
            "start labels, predicted labels, energies)"
        ),
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint written by ebjdat-train")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="output directory (default: RUN/fresh_samples next to the checkpoint)",
    )
    p.add_argument("--n", type=int, default=64, metavar="N", help="number of samples (default 64)")
    add_sampler_flags(p)
    p.add_argument("--seed", type=int, default=0, help="seed for starts and noise (default 0)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=500,
        metavar="B",
        help="chains per SGLD batch (default 500)",
    )
    p.add_argument("--npz", action="store_true", help="also write OUT/samples.npz")
    p.add_argument(
        "--data-root",
        metavar="DIR",
        help="where datasets live, for class starts (default: the checkpoint's, "
        "$EBJDAT_DATA or ./data)",
    )
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _check_args(args: argparse.Namespace) -> None:
    check_range("--n", args.n, low=1)
    check_sampler_flags(args)
    check_range("--seed", args.seed, low=0, high=MAX_TORCH_SEED)
    check_range("--batch-size", args.batch_size, low=1)


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from ebjdat.checkpoint import CheckpointError
    from ebjdat.data import DatasetNotFoundError

    try:
        _check_args(args)
        device = device_from(args.device)
        check_backends(device)
        check_checkpoint_path(args.checkpoint)
        out = output_dir(args, "fresh_samples")
        model, state, cfg = load_checkpoint(args.checkpoint, device)
        settings = sampler_settings(cfg, args)
        root = data_root(cfg, args.data_root)
        gaussians = (
            fit_gaussians(cfg, root, model.num_classes) if settings["start"] == "class" else None
        )
        shape = None if gaussians is not None else image_shape(state, cfg, root)
    except (UsageError, CheckpointError, DatasetNotFoundError) as err:
        return report_error(PROG, err)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    try:
        _sample(args, model, state, cfg, settings, gaussians, shape, device, out)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


def _sample(
    args: argparse.Namespace,
    model: Any,
    state: dict[str, Any],
    cfg: Any,
    settings: dict[str, Any],
    gaussians: Any,
    shape: tuple[int, ...] | None,
    device: torch.device,
    out: Path,
) -> None:
    generator = torch.Generator(device).manual_seed(args.seed)
    start = time.perf_counter()
    x, labels = sample_with(
        model, args.n, settings, gaussians=gaussians, shape=shape, generator=generator,
        batch_size=args.batch_size, progress=not args.no_progress,
    )
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        xs = x.to(device)
        logits = torch.cat([model(xs[i : i + 500]) for i in range(0, len(xs), 500)])
        energy = ops.energy_head(logits).energy.cpu()
        pred = logits.argmax(dim=1).cpu()
    nrow = (
        model.num_classes
        if labels is not None and model.num_classes <= 20
        else max(1, math.ceil(math.sqrt(args.n)))
    )
    files = {"grid": str(save_grid(x, out / "samples.png", nrow))}
    if args.npz:
        import numpy as np

        np.savez_compressed(
            out / "samples.npz",
            samples=x.numpy().astype(np.float32),
            start_labels=(labels if labels is not None else torch.full((args.n,), -1)).numpy(),
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
        "checkpoint": str(args.checkpoint),
        "dataset": cfg.data.dataset,
        "preset": cfg.preset,
        "n": args.n,
        **settings,
        "seed": args.seed,
        "device": str(device),
        "batch_size": args.batch_size,
        "grid_columns": nrow,
        "grid_layout": "one class per column"
        if nrow == model.num_classes and labels is not None
        else "row-major",
        "time_s": round(elapsed, 3),
        "predicted_class_counts": torch.bincount(pred, minlength=model.num_classes).tolist(),
        "files": files,
        "warnings": warnings,
    }
    if bool(finite.any()):
        record["energy_mean"] = float(energy[finite].mean())
    (out / "samples.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.n} samples to {out} ({elapsed:.1f} s of SGLD)")
    for w in warnings:
        print(f"{PROG}: warning: {w}", file=sys.stderr)


def main() -> None:
    tune_cpu_allocator()
    raise SystemExit(run())


if __name__ == "__main__":
    main()
