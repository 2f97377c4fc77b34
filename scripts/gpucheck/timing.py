"""The check's time: how long ago the enclosing one-shot command began (command_age, from
/proc), and the Budget that gives each step its timeout."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .config import MARGIN_S, TIMING

SHELLS = {"sh", "bash", "dash", "zsh", "ksh"}


def _process_age(pid: int | str) -> float | None:
    """Seconds since process `pid` started (Linux /proc), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _one_shot(argv: Sequence[str]) -> bool:
    """Whether argv is `sh -c "..."` (any shell, any flags with c) or `timeout ...`: a process
    that lives only as long as the one command it runs."""
    if not argv:
        return False
    name = Path(argv[0]).name.lstrip("-")
    if name == "timeout":
        return True
    if name not in SHELLS:
        return False
    for arg in argv[1:]:
        if not arg.startswith("-") or arg == "--":
            return False
        if re.fullmatch(r"-[a-zA-Z]*c[a-zA-Z]*", arg):
            return True
    return False


def command_age() -> tuple[float, str]:
    """(seconds, what) since the enclosing one-shot command began: this process's own start
    (a shell that ran `pip install ... && python gpu_check.py` may have exec'd into it), or its
    parent's when that is a `sh -c` or `timeout`. (0.0, "now") when neither is known."""
    best = (_process_age("self") or 0.0, "this process")
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        argv = ""
    parent = [a for a in argv.split("\0") if a]
    age = _process_age(os.getppid()) if _one_shot(parent) else None
    if age is not None and age > best[0]:
        best = (age, f"{Path(parent[0]).name} -c, pid {os.getppid()}")
    return best


class Budget:
    """The check's time: `total_s` from a start `used_s` seconds ago. A step may run for the
    time left minus what the later steps need at least (their TIMING min_s), at most its cap."""

    def __init__(
        self, total_s: float, *, used_s: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total_s = total_s
        self.used_before_s = used_s
        self.clock = clock
        self.start = clock() - used_s

    def left(self) -> float:
        return self.total_s - (self.clock() - self.start)

    def timeout(self, name: str, later: Iterable[str]) -> tuple[float | None, str]:
        """(seconds the step may run, "") or (None, why it is left out)."""
        timing = TIMING[name]
        held = sum(TIMING[n].min_s for n in later if not TIMING[n].optional)
        left = self.left()
        available = left - held - MARGIN_S
        if timing.cap_s is not None:
            available = min(available, timing.cap_s)
        if available < timing.min_s:
            return None, (
                f"out of time: {max(left, 0):.0f} s of the {self.total_s:.0f} s budget left, "
                f"{held:.0f} s of it held for later steps; {name} needs >= {timing.min_s:.0f} s"
            )
        return available, ""
