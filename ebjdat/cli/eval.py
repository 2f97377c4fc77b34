"""`ebjdat-eval`: measure accuracy, robustness and generation of one checkpoint, in standard
units, and write OUT/report.json, OUT/report.html (one self-contained page) and the PNG figures.

Evaluated on the TEST split of the checkpoint's dataset (the first --limit examples):
  robustness   clean accuracy, PGD-k and AutoAttack, plus gradient-masking sanity checks
  calibration  ECE and a reliability diagram
  OOD          AUROC of the JEM scores (log p(x), max p(y|x), grad norm) against OOD sets
  generation   fresh SGLD samples: fid_digits on digits, Inception FID/IS/KID elsewhere (when
               the weights are available), each beside its baselines (the samples' own starts
               at 0 steps, chains from uniform noise, held-out real images), and the official
               "buffer" FID variant, labelled so
  energies     the paper's Fig. 2: E(x) of clean, PGD-adversarial and generated samples

--protocol standard (default) uses eps in [0, 1] pixel units and unmodified attacks: the numbers
to cite, with the original AutoAttack (Croce & Hein's code, "standard" version; --aa-impl
torchattacks runs the port as a cross-check). --protocol paper reproduces the official
evaluation (eps applied in [-1, 1] units, test-time noise, reduced AutoAttack) and the report
says so. Every accuracy carries its 95% Wilson interval (<metric>_ci95). A metric that was not
run is absent from the report, never 0.

A model whose weights or outputs are not finite is still evaluated: what can be computed is
reported (a prediction from non-finite logits counts as wrong), every metric that cannot be is
left out with a note saying why, the report opens with a warning, and the exit status is 0.
Usage errors (bad flags, an unreadable checkpoint, an output directory that cannot be written)
exit with status 2 and one line on stderr, before anything is computed or written.

Several checkpoints (ebjdat-eval A.pt B.pt C.pt --out DIR) are compared under the same flags:
each is evaluated into DIR/<name>/ (its usual report, written as soon as it is done), then
DIR/compare.json and DIR/compare.html hold one row per checkpoint (accuracies with intervals,
generation with its baselines, ECE, OOD, energy gaps), the sanity checks as one table and the
runs' training curves (RUN/metrics.jsonl) overlaid. Every path is checked first: it must exist,
load as a checkpoint and be given once. A checkpoint that fails during evaluation becomes a row
with its error, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

from ebjdat.checks import SettingsError
from ebjdat.cpu_allocator import tune_cpu_allocator
from ebjdat.eval.checkpoints import check_checkpoint_path
from ebjdat.eval.evaluation import EvalSettings, evaluate_checkpoint
from ebjdat.eval.robustness import AA_ENGINES, AA_PACKAGES, AA_USER_VERSIONS, resolve_autoattack

from .common import EXIT_USAGE, Parser, UsageError, check_backends, device_from
from .common import report_error as error
from .sample import add_sampler_flags, output_dir, sampler_overrides, settings_error

_ATTACK = re.compile(r"^(pgd\d+|autoattack)$")
PROG = "ebjdat-eval"


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "outputs: OUT/report.json, OUT/report.html, OUT/samples.png, "
            "OUT/energy_histogram.png, OUT/reliability.png (and OUT/buffer_samples.png)\n"
            "example: ebjdat-eval runs/digits/checkpoints/best.pt --limit 200 --attacks pgd20\n"
            "compare: ebjdat-eval runs/a/checkpoints/best.pt runs/b/checkpoints/best.pt "
            "--out runs/compare"
        ),
    )
    p.add_argument(
        "checkpoint",
        metavar="CKPT",
        nargs="+",
        help="a checkpoint written by ebjdat-train; several: compare them (needs --out)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="output directory (default: RUN/eval next to the checkpoint; required with several "
        "checkpoints: DIR/<name>/ per checkpoint and DIR/compare.{json,html})",
    )
    p.add_argument(
        "--protocol",
        choices=("standard", "paper"),
        default="standard",
        help="standard: eps in [0,1] pixels, unmodified attacks (default); paper: the "
        "official code's units, test-time noise and reduced AutoAttack",
    )
    p.add_argument(
        "--attacks",
        nargs="+",
        default=["pgd20", "autoattack"],
        metavar="ATTACK",
        help="pgdK (any K) and/or autoattack (default: pgd20 autoattack); 'none' for "
        "clean accuracy only",
    )
    p.add_argument(
        "--aa-impl",
        choices=AA_ENGINES,
        help="AutoAttack engine: original (Croce & Hein's code, package pyautoattack; the "
        "default) or torchattacks (the port, 10 iterations per gradient attack: a "
        "cross-check); the paper protocol always runs its torchattacks-built reduced version",
    )
    p.add_argument(
        "--aa-version",
        choices=AA_USER_VERSIONS,
        help="AutoAttack version: standard (default), plus, rand (for randomised models); "
        "full is the torchattacks port's attacks at the original's 100 iterations "
        "(--aa-impl torchattacks only)",
    )
    p.add_argument(
        "--eps",
        type=float,
        help="perturbation budget in [0,1] pixel units (default: 8/255 Linf or 0.5 L2; "
        "0.1 Linf on digits)",
    )
    p.add_argument("--norm", choices=("linf", "l2"), default="linf", help="threat model")
    p.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="evaluate the first N test examples only (quick looks)",
    )
    p.add_argument(
        "--no-sanity",
        action="store_true",
        help="skip the gradient-masking sanity checks (several extra PGD runs)",
    )
    p.add_argument(
        "--no-generation", action="store_true", help="skip sampling and the generation metrics"
    )
    p.add_argument("--no-ood", action="store_true", help="skip OOD detection")
    gen = p.add_argument_group("generation (fresh SGLD samples)")
    gen.add_argument(
        "--gen-n",
        type=int,
        default=1000,
        metavar="N",
        help="number of fresh samples for the generation metrics, 2 to 50000, drawn in batches "
        "(default 1000; FID, IS and KID from fewer than 10000 are biased, and the report warns)",
    )
    gen.add_argument(
        "--no-gen-uniform",
        action="store_true",
        help="skip the chains from uniform noise (the hard-case baseline; they double the "
        "sampling time)",
    )
    add_sampler_flags(gen, prefix="gen-")
    gen.add_argument(
        "--buffer-ratio",
        type=float,
        default=0.9,
        metavar="R",
        help="the official buffer-FID selection: top R per predicted class (default 0.9)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for attacks, OOD sets and sampling")
    p.add_argument("--batch-size", type=int, default=500, metavar="B", help="batch size")
    p.add_argument(
        "--data-root",
        metavar="DIR",
        help="where datasets live (default: the checkpoint's, $EBJDAT_DATA or ./data)",
    )
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _attacks(args: argparse.Namespace) -> list[str]:
    """--attacks, checked in its own words ('none' is flag syntax for no attack)."""
    attacks = [a.lower() for a in args.attacks]
    if attacks == ["none"]:
        attacks = []
    bad = [a for a in attacks if not _ATTACK.match(a)]
    if bad:
        raise UsageError(
            f"--attacks: unknown attack {bad[0]!r}; use pgdK (e.g. pgd20) or autoattack"
        )
    zero = [a for a in attacks if a.startswith("pgd") and int(a[3:]) < 1]
    if zero:
        raise UsageError(f"--attacks {zero[0]}: PGD needs at least 1 step (e.g. pgd20)")
    return attacks


def _autoattack(args: argparse.Namespace, attacks: list[str]) -> None:
    """--aa-impl and --aa-version, checked against --protocol and each other, and the engine's
    package, in the flags' words (the settings check the same in their field names)."""
    try:
        engine, _ = resolve_autoattack(args.protocol, args.aa_impl, args.aa_version)
    except SettingsError as err:
        raise settings_error(err) from None
    if "autoattack" not in attacks or importlib.util.find_spec(AA_PACKAGES[engine]):
        return
    if engine == "original":
        chosen = "--aa-impl original" if args.aa_impl else "--aa-impl original (the default)"
        raise UsageError(
            f"{chosen} needs pyautoattack, which is not installed (pip install pyautoattack); "
            "or use --aa-impl torchattacks, or leave autoattack out: --attacks pgd20"
        )
    raise UsageError(
        "--attacks autoattack needs torchattacks, which is not installed (pip install "
        "--no-build-isolation -e '.[eval]'), or leave it out: --attacks pgd20"
    )


def settings_from(args: argparse.Namespace) -> EvalSettings:
    """The EvalSettings of the flags, checked (UsageError naming the flag)."""
    attacks = _attacks(args)
    _autoattack(args, attacks)
    settings = EvalSettings(
        protocol=args.protocol,
        attacks=tuple(attacks),
        aa_impl=args.aa_impl,
        aa_version=args.aa_version,
        eps=args.eps,
        norm=args.norm,
        limit=args.limit,
        sanity=not args.no_sanity,
        generation=not args.no_generation,
        ood=not args.no_ood,
        gen_n=args.gen_n,
        gen_uniform=not args.no_gen_uniform,
        gen_sampler=sampler_overrides(args, prefix="gen_"),
        buffer_ratio=args.buffer_ratio,
        seed=args.seed,
        batch_size=args.batch_size,
        data_root=args.data_root,
        progress=not args.no_progress,
    )
    try:
        return settings.validate()
    except SettingsError as err:
        raise settings_error(err, prefix="gen_") from None


def _log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if len(args.checkpoint) > 1:
        return _compare(args)
    args.checkpoint = args.checkpoint[0]
    from dataclasses import replace

    from ebjdat.checkpoint import CheckpointError
    from ebjdat.data import DatasetNotFoundError
    from ebjdat.train.config import ConfigError

    try:
        settings = settings_from(args)
        device = device_from(args.device)
        check_backends(device)
        check_checkpoint_path(args.checkpoint)
        out = output_dir(args, "eval")
        r = evaluate_checkpoint(args.checkpoint, replace(settings, out=out), device, log=_log)
    except SettingsError as err:  # found once the checkpoint is loaded (e.g. too few classes)
        return error(PROG, settings_error(err, prefix="gen_"))
    except (UsageError, CheckpointError, DatasetNotFoundError, ConfigError) as err:
        return error(PROG, err)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    summary = ", ".join(
        f"{k} {r[k]:.4g}"
        for k in (
            "clean_acc",
            "pgd20_acc",
            "autoattack_acc",
            "fid",
            "fid_digits",
            "ece",
            "ood_auroc",
        )
        if k in r
    )
    print(f"{summary}\nwrote {out / 'report.json'} and {out / 'report.html'}")
    for w in r["warnings"]:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    return 0


def _compare(args: argparse.Namespace) -> int:
    """Several checkpoints under the same flags: every argument checked before the first
    evaluation, one progress line per checkpoint, then DIR/compare.json and compare.html."""
    from ebjdat.checkpoint import CheckpointError
    from ebjdat.eval.compare import compare_checkpoints

    from .common import check_output_dir

    paths = args.checkpoint
    try:
        settings = settings_from(args)
        device = device_from(args.device)
        check_backends(device)
        if not args.out:
            raise UsageError(
                f"--out is required with several checkpoints ({len(paths)} given): the "
                "directory of the comparison"
            )
        out = Path(args.out)
        check_output_dir("--out", out)
        result = compare_checkpoints(paths, settings, out, device, log=_log)
    except SettingsError as err:
        return error(PROG, settings_error(err, prefix="gen_"))
    except (UsageError, CheckpointError) as err:
        return error(PROG, err)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (the finished checkpoints' reports are kept)", file=sys.stderr)
        return 130
    for row in result["rows"]:
        if "error" in row:
            print(f"{row['name']}: failed: {row['error']}")
            continue
        summary = ", ".join(
            f"{k} {row[k]:.4g}"
            for k in ("clean_acc", "pgd20_acc", "autoattack_acc", "fid", "fid_digits", "ece",
                      "ood_auroc")  # fmt: skip
            if isinstance(row.get(k), (int, float))
        )
        print(f"{row['name']}: {summary}")
    print(f"wrote {out / 'compare.json'} and {out / 'compare.html'}")
    for w in result["warnings"]:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    failed = sum("error" in row for row in result["rows"])
    if failed:
        print(f"{PROG}: {failed} of {len(paths)} checkpoints failed", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    tune_cpu_allocator()
    raise SystemExit(run())


__all__ = ["EXIT_USAGE", "main", "parser", "run"]

if __name__ == "__main__":
    main()
