"""`ebjdat-train`: train a classifier to be accurate, robust and generative with EB-JDAT.

With no arguments it trains the `digits` preset (embedded data, a few minutes on a CPU) into
./runs/<timestamp>. Under `torchrun --nproc_per_node=N` it trains data-parallel, one replay
buffer per process, with rank 0 writing checkpoints and logs.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import shlex
import signal
import sys
import threading
from pathlib import Path

from ebjdat.cpu_allocator import tune_cpu_allocator

from .common import Parser, UsageError, check_backends, device_from, one_line, report_error

PROG = "ebjdat-train"


def parser() -> argparse.ArgumentParser:
    from ebjdat.train import preset_names

    p = Parser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "config precedence: preset < --config file < flags < --set overrides\n"
            f"presets: {', '.join(preset_names())} (details: --list-presets)\n"
            "outputs: OUT/checkpoints/{last,best}.pt, OUT/metrics.jsonl, OUT/samples/*.png, "
            "OUT/config.toml"
        ),
    )
    p.add_argument(
        "--preset", help="named configuration (default: digits, or the one a --config file extends)"
    )
    p.add_argument(
        "--config",
        metavar="FILE.toml",
        help='TOML file of [section] key = value settings; `extends = "PRESET"` builds on a preset',
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config value, e.g. --set sgld.steps=20 (repeatable)",
    )
    p.add_argument("--dataset", help="digits, cifar10, cifar100, svhn or imagefolder")
    p.add_argument(
        "--data-root", metavar="DIR", help="where datasets live (default: $EBJDAT_DATA or ./data)"
    )
    p.add_argument("--download", action="store_true", help="download missing datasets")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<timestamp>)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, exactly",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing ebjdat run at --out (only a directory that is an ebjdat run, "
        "and only once the new run's first checkpoint is written)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    return p


def _list_presets() -> None:
    from ebjdat.train import load_preset, preset_names

    for name in preset_names():
        text = " ".join(load_preset(name).description.split())
        print(f"{name:16s} {text}")


def resolve_config(args: argparse.Namespace):  # noqa: ANN201 - returns ebjdat.train.Config
    from ebjdat.train import config as C

    if args.config:
        base = C.load_preset(args.preset) if args.preset else None
        cfg = C.load_file(args.config, base)
        if base is None and cfg.preset == "digits" and not _extends(args.config):
            cfg.preset = Path(args.config).stem
    else:
        cfg = C.load_preset(args.preset or "digits")
    for section, values in _flag_values(args).items():
        C.apply(cfg, {section: values}, source="flags")
    for assignment in args.set:
        C.override(cfg, assignment)
    return cfg.validate()


def _flag_values(args: argparse.Namespace) -> dict[str, dict]:
    """The config values given as flags, by section (flags not given are left out)."""
    flags = {
        "data": {
            "dataset": args.dataset,
            "root": args.data_root,
            "download": True if args.download else None,
        },
        "train": {"epochs": args.epochs, "seed": args.seed},
    }
    return {s: {k: v for k, v in values.items() if v is not None} for s, values in flags.items()}


def _extends(path: str) -> bool:
    import tomllib

    from ebjdat.train.config import ConfigError, read_config_text

    try:
        return "extends" in tomllib.loads(read_config_text(path))
    except (ConfigError, tomllib.TOMLDecodeError):
        return False


def _run_dir(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    return Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _check_resume_flags(args: argparse.Namespace) -> None:
    """--resume continues a run with its own config: flags that would change it are refused
    (only the keys in RESUME_SAFE_KEYS may change), never silently ignored."""
    from ebjdat.train.config import RESUME_SAFE_KEYS

    if args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pass one of them")
    for flag, value in (
        ("--preset", args.preset),
        ("--config", args.config),
        ("--dataset", args.dataset),
        ("--seed", args.seed),
    ):
        if value is not None:
            raise UsageError(
                f"{flag} cannot be used with --resume: a resumed run keeps its config (it may "
                f"change only {', '.join(RESUME_SAFE_KEYS)})"
            )
    for assignment in args.set:
        key = assignment.split("=", 1)[0].strip()
        if key not in RESUME_SAFE_KEYS:
            raise UsageError(
                f"--set {key} cannot change on --resume; a resumed run may change only "
                f"{', '.join(RESUME_SAFE_KEYS)}"
            )


def _resume_config(args: argparse.Namespace, out: Path):  # noqa: ANN202 - (Config, loaded)
    """The run's config from its last checkpoint, with the safe changes the flags ask for, and
    the checkpoint as loaded (state, saved config), for Trainer.resume."""
    from ebjdat.files import unwritable_reason
    from ebjdat.train.config import apply, override
    from ebjdat.train.trainer import load_training

    last = out / "checkpoints" / "last.pt"
    if not last.is_file():
        raise UsageError(f"--resume: {last} does not exist")
    for place in (out, last.parent):
        reason = unwritable_reason(place)
        if reason is not None:
            raise UsageError(f"--resume: {reason}")
    state, saved = load_training(last)
    cfg = copy.deepcopy(saved)
    for section, values in _flag_values(args).items():
        apply(cfg, {section: values}, source="flags")
    for assignment in args.set:
        override(cfg, assignment)
    return cfg.validate(), (state, saved)


def _on_rank0(distributed, fn, errors: tuple[type[Exception], ...]):  # noqa: ANN001, ANN202
    """fn() on rank 0 only, its result (or its usage error) shared with every rank, so that all
    processes agree, e.g. on a timestamped run directory, or all stop on the same error."""
    if distributed.world_size == 1:
        return fn()
    import torch.distributed as dist

    box: list = [None]
    if distributed.main:
        try:
            box[0] = ("ok", fn())
        except errors as err:
            box[0] = ("error", str(err))
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise UsageError(value)
    return value


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.list_presets:
        _list_presets()
        return 0
    from ebjdat.checkpoint import CheckpointError
    from ebjdat.data import DatasetNotFoundError
    from ebjdat.train import ConfigError, Trainer, TrainingInterrupted, TrainingStopped
    from ebjdat.train.build import build_training
    from ebjdat.train.config import from_dict
    from ebjdat.train.parallel import Distributed
    from ebjdat.train.rundir import RunDirError, check_new

    loaded: list = [None]  # the checkpoint that prepare() read for --resume

    def prepare() -> tuple[str, dict]:
        """The run directory and config, checked by one process; nothing is written yet."""
        out = _run_dir(args)
        if args.resume:
            _check_resume_flags(args)
            cfg, loaded[0] = _resume_config(args, out)
        else:
            check_new(out, overwrite=args.overwrite)
            cfg = resolve_config(args)
        return str(out), cfg.to_dict()

    usage_errors = (UsageError, ConfigError, CheckpointError, RunDirError, DatasetNotFoundError)
    previous_term = None
    if threading.current_thread() is threading.main_thread():
        # Until the trainer takes over (it saves first), SIGTERM stops like Ctrl-C does.
        previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    distributed = Distributed.from_environment()
    started = False
    out: Path | None = None
    try:
        device = device_from(args.device, distributed.local_rank)
        check_backends(device)
        out_name, tree = _on_rank0(distributed, prepare, usage_errors)
        out, cfg = Path(out_name), from_dict(tree).validate()
        parts = build_training(config=cfg, device=device, distributed=distributed)
        trainer = Trainer.from_parts(parts, out_dir=out, progress_bar=not args.no_progress)
        if args.resume:
            # A single process read the checkpoint already; other ranks read their own.
            trainer.resume(loaded[0] if distributed.world_size == 1 else None)
        else:
            trainer.start(overwrite=args.overwrite)
        started = True
        if distributed.main:
            print(f"training preset {cfg.preset!r} on {cfg.data.dataset} ({device}) into {out}")
        last = trainer.fit()
        del trainer
        if distributed.main and last:
            metric = cfg.train.select_metric
            print(
                f"done: {out} (last epoch {metric} {last.get(metric, float('nan')):.4f}; best "
                f"model in {out / 'checkpoints' / 'best.pt'})"
            )
        return 0
    except usage_errors as err:
        return report_error(PROG, err)
    except TrainingStopped as err:
        print(f"{PROG}: stopped: {one_line(err)}", file=sys.stderr)
        return 1
    except TrainingInterrupted as err:
        print(
            f"{PROG}: interrupted by {one_line(err)}; continue with: "
            f"ebjdat-train --out {shlex.quote(str(out))} --resume",
            file=sys.stderr,
        )
        return 128 + err.signum
    except KeyboardInterrupt:
        where = (
            f"the last checkpoint in {out} is intact; continue with: ebjdat-train --out "
            f"{shlex.quote(str(out))} --resume"
            if started
            else "nothing was written"
        )
        print(f"{PROG}: interrupted; {where}", file=sys.stderr)
        return 130
    except OSError as err:
        # A disk that filled up or went read-only mid-run: the atomic writes left the last
        # checkpoint whole.
        print(f"{PROG}: error: cannot write {err.filename or out}: {err.strerror}", file=sys.stderr)
        return 1
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        distributed.teardown()


def main() -> None:
    tune_cpu_allocator()
    raise SystemExit(run())


if __name__ == "__main__":
    main()
