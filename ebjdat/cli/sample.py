"""`ebjdat-sample`: draw fresh samples from a trained EB-JDAT / JEM checkpoint by SGLD.

Chains start from uniform noise or from per-class Gaussians fitted to the training split (the
informative init of JEM++ / SADA-JEM) and run --steps SGLD steps (default 100) with the
checkpoint's own sampler settings unless overridden. Unlike the replay buffer stored in the
checkpoint, these samples are new: they show what the model generates from scratch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ebjdat.checks import SettingsError
from ebjdat.cpu_allocator import tune_cpu_allocator
from ebjdat.eval.checkpoints import check_checkpoint_path, default_out
from ebjdat.eval.fresh_samples import (
    FROM_CONFIG,
    SamplerOverrides,
    SampleSettings,
    sample_checkpoint,
)

from .common import Parser, UsageError, check_backends, check_output_dir, device_from, report_error

PROG = "ebjdat-sample"


# ---- flags shared with ebjdat-eval ---------------------------------------------------------------


def optional_float(text: str) -> float | None:
    """argparse type: a float, or none/off for "no value" (e.g. no gradient clip)."""
    if text.strip().lower() in ("none", "off", "no"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def output_dir(args: argparse.Namespace, name: str) -> Path:
    """--out (or RUN/<name> next to the checkpoint), checked to be writable before any work."""
    out = Path(args.out) if args.out else default_out(args.checkpoint, name)
    check_output_dir("--out" if args.out else "--out (default)", out)
    return out


def sampler_overrides(args: argparse.Namespace, prefix: str = "") -> SamplerOverrides:
    """The SamplerOverrides of the add_sampler_flags flags."""

    def flag(name: str) -> Any:
        return getattr(args, prefix + name)

    return SamplerOverrides(
        start=flag("start"),
        steps=flag("steps"),
        step_size=flag("step_size"),
        noise_std=flag("noise_std"),
        grad_clip=flag("grad_clip"),
        bn_train=flag("bn_train"),
        conditional=bool(flag("conditional")),
    )


def settings_error(err: SettingsError, prefix: str = "") -> UsageError:
    """A settings field's error, worded with the flag that sets it: e.g. batch_size ->
    --batch-size, and the sampler's fields -> --<prefix>steps and so on."""
    group, _, name = err.field.rpartition(".")
    flag = (prefix if group.endswith("sampler") else "") + name
    return UsageError(f"--{flag.replace('_', '-')} {err.problem}")


def add_sampler_flags(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The SGLD flags (ebjdat-eval prefixes them with gen-)."""
    p.add_argument(
        f"--{prefix}start",
        choices=("noise", "class"),
        help="chain starts: U(-1, 1) noise or the per-class Gaussians of the training "
        "split (default: the checkpoint's buffer init)",
    )
    p.add_argument(
        f"--{prefix}steps",
        type=int,
        metavar="S",
        help="SGLD steps per chain (default: the checkpoint's sgld.steps, the length its "
        "training chains ran)",
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


# ---- the command ---------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "outputs: OUT/samples.png (class starts: one class per row), OUT/samples.json "
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


def settings_from(args: argparse.Namespace) -> SampleSettings:
    """The SampleSettings of the flags, checked (UsageError naming the flag)."""
    settings = SampleSettings(
        n=args.n,
        sampler=sampler_overrides(args),
        seed=args.seed,
        batch_size=args.batch_size,
        npz=args.npz,
        data_root=args.data_root,
        progress=not args.no_progress,
    )
    try:
        return settings.validate()
    except SettingsError as err:
        raise settings_error(err) from None


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from dataclasses import replace

    from ebjdat.checkpoint import CheckpointError
    from ebjdat.data import DatasetNotFoundError

    try:
        settings = settings_from(args)
        device = device_from(args.device)
        check_backends(device)
        check_checkpoint_path(args.checkpoint)
        out = output_dir(args, "fresh_samples")
        record = sample_checkpoint(args.checkpoint, replace(settings, out=out), device)
    except SettingsError as err:
        return report_error(PROG, settings_error(err))
    except (UsageError, CheckpointError, DatasetNotFoundError) as err:
        return report_error(PROG, err)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(f"wrote {args.n} samples to {out} ({record['time_s']:.1f} s of SGLD)")
    for w in record["warnings"]:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    return 0


def main() -> None:
    tune_cpu_allocator()
    raise SystemExit(run())


if __name__ == "__main__":
    main()
