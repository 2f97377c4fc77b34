"""Run directories that are never lost: a new run is built in a hidden sibling and renamed into
place only once its first checkpoint exists, `overwrite` replaces only what is recognisably an
ebjdat run (moved aside, deleted once the new run stands), and a resumed checkpoint must carry
the run's own id.

Layout of a run: `.ebjdat-run` (the marker: run id, creation time), `config.toml`,
`metrics.jsonl`, `checkpoints/`, `samples/`, `tensorboard/`, and what ebjdat-eval and
ebjdat-sample write beside them (`eval/`, `fresh_samples/`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from pathlib import Path

from ebjdat.files import unwritable_reason, write_text_atomic

MARKER = ".ebjdat-run"
KNOWN_ENTRIES = frozenset(
    {
        MARKER,
        "config.toml",
        "metrics.jsonl",
        "checkpoints",
        "samples",
        "tensorboard",
        "eval",
        "fresh_samples",
    }
)


class RunDirError(ValueError):
    """A run directory that cannot be used as asked; the message is one line for the user."""


def is_run(path: Path) -> bool:
    """Recognised by the marker, or (runs made before it existed) by config.toml + checkpoints/."""
    return (path / MARKER).is_file() or (
        (path / "config.toml").is_file() and (path / "checkpoints").is_dir()
    )


def run_id(path: Path) -> str | None:
    """The id in the run's marker, or None for a run without one."""
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    value = marker.get("run_id") if isinstance(marker, dict) else None
    return value if isinstance(value, str) else None


def _nonempty(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check_new(out: Path, *, overwrite: bool, flag: str = "--out") -> None:
    """Raises RunDirError unless a new run can be created at `out`; changes nothing."""
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise RunDirError(
            f"{flag} {out} is the current directory or above it; a run needs a directory of its "
            "own (e.g. runs/NAME)"
        )
    reason = unwritable_reason(out)
    if reason is None and out.exists():
        reason = unwritable_reason(out.parent)
    if reason is not None:
        raise RunDirError(f"{flag} {out}: {reason}")
    if not _nonempty(out):
        return
    if not overwrite:
        raise RunDirError(
            f"run directory {out} exists; pass --resume to continue it or --overwrite to replace it"
        )
    if not is_run(out):
        raise RunDirError(
            f"--overwrite: {out} is not an ebjdat run (no {MARKER} marker), so it is left alone; "
            "choose another --out"
        )
    foreign = sorted(p.name for p in out.iterdir() if p.name not in KNOWN_ENTRIES)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        shown = ", ".join(foreign[:3]) + more
        raise RunDirError(
            f"--overwrite: {out} holds files ebjdat did not write ({shown}); move them or choose "
            "another --out"
        )


class NewRun:
    """Creates a run directory atomically: files go into a hidden staging sibling, and
    `commit()` renames it to `out` (moving an old run aside first and deleting it only after,
    or putting it back if the rename fails). `abort()` removes the staging directory and any
    parents that begin() created."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out).absolute()
        self.id = uuid.uuid4().hex
        tag = f"{os.getpid()}-{self.id[:8]}"
        self.staging = self.out.parent / f".{self.out.name}.new-{tag}"
        self._aside = self.out.parent / f".{self.out.name}.old-{tag}"

    def begin(self, config_toml: str) -> Path:
        # The first missing ancestor, so that abort() also removes parents it created.
        self._created = self.staging
        while not self._created.parent.exists():
            self._created = self._created.parent
        self.staging.mkdir(parents=True)
        marker = {
            "run_id": self.id,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_text_atomic(self.staging / MARKER, json.dumps(marker) + "\n")
        write_text_atomic(self.staging / "config.toml", config_toml)
        return self.staging

    def commit(self) -> None:
        old = None
        if _nonempty(self.out):
            os.replace(self.out, self._aside)
            old = self._aside
        elif self.out.is_dir():
            self.out.rmdir()
        try:
            os.replace(self.staging, self.out)
        except BaseException:
            if old is not None:
                os.replace(old, self.out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        created = getattr(self, "_created", self.staging)
        for parent in [self.staging.parent, *self.staging.parent.parents]:
            if not (parent == created or created in parent.parents):
                break
            try:
                parent.rmdir()
            except OSError:
                break


def check_resume(out: Path, checkpoint_run_id: object, checkpoint_config: dict, path: Path) -> None:
    """Raises RunDirError when the checkpoint at `path` was not written by the run in `out`: its
    run id differs from the marker's, or (runs without ids) its config differs from config.toml
    in anything but the keys a resume may change."""
    own = run_id(out)
    if own is not None:
        if checkpoint_run_id != own:
            raise RunDirError(
                f"{path} belongs to another run (run id {str(checkpoint_run_id)[:12]}, this run "
                f"is {own[:12]}); it was not written here, so it is not resumed"
            )
        return
    toml = out / "config.toml"
    if not toml.is_file():
        return
    import tomllib

    try:
        recorded = tomllib.loads(toml.read_text())
    except (OSError, ValueError):
        return
    from .config import RESUME_SAFE_KEYS

    for section, values in checkpoint_config.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if f"{section}.{key}" in RESUME_SAFE_KEYS:
                continue
            theirs = recorded.get(section, {}).get(key, value)
            if theirs != value:
                raise RunDirError(
                    f"{path} does not belong to {out}: its {section}.{key} is {value!r}, the "
                    f"run's config.toml says {theirs!r}"
                )
