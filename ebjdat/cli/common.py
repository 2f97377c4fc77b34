"""What the command-line tools share: the one-line usage error, a parser whose own errors are
one line too, and the --device check."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (argparse prints the whole usage block first), so that every
    mistake a user can make is answered the same way: `prog: error: ...` on one line, exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviations: `--epoch 3` must be an error, not a silent `--epochs 3`.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {one_line(message)} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def one_line(message: object) -> str:
    """A message folded onto one line (paths and values may hold newlines)."""
    return " ".join(str(message).split())


def report_error(prog: str, err: BaseException) -> int:
    """Prints `prog: error: <err>` as one line and returns the usage exit code."""
    print(f"{prog}: error: {one_line(err) or type(err).__name__}", file=sys.stderr)
    return EXIT_USAGE


def device_from(name: str | None, local_rank: int = 0) -> torch.device:
    """--device (default: cuda when available, else cpu), checked; a bare "cuda" means this
    process's GPU under torchrun (local_rank)."""
    if name is None:
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device(
            "cpu"
        )
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"--device {name!r} is not a device ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is visible")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: only cpu and cuda are supported")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def check_output_dir(flag: str, path: Path) -> None:
    """Fails early, with one line naming `flag`, when `path` cannot become an output directory
    (an existing file, or a place that is not writable); creates nothing."""
    from ebjdat.files import unwritable_reason

    reason = unwritable_reason(path)
    if reason is not None:
        raise UsageError(f"{flag} {path}: {reason}")


def check_backends(device: torch.device) -> None:
    """EBJDAT_BACKEND names a backend that cannot run here (e.g. cuda without a GPU, triton
    without a GPU or its interpreter): fail at start-up with one line, not mid-run."""
    from ebjdat.ops._library import backend, ops

    for op in ops():
        try:
            backend(op, device)
        except (RuntimeError, ValueError) as err:
            raise UsageError(one_line(err)) from None


# torch.Generator.manual_seed takes [-2**63, 2**64 - 1]; the CLIs take seeds >= 0.
MAX_TORCH_SEED = 2**64 - 1


def check_range(
    flag: str,
    value: float | None,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """UsageError naming `flag` unless `value` is None (not given) or a finite number within
    [low, high] (open ends with low_open / high_open): argparse's float() accepts nan and inf,
    which would otherwise fail late, deep inside a computation."""
    import math

    if value is None:
        return
    inside = (
        (isinstance(value, int) or math.isfinite(value))
        and (low is None or (value > low if low_open else value >= low))
        and (high is None or (value < high if high_open else value <= high))
    )
    if inside:
        return

    def fmt(v: float) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    if low is not None and high is not None:
        cond = f"in {'(' if low_open else '['}{fmt(low)}, {fmt(high)}{')' if high_open else ']'}"
    elif low is not None:
        cond = f"{'>' if low_open else '>='} {fmt(low)}"
    elif high is not None:
        cond = f"{'<' if high_open else '<='} {fmt(high)}"
    else:
        cond = ""
    if isinstance(value, float):
        want = f"a finite number {cond}".rstrip()
    else:
        want = f"an integer {cond}" if cond.startswith("in") else cond
    raise UsageError(f"{flag} must be {want}, got {fmt(value)}")
