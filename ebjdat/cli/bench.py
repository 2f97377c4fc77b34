"""ebjdat-bench: microbenchmarks of the fused ops against eager and torch.compile PyTorch, and
of one training iteration against a faithful reference of the official loop.

    ebjdat-bench ops [--device D] [--json FILE] [--quick] [--dtype ...] [--no-compile]
    ebjdat-bench step [--device D] [--json FILE] [--quick] [--models ...] [--batch B]
    ebjdat-bench step --nproc N [--device D] [--json FILE] [--quick] [--models ...] [--batch B]

prints one table line per (op, shape, dtype) as it finishes and, with --json, writes
{"machine": {...}, "rows": [...]} (one row per implementation; see ebjdat.benchmarks.ops).
Bad input (unknown device, CUDA without a GPU, a bad --set, an unwritable --json, ...) is a
one-line error and exit status 2, found before anything is measured or written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import torch

from ebjdat.cpu_allocator import tune_cpu_allocator

from .common import (
    EXIT_USAGE,
    Parser,
    UsageError,
    check_backends,
    check_output_dir,
    check_range,
    device_from,
    one_line,
    report_error,
)

if TYPE_CHECKING:
    from ebjdat.benchmarks.ops import CaseResult

PROG = "ebjdat-bench"


class CommandParser(Parser):
    """The parser of a command (ops, step): its errors start with `ebjdat-bench: error:` like
    every other error of this tool, and name the command."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix(PROG).strip()
        print(f"{PROG}: error: {command}: {one_line(message)} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _json_path(value: str | None) -> Path | None:
    """Checked before the (long) run, so a typo or a read-only place does not throw the results
    away at the end."""
    if value is None:
        return None
    path = Path(value)
    if path.is_dir():
        raise UsageError(f"--json {value!r} is a directory; give a file name")
    check_output_dir("--json", path.parent)
    return path


# -- table --------------------------------------------------------------------------------------

_COLUMNS = (  # (title, width)
    ("op", 14),
    ("shape", 15),
    ("dtype", 8),
    ("eager ms", 10),
    ("compile ms", 10),
    ("fused ms", 10),
    ("fused GB/s", 10),
    ("% copy", 6),
    ("x eager", 8),
    ("x compile", 9),
    ("backend", 9),
)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _line(
    cells: Sequence[str], columns: Sequence[tuple[str, int]] = _COLUMNS, text_last: bool = True
) -> str:
    """Text columns (the first three, and the last when text_last) left-aligned, numbers
    right-aligned."""
    last = len(columns) - 1 if text_last else -1
    parts = [
        cell.ljust(width) if i < 3 or i == last else cell.rjust(width)
        for i, (cell, (_, width)) in enumerate(zip(cells, columns, strict=True))
    ]
    return "  ".join(parts).rstrip()


def table_header() -> str:
    header = _line([title for title, _ in _COLUMNS])
    return header + "\n" + "-" * len(header)


def table_row(result: CaseResult, copy_gbps: float | None) -> str:
    """One table line for an ebjdat.benchmarks.ops.CaseResult (speedups: t_other / t_fused)."""

    def ms(impl: str) -> str:
        t = result.timings.get(impl)
        if t is None:
            return "err" if impl in result.errors else "-"
        return format(t.median_s * 1e3, ".4g")

    fused_gbps = result.gbps("fused")
    frac = fused_gbps / copy_gbps * 100 if fused_gbps is not None and copy_gbps else None
    case = result.case
    return _line(
        [
            case.op,
            case.shape_str,
            case.dtype_str,
            ms("eager"),
            ms("compile"),
            ms("fused"),
            _num(fused_gbps, ".3g"),
            _num(frac, ".0f"),
            _num(result.speedup("eager"), ".2f"),
            _num(result.speedup("compile"), ".2f"),
            result.backend,
        ]
    )


# -- commands -----------------------------------------------------------------------------------


def run_ops(args: argparse.Namespace) -> int:
    from ebjdat.benchmarks import machine_info
    from ebjdat.benchmarks import ops as bench_ops

    check_range("--min-run-time", args.min_run_time, low=0.0, low_open=True)
    check_range("--threads", args.threads, low=1)
    json_path = _json_path(args.json)
    device = device_from(args.device)
    check_backends(device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    compile_ = (not args.quick) if args.compile is None else args.compile
    impls = [impl for impl in bench_ops.IMPLS if impl != "compile" or compile_]
    min_run_time = (
        args.min_run_time if args.min_run_time is not None else (0.01 if args.quick else 0.2)
    )
    dtypes = [bench_ops.DTYPES[name] for name in dict.fromkeys(args.dtype)]
    case_list = bench_ops.cases(args.sizes, dtypes, args.ops or bench_ops.OPS, quick=args.quick)

    machine = machine_info(device)
    machine.update(
        quick=args.quick,
        min_run_time=min_run_time,
        impls=impls,
        sizes=["quick"] if args.quick else args.sizes,
    )
    copy = None
    if not args.no_copy:
        numel = 1 << 20 if args.quick else bench_ops.COPY_NUMEL
        copy = bench_ops.copy_bandwidth(device, numel, min_run_time=min_run_time)
        machine["copy"] = copy
    copy_gbps = copy["gbps"] if copy else None

    print(
        f"{PROG} ops on {device} ({machine['device_name']}), torch {torch.__version__}, "
        f"{machine['torch_threads']} threads, min_run_time {min_run_time:g}s"
    )
    load = machine["load_avg"]
    if device.type == "cpu" and load and load[0] > 0.5 * (machine["cpu_count"] or 1):
        print(
            f"warning: load average {load[0]:.1f} on {machine['cpu_count']} cores: other "
            "processes inflate CPU timings, eager ones most",
            file=sys.stderr,
        )
    if copy is not None:
        print(f"copy bandwidth (float32 x{copy['numel']}): {copy['gbps']:.3g} GB/s")
    print(table_header(), flush=True)
    rows: list[dict] = []
    errors: list[str] = []
    for case in case_list:
        result = bench_ops.run_case(case, device, impls, min_run_time=min_run_time)
        print(table_row(result, copy_gbps), flush=True)
        rows += result.rows(copy_gbps)
        errors += [f"{case} [{impl}]: {msg}" for impl, msg in result.errors.items()]
        del result
    for message in errors:
        print(f"warning: {message}", file=sys.stderr)
    print(
        "speedups are t_eager / t_fused and t_compile / t_fused from this run; GB/s counts "
        "the bytes each op must move (see ebjdat.benchmarks.ops)"
    )
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
        print(f"wrote {json_path}")
    return 0


CIFAR10_TRAIN = 50_000


def epoch_min(iteration_s: float, batch: int) -> float:
    """Minutes per CIFAR-10 epoch at this iteration time (one iteration per labelled batch of
    the 50k training images, as the official loop runs)."""
    return math.ceil(CIFAR10_TRAIN / batch) * iteration_s / 60


def run_step(args: argparse.Namespace) -> int:
    from ebjdat.benchmarks import machine_info
    from ebjdat.benchmarks import step as bench_step

    # Every flag is checked before the device, so that a typo is caught on a machine without
    # the GPU too.
    json_path = _json_path(args.json)
    if args.batch < 2:
        raise UsageError(
            f"--batch must be >= 2 (the official sampler works in chunks of 2), got {args.batch}"
        )
    check_range("--repeats", args.repeats, low=1)
    models = ["wrn-10-1"] if args.quick else args.models
    batch = 4 if args.quick else args.batch
    repeats = 1 if args.quick else args.repeats
    _check_step_configs(models, batch, args.set or [], args.variants)
    device = device_from(args.device)
    check_backends(device)
    graphed = [v for v in args.variants if "cuda-graphs" in v]
    if graphed and device.type != "cuda":
        raise UsageError(f"--variants {' '.join(graphed)} needs --device cuda")
    if args.nproc is not None:
        return _run_scaling(args, device, models, batch, repeats, json_path)
    machine = machine_info(device)
    rates = {
        str(dt).removeprefix("torch."): bench_step.matmul_tflops(device, dt, quick=args.quick)
        for dt in (torch.float32, torch.bfloat16)
    }
    machine.update(
        quick=args.quick,
        repeats=repeats,
        preset="official",
        variants=list(args.variants),
        matmul_tflops=rates,
    )
    print(
        f"{PROG} step on {device} ({machine['device_name']}), preset 'official', "
        f"batch {batch}, median of {repeats}; measured matmul TFLOP/s: "
        + ", ".join(f"{k} {v:.3g}" for k, v in rates.items())
        + "; 'x floor' = time / (FLOPs at the bfloat16 matmul rate); 'C10 epoch min' = "
        "minutes per CIFAR-10 epoch (50k images) at this iteration time"
    )
    rows: list[dict] = []
    phases = bench_step.PHASES
    titles = ["model", "impl", "median s", *[f"{p} s" for p in phases], "GFLOP", "TFLOP/s",
              "x official", "C10 epoch min", "x floor"]
    columns = [(t, max(len(t), 9)) for t in titles]
    columns[1] = ("impl", 22)
    print(_line(titles, columns, text_last=False))
    for model in models:
        results = bench_step.run_step(
            model,
            batch,
            device,
            repeats=repeats,
            overrides=args.set or [],
            variants=tuple(args.variants),
        )
        base = results[0].median_s
        for r in results:
            floor_s = r.flops / (rates["bfloat16"] * 1e12)
            print(
                _line(
                    [
                        model,
                        r.impl,
                        f"{r.median_s:.3f}",
                        *[f"{r.phases[p]:.3f}" for p in phases],
                        f"{r.flops / 1e9:.1f}",
                        f"{r.tflops:.4f}",
                        f"{base / r.median_s:.2f}",
                        f"{epoch_min(r.median_s, batch):.1f}",
                        f"{r.median_s / floor_s:.1f}",
                    ],
                    columns,
                    text_last=False,
                ),
                flush=True,
            )
            rows.append(
                {
                    **r.row(),
                    "floor_s": floor_s,
                    "x_floor": r.median_s / floor_s,
                    "cifar10_epoch_min": epoch_min(r.median_s, batch),
                }
            )
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
        print(f"wrote {json_path}")
    return 0


def _run_scaling(
    args: argparse.Namespace,
    device: torch.device,
    models: Sequence[str],
    batch: int,
    repeats: int,
    json_path: Path | None,
) -> int:
    """`step --nproc N`: each model's iteration in 1 and in N processes, and the efficiency."""
    from ebjdat.benchmarks import machine_info
    from ebjdat.benchmarks.scaling import run_scaling

    check_range("--nproc", args.nproc, low=2)
    if args.variants != ["default"]:
        raise UsageError("--nproc times the default configuration only; drop --variants")
    if device.type == "cuda" and args.nproc > torch.cuda.device_count():
        raise UsageError(
            f"--nproc {args.nproc}: only {torch.cuda.device_count()} GPUs are visible"
        )
    machine = machine_info(device)
    machine.update(quick=args.quick, repeats=repeats, preset="official", nproc=args.nproc)
    note = (
        "the processes share this machine's CPU cores, so this is a sanity check of the "
        "data-parallel path, not a scaling measurement"
        if device.type == "cpu"
        else "one GPU per process, NCCL"
    )
    print(
        f"{PROG} step --nproc {args.nproc} on {device.type} ({machine['device_name']}), preset "
        f"'official', batch {batch} per process, median of {repeats}; efficiency = t(1) / "
        f"t({args.nproc}) at the same per-process batch; {note}"
    )
    titles = ["model", "processes", "1-proc s", "N-proc s", "speed-up", "efficiency"]
    columns = [(t, max(len(t), 10)) for t in titles]
    print(_line(titles, columns, text_last=False))
    rows = []
    for model in models:
        try:
            row = run_scaling(
                model, batch, device, args.nproc, repeats=repeats, sets=list(args.set or [])
            )
        except RuntimeError as err:
            raise UsageError(one_line(err)) from None
        cells = [model, str(args.nproc), f"{row['one_process_s']:.3f}",
                 f"{row['n_process_s']:.3f}", f"{row['speedup']:.2f}",
                 f"{row['efficiency']:.2f}"]  # fmt: skip
        print(_line(cells, columns, text_last=False), flush=True)
        rows.append(row)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
        print(f"wrote {json_path}")
    return 0


def _check_step_configs(
    models: Sequence[str], batch: int, sets: Sequence[str], variants: Sequence[str]
) -> None:
    """Builds every configuration the run will time (each model with each variant and every
    --set), so a bad --models entry or --set fails before the first benchmark, not after one."""
    from ebjdat.benchmarks import step as bench_step
    from ebjdat.models.jem import parse_arch
    from ebjdat.train.config import ConfigError

    for model in models:
        try:
            parse_arch(model)
        except ValueError as err:
            raise UsageError(f"--models {model}: {one_line(err)}") from None
    for assignment in sets:  # alone first, so the message names the --set at fault
        try:
            bench_step._config(models[0], batch, [assignment])
        except ConfigError as err:
            cause = one_line(err).removeprefix("--set: ")
            raise UsageError(f"--set {assignment}: {cause}") from None
    for model in models:
        for variant in variants:
            try:
                bench_step._config(model, batch, [*sets, *bench_step.VARIANTS[variant]])
            except ConfigError as err:
                given = " ".join(f"--set {a}" for a in sets) or "the preset"
                raise UsageError(
                    f"{given}: the config of {model} ({variant}) is invalid: {one_line(err)}"
                ) from None


def build_parser() -> argparse.ArgumentParser:
    from ebjdat.benchmarks import default_device
    from ebjdat.benchmarks import ops as bench_ops
    from ebjdat.benchmarks import step as bench_step

    parser = Parser(
        prog=PROG,
        description="Benchmark ebjdat's fused ops against the same math in eager PyTorch and "
        "under torch.compile.",
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=CommandParser
    )
    ops_parser = commands.add_parser(
        "ops",
        help="time sgld_step, pgd_step (linf, l2) and energy_head (fwd+bwd)",
        description="Time each op three ways on the same inputs: 'eager' (plain PyTorch), "
        "'compile' (torch.compile of that function) and 'fused' (the ebjdat op). Reports "
        "median time, GB/s of the traffic each op must move and the speedup of fused over the "
        "others within the same run.",
        epilog="Sizes: 'training' = 64 and 128 x 3x32x32 images and energy-head logits "
        "B in {64, 4096} x K in {10, 100, 1000}; 'buffer' = 1024 and 10000 x 3x32x32 (the JEM "
        "replay buffer); 'large' = 2**24-element cases for the GPU bandwidth goal.",
    )
    ops_parser.add_argument(
        "--device",
        default=default_device(),
        help="cpu, cuda or cuda:N (default: cuda when available, else cpu; here %(default)s)",
    )
    ops_parser.add_argument(
        "--json",
        metavar="FILE",
        help='also write {"machine": {...}, "rows": [...]} to FILE (one row per op, shape, '
        "dtype and impl)",
    )
    ops_parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: one tiny shape per op, very short timing, no torch.compile unless "
        "--compile is given; the numbers mean nothing",
    )
    ops_parser.add_argument(
        "--dtype",
        nargs="+",
        default=["float32"],
        choices=list(bench_ops.DTYPES),
        help="input dtype(s) (default: float32)",
    )
    ops_parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="include the torch.compile implementation (default: yes, except with --quick); "
        "--no-compile skips it, which saves minutes of compilation on a CPU",
    )
    ops_parser.add_argument(
        "--sizes",
        nargs="+",
        default=["training", "buffer"],
        choices=list(bench_ops.SIZE_SETS),
        help="shape sets to run (default: training buffer)",
    )
    ops_parser.add_argument(
        "--ops",
        nargs="+",
        choices=list(bench_ops.OPS),
        metavar="OP",
        help=f"only these ops (default: all of {', '.join(bench_ops.OPS)})",
    )
    ops_parser.add_argument(
        "--min-run-time",
        type=float,
        metavar="S",
        help="seconds of timing per implementation and case (default: 0.2, or 0.01 with --quick)",
    )
    ops_parser.add_argument(
        "--no-copy",
        action="store_true",
        help="skip the float32 copy-bandwidth reference (2**24 elements) and the '%% copy' column",
    )
    ops_parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch intra-op threads for CPU runs (default: torch's choice, "
        f"{torch.get_num_threads()} here)",
    )
    ops_parser.set_defaults(func=run_ops)

    step_parser = commands.add_parser(
        "step",
        help="time one training iteration: the official loop's reference vs ebjdat",
        description="Time one EB-JDAT-JEM++ iteration (preset 'official', CIFAR-shaped synthetic "
        "data, class-Gaussian replay buffer) two ways from the same initial weights and batches: "
        "'official', a faithful eager re-implementation of the official code (adversarial "
        "micro-batches of 2 with three forwards per step, PYLD, per-image Gaussian "
        "re-initialisation, unfused updates, NCHW), and 'ebjdat' (the trainer), plus one row per "
        "--variants entry. Prints the median time, a per-phase breakdown, FLOPs counted once per "
        "implementation, TFLOP/s, the ratio, minutes per CIFAR-10 epoch, and the distance from "
        "the FLOP floor at the bfloat16 matmul rate measured first.",
    )
    step_parser.add_argument(
        "--device", default=default_device(), help="cpu, cuda or cuda:N (default: %(default)s)"
    )
    step_parser.add_argument(
        "--models",
        nargs="+",
        default=["wrn-10-2", "wrn-16-4"],
        metavar="ARCH",
        help="architectures (default: wrn-10-2 wrn-16-4)",
    )
    step_parser.add_argument("--batch", type=int, default=64, help="batch size (default: 64)")
    step_parser.add_argument(
        "--repeats", type=int, default=5, help="timed iterations per implementation (default: 5)"
    )
    step_parser.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="config override for every ebjdat row (repeatable)",
    )
    step_parser.add_argument(
        "--variants",
        nargs="+",
        default=["default"],
        choices=list(bench_step.VARIANTS),
        metavar="NAME",
        help="ebjdat configurations to time, one row each, in the same run as the reference: "
        + "; ".join(
            f"{name} ({', '.join(sets) or 'the preset as is'})"
            for name, sets in bench_step.VARIANTS.items()
        )
        + " (default: default)",
    )
    step_parser.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="instead: time the iteration in 1 and in N data-parallel processes (torchrun; "
        "NCCL, one GPU each, on cuda; gloo on cpu) and report the scaling efficiency",
    )
    step_parser.add_argument("--json", metavar="FILE", help='also write {"machine", "rows"}')
    step_parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: wrn-10-1, batch 4, one repeat; numbers mean nothing",
    )
    step_parser.set_defaults(func=run_step)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ebjdat-bench` and `python -m ebjdat.cli.bench`; returns the exit status.

    Usage errors raise SystemExit(2) after a one-line message, as argparse's own errors do.
    """
    args = build_parser().parse_args(argv)
    tune_cpu_allocator()
    try:
        return args.func(args)
    except UsageError as err:
        raise SystemExit(report_error(PROG, err)) from None


if __name__ == "__main__":
    raise SystemExit(main())
