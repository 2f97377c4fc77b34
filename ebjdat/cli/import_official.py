"""`ebjdat-import-official`: a checkpoint written by the official JEM, JEM++ or SADA-JEM code,
rewritten as an ebjdat checkpoint that `ebjdat-eval OUT.pt` evaluates under the standard protocol
(and `ebjdat.load_classifier(OUT.pt)` loads).

Formats (the official `CCF` model's state_dict, as each training script saves it):
  jem      wgrathwohl/JEM, wideresnet.Wide_ResNet (its unused `linear` head is dropped)
  jempp    sndnyang/JEMPP, models/wideresnet_yopo.Wide_ResNet or wideresnet.Wide_ResNet (the
           yopo `layer_one` / `other_layers` aliases are checked identical, then dropped)
  sadajem  sndnyang/SADAJEM, models/wideresnet.Wide_ResNet (with its 4th stage on 64-px data)

The architecture (depth, width, batch norm or none, classes, channels) is read off the tensors;
the unused `energy_output` head is dropped; the replay buffer is kept for the buffer-FID figure.
The file is read with torch.load(weights_only=True) only: one that needs pickled Python objects
is refused. Any problem is one line on stderr and exit status 2; OUT is written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

from .common import Parser, UsageError, one_line, report_error

PROG = "ebjdat-import-official"
EXIT_WRITE_FAILED = 1
# The ebjdat preset whose sampler and data settings match each method (used by ebjdat-eval's
# generation section; the imported weights are what matter).
BASE_PRESET = {"jem": "jem", "jempp": "ebjdat-jempp", "sadajem": "ebjdat-sadajem"}
# The dataset a model of this many classes was most likely trained on (SVHN has 10 classes too:
# pass --dataset svhn).
DEFAULT_DATASET = {10: "cifar10", 100: "cifar100"}


def parser() -> argparse.ArgumentParser:
    from ebjdat.data.datasets import DATASETS
    from ebjdat.models.official import FORMATS

    p = Parser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "example: ebjdat-import-official jempp_cifar10.pt --format jempp --out jempp.pt && "
            "ebjdat-eval jempp.pt"
        ),
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint file of the official code")
    p.add_argument(
        "--format", required=True, choices=FORMATS, help="which official code wrote CKPT"
    )
    p.add_argument("--out", required=True, metavar="OUT.pt", help="the ebjdat checkpoint to write")
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        help="the dataset the model was trained on, which ebjdat-eval tests on (default: "
        "cifar10 for 10 classes, cifar100 for 100, imagefolder for a 64-px SADA-JEM model)",
    )
    p.add_argument(
        "--data-root",
        metavar="DIR",
        help="where that dataset lives, recorded for ebjdat-eval (default: $EBJDAT_DATA or "
        "./data; imagefolder: the folder with train/ and test/)",
    )
    p.add_argument(
        "--no-buffer", action="store_true", help="leave the official replay buffer out of OUT"
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return p


def _dataset(name: str | None, cfg: dict[str, Any]) -> tuple[str, int]:
    """(dataset, image size) for the imported model, checked against its classes, channels and
    stages, so that ebjdat-eval does not fail (or silently mis-evaluate) later."""
    from ebjdat.data import dataset_info

    extra = bool(cfg["extra_stage"])
    if name is None:
        name = "imagefolder" if extra else DEFAULT_DATASET.get(cfg["num_classes"])
        if name is None:
            raise UsageError(
                f"the model has {cfg['num_classes']} classes; name its dataset with --dataset"
            )
    size = 64 if extra else 32  # the official models' image sizes (avg_pool2d(8) after 3 stages)
    if name == "imagefolder":
        return name, size
    info = dataset_info(name)
    if extra:
        raise UsageError(
            f"--dataset {name}: the model has SADA-JEM's 4th stage, made for 64-px images; "
            f"{name} has {info.image_size}-px images (use --dataset imagefolder)"
        )
    if (info.num_classes, info.channels, info.image_size) != (
        cfg["num_classes"],
        cfg["in_channels"],
        size,
    ):
        raise UsageError(
            f"--dataset {name} has {info.num_classes} classes, {info.channels} channels and "
            f"{info.image_size}-px images; the model has {cfg['num_classes']} classes, "
            f"{cfg['in_channels']} input channels and was built for {size}-px images"
        )
    return name, size


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_official(
    path: str | Path,
    fmt: str,
    out: str | Path,
    *,
    dataset: str | None = None,
    data_root: str | None = None,
    buffer: bool = True,
) -> dict[str, Any]:
    """Writes the ebjdat checkpoint `out` for the official checkpoint `path`; returns what it
    wrote (the state). UsageError / CheckpointError for any problem, before `out` is touched."""
    from ebjdat import checkpoint
    from ebjdat.models.official import FORMAT_NAMES, cfg_name, load_official
    from ebjdat.train.config import load_preset

    official = load_official(path, fmt)
    cfg = official.config
    name, size = _dataset(dataset, cfg)
    config = load_preset(BASE_PRESET[fmt])
    config.preset = f"imported-{fmt}"
    config.description = (
        f"imported from the official {FORMAT_NAMES[fmt]} checkpoint {Path(path).name} "
        f"({cfg_name(cfg)}); sampler settings of ebjdat's {BASE_PRESET[fmt]} preset"
    )
    config.data.dataset = name
    config.data.root = data_root or ""
    config.data.image_size = size if name == "imagefolder" else 0
    config.model.arch = f"wrn-{cfg['depth']}-{cfg['widen']}"
    config.model.norm = cfg["norm"]
    config.model.bn_momentum = cfg["bn_momentum"]
    config.model.dropout = cfg["dropout"]
    config.validate()
    state: dict[str, Any] = {
        "config": config.to_dict(),
        "model": official.model.state_dict(),
        "model_config": official.model.config,
        "imported_from": {"format": fmt, "file": str(path), "sha256": _sha256(Path(path))},
    }
    buf = official.replay_buffer
    if buffer and buf is not None:
        if tuple(buf.shape[2:]) != (size, size):
            raise UsageError(
                f"the replay buffer holds {list(buf.shape[1:])} images, not {size}-px ones; "
                "pass --no-buffer to leave it out"
            )
        # Where ebjdat's own checkpoints keep rank 0's buffer (in [-1, 1], as the official).
        state["ranks"] = [{"buffer": {"buffer": buf.float().contiguous()}}]
    checkpoint.save(out, state)
    return state


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from ebjdat.checkpoint import CheckpointError
    from ebjdat.checks import SettingsError
    from ebjdat.files import unwritable_reason
    from ebjdat.settings import ConfigError

    out = Path(args.out)
    try:
        if out.is_dir():
            raise UsageError(f"--out {out} is a directory; name the checkpoint file to write")
        if out.exists() and not args.overwrite:
            raise UsageError(f"--out {out} exists; pass --overwrite to replace it")
        if Path(args.checkpoint).resolve() == out.resolve():
            raise UsageError("--out must not be CKPT itself")
        reason = unwritable_reason(out.parent)
        if reason is not None:
            raise UsageError(f"--out {out}: {reason}")
        state = import_official(
            args.checkpoint,
            args.format,
            out,
            dataset=args.dataset,
            data_root=args.data_root,
            buffer=not args.no_buffer,
        )
    except (UsageError, CheckpointError, ConfigError, SettingsError, ValueError) as err:
        return report_error(PROG, err)
    except OSError as err:  # the disk filled up or went away mid-write: no partial OUT is left
        print(f"{PROG}: error: writing {out} failed: {one_line(err)}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    cfg = state["config"]
    kept = "with" if "ranks" in state else "without"
    print(
        f"wrote {out}: {cfg['model']['arch']} (norm {cfg['model']['norm']}) for "
        f"{cfg['data']['dataset']}, {kept} the replay buffer"
    )
    print(f"evaluate it with: ebjdat-eval {out}")
    return 0


def main() -> None:
    raise SystemExit(run())


if __name__ == "__main__":
    main()
