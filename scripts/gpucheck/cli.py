"""The GPU check's command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from .config import (
    DEFAULT_BUDGET_S,
    DEFAULT_SANITIZER_BACKENDS,
    GPU_PARTS,
    REHEARSE_BUILD_EXTRA_S,
    SANITIZER_BACKENDS,
    STEP_BATCH,
    STEP_MODELS,
    STEP_REPEATS,
    STEP_VARIANTS,
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Build, test, sanitize and benchmark ebjdat on this machine's GPU within a "
        "time budget, print what failed with enough detail to fix it, and write the results "
        "under bench/results/ (or --out-dir). Without a GPU, runs a quick CPU benchmark; with "
        "--rehearse, checks on a machine without a GPU that every GPU step gets as far as its "
        "first CUDA call. See the module docstring for the steps.",
    )
    build = parser.add_mutually_exclusive_group()
    build.add_argument(
        "--skip-build",
        action="store_true",
        help="use the installed extension as is (no pip install, no check)",
    )
    build.add_argument(
        "--rebuild",
        action="store_true",
        help="rebuild even when the installed extension is a fresh CUDA build for this GPU",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        metavar="S",
        help=f"seconds for the whole check (default: {DEFAULT_BUDGET_S:.0f}, "
        f"+{REHEARSE_BUILD_EXTRA_S:.0f} with --rehearse-build); each step gets "
        "what is left minus what later steps need, and is killed when over",
    )
    parser.add_argument(
        "--budget-from",
        choices=("auto", "now"),
        default="auto",
        help="auto (default): count the budget from the start of the enclosing "
        "one-shot command (`sh -c 'pip install ... && python gpu_check.py'`), "
        "so the time the install took counts; now: from this script's start",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="benchmark tiny shapes only (a smoke test; no bandwidth verdict)",
    )
    parser.add_argument(
        "--cpu-only",
        action="store_true",
        help="run only the CPU-safe part even when a GPU is present",
    )
    parser.add_argument(
        "--write-cpu",
        action="store_true",
        help="without a GPU, still write bench/results/cpu-<date>.json",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where results go (default: bench/results; a rehearsal writes none "
        "without it); given explicitly, full step logs go there too, in "
        "<results name>.logs/ (on a lent machine whose files come back from "
        "one folder, that folder)",
    )
    parser.add_argument(
        "--skip",
        nargs="+",
        default=[],
        choices=GPU_PARTS,
        metavar="PART",
        help="GPU parts to leave out, to split the check over shorter runs: "
        "tests (CUDA tests and sanitizer), ops (op benchmarks), step, scaling "
        "(with --skip-build on the later runs)",
    )
    parser.add_argument(
        "--dtype",
        nargs="+",
        default=["float32"],
        choices=["float32", "bfloat16", "float16"],
        help="dtypes for the GPU op benchmarks (default: float32)",
    )
    parser.add_argument(
        "--arch",
        help="TORCH_CUDA_ARCH_LIST to build for (default: this GPU's capability, e.g. 9.0)",
    )
    parser.add_argument(
        "--step-models",
        nargs="+",
        default=list(STEP_MODELS),
        metavar="ARCH",
        help="models for the step benchmark (default: %(default)s)",
    )
    parser.add_argument(
        "--step-batch",
        type=int,
        default=STEP_BATCH,
        help="batch for the step benchmark (default: %(default)s)",
    )
    parser.add_argument(
        "--step-repeats",
        type=int,
        default=STEP_REPEATS,
        help="timed iterations per row (default: %(default)s)",
    )
    parser.add_argument(
        "--step-variants",
        nargs="+",
        default=list(STEP_VARIANTS),
        metavar="V",
        help="ebjdat variants beside the official reference (default: "
        "%(default)s; see ebjdat-bench step --help)",
    )
    parser.add_argument(
        "--sanitizer-backends",
        nargs="+",
        default=list(DEFAULT_SANITIZER_BACKENDS),
        choices=SANITIZER_BACKENDS,
        metavar="B",
        help="backends to run under compute-sanitizer, one run each: cuda (the ebjdat._C "
        "kernels, the default) and/or triton",
    )
    parser.add_argument(
        "--rehearse",
        action="store_true",
        help="without a GPU: plan as for an H200 and check that every GPU step "
        "runs up to its first CUDA call with the GPU machine's packages "
        "(torchattacks, torch_fidelity, pyautoattack, tomli_w blocked)",
    )
    parser.add_argument(
        "--rehearse-build",
        action="store_true",
        help="--rehearse, plus the real CUDA build for sm 9.0 in a copy of the "
        "tree, timed (minutes)",
    )
    args = parser.parse_args(argv)
    args.rehearse = args.rehearse or args.rehearse_build
    if args.rehearse and torch.cuda.is_available():
        parser.error("--rehearse is for machines without a GPU; here, run the check itself")
    if args.budget_s is None:
        args.budget_s = DEFAULT_BUDGET_S + (REHEARSE_BUILD_EXTRA_S if args.rehearse_build else 0)
    if args.budget_s <= 0 or args.step_batch < 2 or args.step_repeats < 1:
        parser.error("--budget-s must be > 0, --step-batch >= 2, --step-repeats >= 1")
    return args
