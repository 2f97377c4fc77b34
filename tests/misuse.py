"""Harness for the table-driven CLI misuse tests: run a CLI in this process, and check that a user
mistake gives exit code 2, exactly one line on stderr that names the cause, and leaves every
watched directory byte-identical (files, their contents and their modes)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Case:
    """One misuse: the CLI's argv (`{tmp}`, `{run}`, `{ckpt}` are filled in by the test), the
    text the one stderr line must contain, and environment variables set for the call."""

    name: str
    argv: tuple[str, ...]
    message: str
    env: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return self.name


def tree_state(root: Path) -> dict[str, tuple[int, str]]:
    """relative path -> (mode, sha256 of the contents; "" for a directory), for every entry."""
    if not root.exists():
        return {}
    out: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = (p.stat().st_mode, "")
        for name in filenames:
            p = Path(dirpath, name)
            out[str(p.relative_to(root))] = (
                p.stat().st_mode,
                hashlib.sha256(p.read_bytes()).hexdigest(),
            )
    return out


def call(main: Callable[[Sequence[str]], int | None], argv: Sequence[str]) -> int:
    """The exit code of `main(argv)`, whether it returns it or raises SystemExit."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    return 0 if code is None else int(code)


def check_misuse(
    main: Callable[[Sequence[str]], int | None],
    argv: Sequence[str],
    message: str,
    *,
    prog: str,
    capsys: pytest.CaptureFixture[str],
    watch: Sequence[Path],
) -> str:
    """Runs one misuse and asserts the contract; returns the stderr line (for the note's table)."""
    before = {str(root): tree_state(root) for root in watch}
    capsys.readouterr()
    code = call(main, argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit code {code}, stderr:\n{err}"
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert message.lower() in lines[0].lower(), f"{message!r} not in {lines[0]!r}"
    after = {str(root): tree_state(root) for root in watch}
    assert after == before, "a failed command changed files it was not asked to create"
    log = os.environ.get("EBJDAT_MISUSE_LOG")  # a table of every case, for reports
    if log:
        with open(log, "a") as f:
            f.write(f"{prog} {' '.join(argv)}\t{code}\t{lines[0]}\n")
    return lines[0]


def run_read_only(place: Path, argv: Sequence[str], timeout: float = 180):  # noqa: ANN201
    """Runs `argv` (a command) with `place` read-only, as a real read-only mount would make it:
    as root (for whom file modes deny nothing) inside a private mount namespace with a read-only
    bind mount of `place` that vanishes with the process; otherwise with the write bits removed.
    Skips when neither is possible here."""
    import shutil as _shutil
    import subprocess

    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [place, *place.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
    if _shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to make a read-only mount as root")
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(place), "true"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here: {probe.stderr.strip()}")
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(place), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
