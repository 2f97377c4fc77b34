"""What the command-line tools share: the one-line usage error, a parser whose own errors are
one line too, and the --device check."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch

from ebjdat.checks import range_problem

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
    """--device (default: cuda when available, else cpu), checked to exist here; a bare "cuda"
    means this process's GPU under torchrun (local_rank)."""
    if name is None:
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device(
            "cpu"
        )
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise UsageError(
            f"--device: unknown device {name!r} ({err}); use cpu, cuda or cuda:N"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is visible")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise UsageError(
            f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
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
    [low, high] (open ends with low_open / high_open); worded as the library's settings checks."""
    problem = range_problem(value, low=low, high=high, low_open=low_open, high_open=high_open)
    if problem is not None:
        raise UsageError(f"{flag} {problem}")
