"""Running a step's subprocess (run_logged: its own process group, live output, the whole log,
SIGINT then SIGKILL when over its time) and what it gives back (Run); capping a kept log;
printing banners and tables."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import GRACE_S, LOG_CAP_BYTES, ROOT, TAIL_LINES


@dataclass
class Run:
    """One subprocess: exit code (None: it could not start), the last lines of its output, its
    duration, whether it was stopped for running out of time, and where its whole log is."""

    rc: int | None
    tail: list[str]
    seconds: float
    timed_out: bool = False
    log: Path | None = None

    def text(self) -> str:
        """The whole output (from the log when there is one)."""
        if self.log is not None and self.log.exists():
            return self.log.read_text(errors="replace")
        return "\n".join(self.tail)

    def record(self, command: Sequence[str] | None = None) -> dict:
        out: dict = {"rc": self.rc, "seconds": round(self.seconds, 1), "timed_out": self.timed_out}
        if command is not None:
            out["command"] = " ".join(map(str, command))
        return out


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_logged(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    echo: bool = True,
    log: Path | None = None,
    timeout: float | None = None,
    grace: float = GRACE_S,
    cwd: Path = ROOT,
) -> Run:
    """Runs `cmd` in its own process group, echoing its output live (when `echo`), keeping the
    whole log in `log` and the last lines for the results. After `timeout` seconds the group
    gets SIGINT, and SIGKILL `grace` seconds later if it is still there."""
    start = time.monotonic()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )
    except OSError as err:
        return Run(None, [f"cannot start {cmd[0]}: {err}"], 0.0, log=None)
    sink = open(log, "w") if log is not None else None  # noqa: SIM115 - closed below

    def pump() -> None:
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if sink is not None:
                sink.write(line)
            if echo:
                print("    " + line, end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        try:
            proc.wait(timeout=None if timeout is None else max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(proc, signal.SIGINT)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            _signal_group(proc, signal.SIGKILL)  # whatever of the group is left
    except BaseException:  # Ctrl-C here: the group has its own session and did not get it
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        reader.join(timeout=5)
        if sink is not None:
            sink.close()
    seconds = time.monotonic() - start
    if timed_out:
        note = (
            f"[gpu_check] timed out after {timeout:.0f} s: SIGINT, then SIGKILL after "
            f"{grace:.0f} s if still running"
        )
        tail.append(note)
        if log is not None:
            with open(log, "a") as f:
                f.write(note + "\n")
    return Run(proc.returncode, list(tail), seconds, timed_out, log)


def _cap_log(path: Path, limit: int = LOG_CAP_BYTES) -> None:
    """Keeps a log that comes back from a lent machine small: its head and tail."""
    if not path.exists() or path.stat().st_size <= limit:
        return
    data = path.read_bytes()
    head, tail = data[: limit // 10], data[-(limit - limit // 10) :]
    path.write_bytes(head + f"\n[... {len(data) - limit} bytes left out ...]\n".encode() + tail)


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _table(titles: Sequence[str], rows: Iterable[Sequence[object]], indent: str = "    ") -> None:
    rows = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(t), *(len(r[i]) for r in rows)]) for i, t in enumerate(titles)]
    for row in [list(titles), *rows]:
        print(indent + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)
