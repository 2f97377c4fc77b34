"""What the command-line tools share: the one-line usage error and the --device check."""

from __future__ import annotations

import torch

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


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
