"""Files that are never half-written, and output places checked before anything is written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Calls write(binary file) on a temporary file beside `path`, fsyncs it and renames it over
    `path`: readers see the old file or the new one, never half of one. The file gets the mode an
    ordinary new file would (0666 less the umask), not mkstemp's 0600, so a group can share a run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))


def unwritable_reason(path: str | Path) -> str | None:
    """Why `path` cannot become a directory we write into, or None if it can. Nothing is left
    behind: no directory is created and the probe file is removed at once."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{path} exists and is not a directory"
    probe_in = path
    while not probe_in.exists() and probe_in.parent != probe_in:
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        return f"{probe_in} is not a directory"
    # os.access says yes to root even on a read-only mount, so try for real.
    try:
        fd, probe = tempfile.mkstemp(prefix=".ebjdat-write-test-", dir=probe_in)
    except OSError as err:
        return f"cannot write in {probe_in} ({err.strerror})"
    os.close(fd)
    os.unlink(probe)
    return None
