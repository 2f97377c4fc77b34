"""`ebjdat-train`: train a classifier to be accurate, robust and generative with EB-JDAT.

With no arguments it trains the `digits` preset (embedded data, a few minutes on a CPU) into
./runs/<timestamp>. Under `torchrun --nproc_per_node=N` it trains data-parallel, one replay
buffer per process, with rank 0 writing checkpoints and logs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import shutil
import sys
from pathlib import Path

import torch

from ebjdat.cpu_allocator import tune_cpu_allocator

from .common import EXIT_USAGE, UsageError, device_from


def parser() -> argparse.ArgumentParser:
    from ebjdat.train import preset_names

    p = argparse.ArgumentParser(
        prog="ebjdat-train",
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
    p.add_argument("--overwrite", action="store_true", help="delete an existing --out first")
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
    flags = {
        "data": {
            "dataset": args.dataset,
            "root": args.data_root,
            "download": True if args.download else None,
        },
        "train": {"epochs": args.epochs, "seed": args.seed},
    }
    for section, values in flags.items():
        C.apply(cfg, {section: {k: v for k, v in values.items() if v is not None}}, source="flags")
    for assignment in args.set:
        C.override(cfg, assignment)
    return cfg.validate()


def _extends(path: str) -> bool:
    import tomllib

    try:
        return "extends" in tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False


def _run_dir(args: argparse.Namespace) -> Path:
    """The run directory, checked: an existing one is never replaced without --overwrite."""
    out = Path(args.out) if args.out else Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.resume:
        if not (out / "checkpoints" / "last.pt").is_file():
            raise UsageError(f"--resume: {out}/checkpoints/last.pt does not exist")
        return out
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise UsageError(
                f"run directory {out} exists; pass --resume to continue it or "
                "--overwrite to replace it"
            )
        shutil.rmtree(out)
    return out


def _write_config(cfg, out: Path) -> None:  # noqa: ANN001
    import tomli_w

    tree = cfg.to_dict()
    head = {k: tree.pop(k) for k in ("preset", "description")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(tomli_w.dumps(head | tree))


def _distributed():  # noqa: ANN202 - (Distributed, local_rank)
    from ebjdat.train.trainer import Distributed

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), 0
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return Distributed(dist.get_rank(), dist.get_world_size()), int(os.environ.get("LOCAL_RANK", 0))


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


def _teardown(distributed) -> None:  # noqa: ANN001
    if distributed.world_size > 1:
        import torch.distributed as dist

        gc.collect()
        dist.barrier()  # environment.md: this order avoids the gloo teardown abort
        dist.destroy_process_group()


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.list_presets:
        _list_presets()
        return 0
    from ebjdat.data import DatasetNotFoundError
    from ebjdat.train import ConfigError, Trainer, TrainingStopped
    from ebjdat.train.checkpoint import CheckpointError, load
    from ebjdat.train.config import apply, from_dict

    def prepare() -> tuple[str, dict]:
        """The run directory and config: checked, created and written by one process only."""
        out = _run_dir(args)
        if args.resume:
            cfg = from_dict(load(out / "checkpoints" / "last.pt")["config"])
            if args.epochs is not None:
                apply(cfg, {"train": {"epochs": args.epochs}}, source="--epochs")
            cfg.validate()
        else:
            cfg = resolve_config(args)
            _write_config(cfg, out)
        return str(out), cfg.to_dict()

    distributed, local_rank = _distributed()
    try:
        device = device_from(args.device, local_rank)
        out_name, tree = _on_rank0(distributed, prepare,
                                   (UsageError, ConfigError, CheckpointError))
        out, cfg = Path(out_name), from_dict(tree).validate()
        trainer = Trainer(
            cfg, out, device=device, distributed=distributed, progress_bar=not args.no_progress
        )
        if args.resume:
            trainer.resume()
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
    except (UsageError, ConfigError, DatasetNotFoundError, CheckpointError) as err:
        print(f"ebjdat-train: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingStopped as err:
        print(f"ebjdat-train: stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "ebjdat-train: interrupted; continue with --resume from the last checkpoint",
            file=sys.stderr,
        )
        return 130
    finally:
        _teardown(distributed)


def main() -> None:
    tune_cpu_allocator()
    raise SystemExit(run())


if __name__ == "__main__":
    main()
