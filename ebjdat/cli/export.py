"""`ebjdat-export`: a trained checkpoint's classifier as DIR/model.safetensors plus DIR/model.json
(the model config, its [0, 1] input range and input shape, and where it came from), shareable
without ebjdat's training checkpoint format. Load it back with `ebjdat.load_classifier("DIR")`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import Parser, UsageError, one_line, report_error

PROG = "ebjdat-export"
EXIT_WRITE_FAILED = 1


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "a user model whose checkpoint records no builder exports too; load it with "
            'ebjdat.load_classifier("DIR", model=<the untrained module>)'
        ),
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint written by ebjdat-train/fit")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the export into")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an export already in DIR (other files in DIR are left alone)",
    )
    return p


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from ebjdat.checkpoint import CheckpointError
    from ebjdat.export import ExportError, export_checkpoint, how_to_load, out_dir_problem

    out = Path(args.out)
    try:
        problem = out_dir_problem(out, args.overwrite, overwrite_flag="--overwrite")
        if problem is not None:
            raise UsageError(f"--out {out}: {problem}")
        export_checkpoint(args.checkpoint, out, overwrite=args.overwrite)
    except (UsageError, CheckpointError, ExportError) as err:
        return report_error(PROG, err)
    except OSError as err:  # the disk filled up or went away mid-write: earlier files are intact
        print(f"{PROG}: error: writing {out} failed: {one_line(err)}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(f"wrote {out / 'model.safetensors'} and {out / 'model.json'}")
    print(f"load it with: {how_to_load(out)}")
    return 0


def main() -> None:
    raise SystemExit(run())


if __name__ == "__main__":
    main()
