"""Harness for the table-driven CLI misuse tests: run a CLI in this process, and check that a user
mistake gives exit code 2, exactly one line on stderr that names the cause, and leaves every
watched directory byte-identical (files, their contents and their modes)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
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


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def _without_dac_override() -> None:
    """Root that is refused by mode bits like anyone else: CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH leave the bounding set, so the exec'd interpreter never has them."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def demotion(probe_dir: Path) -> Callable[[], None] | None:
    """A preexec_fn under which writing into a 0o555 directory fails (None: not root, mode bits
    suffice); skips when neither way works here."""
    if os.geteuid() != 0:
        return None
    check = (  # finds (without importing: that costs seconds) the packages, then tries a write
        "import importlib.util as u, sys\n"
        "assert u.find_spec('torch') and u.find_spec('ebjdat')\n"
        f"try:\n    open({str(probe_dir / 'x')!r}, 'w')\nexcept PermissionError:\n"
        "    sys.exit(0)\nsys.exit(3)"
    )
    for fn in (_as_nobody, _without_dac_override):
        try:
            proc = subprocess.run(
                [sys.executable, "-c", check], preexec_fn=fn, capture_output=True, timeout=120
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if proc.returncode == 0:
            return fn
    pytest.skip("cannot drop root's write access here (nobody cannot run this interpreter and "
                "CAP_DAC_OVERRIDE cannot be dropped)")  # fmt: skip


def run_read_only(place: Path, argv: Sequence[str], timeout: float = 180):  # noqa: ANN201
    """Runs `argv` (a command) with `place` and everything in it read-only by mode bits, as an
    unprivileged process (see demotion()), and restores the modes afterwards."""
    modes = {p: p.stat().st_mode for p in [place, *place.rglob("*")]}
    for p, mode in modes.items():
        p.chmod(mode & ~0o222)
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout,
            preexec_fn=demotion(place),
        )  # fmt: skip
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
