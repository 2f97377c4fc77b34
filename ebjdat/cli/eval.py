"""`ebjdat-eval`: measure accuracy, robustness and generation of one checkpoint, in standard
units, and write OUT/report.json, OUT/report.html (one self-contained page) and the PNG figures.

Evaluated on the TEST split of the checkpoint's dataset (the first --limit examples):
  robustness   clean accuracy, PGD-k and AutoAttack, plus gradient-masking sanity checks
  calibration  ECE and a reliability diagram
  OOD          AUROC of the JEM scores (log p(x), max p(y|x), grad norm) against OOD sets
  generation   fresh SGLD samples: fid_digits on digits, Inception FID/IS/KID elsewhere (when
               the weights are available), and the official "buffer" FID variant, labelled so
  energies     the paper's Fig. 2: E(x) of clean, PGD-adversarial and generated samples

--protocol standard (default) uses eps in [0, 1] pixel units and unmodified attacks: the numbers
to cite. --protocol paper reproduces the official evaluation (eps applied in [-1, 1] units,
test-time noise, reduced AutoAttack) and the report says so. A metric that was not run is absent
from the report, never 0.

A model whose weights or outputs are not finite is still evaluated: what can be computed is
reported (a prediction from non-finite logits counts as wrong), every metric that cannot be is
left out with a note saying why, the report opens with a warning, and the exit status is 0.
Usage errors (bad flags, an unreadable checkpoint, an output directory that cannot be written)
exit with status 2 and one line on stderr, before anything is computed or written.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ebjdat.cpu_allocator import tune_cpu_allocator

from .common import (
    EXIT_USAGE,
    MAX_TORCH_SEED,
    Parser,
    UsageError,
    check_backends,
    check_range,
    device_from,
)
from .common import report_error as error
from .sample import (
    add_sampler_flags,
    check_checkpoint_path,
    check_sampler_flags,
    data_root,
    image_shape,
    load_checkpoint,
    non_finite_weights,
    output_dir,
    replay_buffer,
    sample_with,
    sampler_settings,
    save_grid,
    train_images,
)

_ATTACK = re.compile(r"^(pgd\d+|autoattack)$")
PROG = "ebjdat-eval"
# Each section seeds its own generator with seed * 1000 + offset (offsets 1..4).
_SEED_STRIDE, _SEED_OFFSETS = 1000, 4
MAX_SEED = (MAX_TORCH_SEED - _SEED_OFFSETS) // _SEED_STRIDE


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "outputs: OUT/report.json, OUT/report.html, OUT/samples.png, "
            "OUT/energy_histogram.png, OUT/reliability.png (and OUT/buffer_samples.png)\n"
            "example: ebjdat-eval runs/digits/checkpoints/best.pt --limit 200 --attacks pgd20"
        ),
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint written by ebjdat-train")
    p.add_argument(
        "--out", metavar="DIR", help="output directory (default: RUN/eval next to the checkpoint)"
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
        help="number of fresh samples for the generation metrics (default 1000)",
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


def _check_args(args: argparse.Namespace) -> list[str]:
    """Every flag, before anything is loaded: a bad value fails here, not after an hour."""
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
    if "autoattack" in attacks and importlib.util.find_spec("torchattacks") is None:
        raise UsageError(
            "--attacks autoattack needs torchattacks, which is not installed (pip install "
            "--no-build-isolation -e '.[eval]'), or leave it out: --attacks pgd20"
        )
    # Pixel units: an L-inf ball of radius 1 already holds every image.
    eps_max = 1.0 if args.norm == "linf" else None
    check_range("--eps", args.eps, low=0.0, low_open=True, high=eps_max)
    check_range("--limit", args.limit, low=1)
    check_range("--gen-n", args.gen_n, low=2)
    check_sampler_flags(args, prefix="gen_")
    check_range("--buffer-ratio", args.buffer_ratio, low=0.0, low_open=True, high=1.0)
    check_range("--seed", args.seed, low=0, high=MAX_SEED)
    check_range("--batch-size", args.batch_size, low=1)
    return attacks


class Evaluation:
    """One ebjdat-eval run: the model, its data and the report being filled in."""

    def __init__(
        self, args: argparse.Namespace, attacks: list[str], device: torch.device, out: Path
    ) -> None:
        """Loads everything a section needs (checkpoint, test split, train split when sampling),
        so that a missing file fails here, before the output directory is touched."""
        from ebjdat.data import dataset_info, load_split_tensors, to_float01
        from ebjdat.eval.robustness import default_eps

        self.args = args
        self.attacks = attacks
        self.progress = not args.no_progress
        self.device = device
        self.model, self.state, self.cfg = load_checkpoint(args.checkpoint, self.device)
        self.dataset = self.cfg.data.dataset
        self.root = data_root(self.cfg, args.data_root)
        size = (self.cfg.data.image_size or None) if self.dataset == "imagefolder" else None
        self.info = dataset_info(self.dataset, self.root, image_size=size)
        need = 3 if args.protocol == "paper" else 4
        if "autoattack" in attacks and self.info.num_classes < need:
            raise UsageError(
                f"--attacks autoattack needs at least {need} classes ({self.dataset} has "
                f"{self.info.num_classes}); use pgdK"
            )
        x, y = load_split_tensors(self.dataset, "test", self.root, self.cfg.data.download, size)
        self.x_test_full = x
        n = len(x) if args.limit is None else min(args.limit, len(x))
        self.x, self.y = to_float01(x[:n]), y[:n].long()
        self.eps_requested = (
            args.eps if args.eps is not None else default_eps(self.dataset, args.norm)
        )
        self.out = out
        self.figures: dict[str, Path] = {}
        self.energies: dict[str, torch.Tensor] = {}
        self._train: tuple[torch.Tensor, torch.Tensor] | None = None
        if not args.no_generation:
            self.train_split()
        import ebjdat

        progress = self.state.get("progress") if isinstance(self.state, dict) else None
        self.report: dict[str, Any] = {
            "checkpoint": str(args.checkpoint),
            "dataset": self.dataset,
            "preset": self.cfg.preset,
            "epoch": progress.get("epoch") if isinstance(progress, dict) else None,
            "protocol": args.protocol,
            "norm": args.norm,
            "n_examples": int(n),
            "split": "test",
            "ebjdat_version": ebjdat.__version__,
            "device": str(self.device),
            "seed": args.seed,
            "warnings": [],
            "notes": [],
            "settings": {},
            "timings": {},
        }
        if self.report["epoch"] is None:
            del self.report["epoch"]
        bad, total = non_finite_weights(self.model)
        self.report["weights_finite"] = not bad
        if bad:
            self.report["warnings"].append(
                f"the checkpoint's weights are not finite: {len(bad)} of {total} tensors hold "
                f"NaN or Inf (first: {bad[0]}); the model's outputs are not usable, and every "
                "metric that depends on finite outputs is marked not computable"
            )

    # ---- helpers ----------------------------------------------------------------------------

    def generator(self, offset: int) -> torch.Generator:
        """A fresh generator per section, so a section's numbers do not depend on which other
        sections ran."""
        return torch.Generator(self.device).manual_seed(self.args.seed * _SEED_STRIDE + offset)

    def train_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._train is None:
            self._train = train_images(self.cfg, self.root)
        return self._train

    def batches(self, n: int, desc: str) -> Any:
        from tqdm import tqdm

        bs = self.args.batch_size
        return tqdm(
            range(0, n, bs),
            desc=desc,
            unit="batch",
            leave=False,
            disable=not self.progress,
            dynamic_ncols=True,
        )

    @torch.no_grad()
    def energy_of(self, x01: torch.Tensor, desc: str) -> torch.Tensor:
        bs = self.args.batch_size
        return torch.cat(
            [
                self.model.energies(x01[i : i + bs].to(self.device)).energy.float().cpu()
                for i in self.batches(len(x01), desc)
            ]
        )

    def stage(self, name: str, fn: Callable[[], None]) -> None:
        print(f"{PROG}: {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        fn()
        self.report["timings"][name] = round(time.perf_counter() - start, 2)

    # ---- sections ---------------------------------------------------------------------------

    def robustness(self) -> None:
        from ebjdat.eval.robustness import evaluate_robustness

        result = evaluate_robustness(
            self.model,
            self.x,
            self.y,
            protocol=self.args.protocol,
            eps=self.eps_requested,
            norm=self.args.norm,
            attacks=tuple(self.attacks),
            n_classes=self.info.num_classes,
            generator=self.generator(1),
            batch_size=self.args.batch_size,
            seed=self.args.seed,
            sanity=not self.args.no_sanity and bool(self.attacks),
        )
        self.report["warnings"].extend(result.pop("sanity_warnings", []))
        if "sanity" in result:
            self.report["sanity"] = result.pop("sanity")
        self.report.update(result)
        n = self.report["n_examples"]
        if n < 100:
            se = 0.5 / n**0.5
            self.report["warnings"].append(
                f"only {n} test examples: accuracies carry a standard error of up to "
                f"{100 * se:.1f} points"
            )

    def calibration(self) -> None:
        from ebjdat.eval.calibration import expected_calibration_error, reliability_diagram

        bs = self.args.batch_size
        with torch.no_grad():
            probs = torch.cat(
                [
                    torch.softmax(self.model(self.x[i : i + bs].to(self.device)).float(), 1).cpu()
                    for i in self.batches(len(self.x), "calibration")
                ]
            )
        bad = int((~torch.isfinite(probs).all(dim=1)).sum())
        if bad:
            if self.report["weights_finite"]:
                self.report["warnings"].append(
                    f"{bad} of {len(probs)} test images give non-finite logits: they count as "
                    "misclassified in every accuracy"
                )
            self.report["notes"].append(
                f"ECE not computable: {bad} of {len(probs)} predicted probability vectors are "
                "not finite (no reliability diagram)"
            )
            return
        self.report["ece"] = expected_calibration_error(probs, self.y)
        path = self.out / "reliability.png"
        reliability_diagram(probs, self.y, path, title=f"{self.dataset} test")
        self.figures["reliability"] = path

    def ood(self) -> None:
        from ebjdat.eval.ood import ood_auroc, ood_sets_for

        found = ood_sets_for(self.dataset, self.root, len(self.x), self.generator(2), x=self.x)
        sets, skipped = found["sets"], found["skipped"]
        for name, reason in skipped.items():
            self.report["notes"].append(f"OOD set {name} skipped: {reason}")
        if not sets:
            self.report["notes"].append("no OOD sets available: OOD AUROC not computed")
            return
        from ebjdat.eval.ood import SCORES

        result = ood_auroc(self.model, self.x, sets, batch_size=self.args.batch_size)
        for score in SCORES:
            lost = [name for name, r in result.items() if score not in r]
            if lost:
                where = f"all {len(lost)} sets" if len(lost) == len(result) else ", ".join(lost)
                what = "OOD AUROC" if score == "log_px" else f"OOD AUROC of {score}"
                self.report["notes"].append(
                    f"{what} not computable: the model's scores are not finite ({score} on "
                    f"{where})"
                )
        self.report["settings"]["ood"] = {
            "sets": sorted(sets),
            "summary": "ood_auroc = AUROC of log p(x) averaged over the sets",
        }
        if any(result.values()):
            self.report["ood"] = {name: r for name, r in result.items() if r}
        if all("log_px" in r for r in result.values()):
            self.report["ood_auroc"] = sum(r["log_px"] for r in result.values()) / len(result)

    def generation(self) -> None:
        from ebjdat.eval.generation import grid_rows

        args = self.args
        settings = sampler_settings(self.cfg, args, prefix="gen_")
        k = self.info.num_classes
        gaussians = None
        if settings["start"] == "class":
            from ebjdat.models.jem import JEM
            from ebjdat.sampling import ClassGaussians

            xt, yt = self.train_split()
            gaussians = ClassGaussians().fit(JEM.to_internal(xt), yt, k)
        shape = None if gaussians is not None else image_shape(self.state, self.cfg, self.root)
        start = time.perf_counter()
        x_gen, labels = sample_with(
            self.model, args.gen_n, settings, gaussians=gaussians, shape=shape,
            generator=self.generator(3), batch_size=args.batch_size, progress=self.progress,
        )
        self.report["settings"]["generation"] = {
            **settings,
            "n": args.gen_n,
            "seed": args.seed,
            "sampling_time_s": round(time.perf_counter() - start, 2),
        }
        self.report["n_generated"] = int(len(x_gen))
        bad = int((~torch.isfinite(x_gen.flatten(1)).all(dim=1)).sum())
        if bad:
            self.report["n_generated_non_finite"] = bad
            self.report["notes"].append(
                f"{bad} of {len(x_gen)} fresh samples are not finite (drawn black in the grid)"
            )
        shown = torch.nan_to_num(x_gen[: min(len(x_gen), 100)], nan=0.0)
        nrow = k if labels is not None and k <= 20 else grid_rows(len(shown))
        self.figures["samples"] = save_grid(shown, self.out / "samples.png", nrow)
        self.energies["generated"] = self.energy_of(x_gen, "energies (generated)")
        self._generation_metrics(x_gen, bad)

    def _generation_metrics(self, x_gen: torch.Tensor, bad: int) -> None:
        """The sample metrics; those of non-finite samples are noted as not computable, while
        the ones that do not depend on the model (the real test split's distance) still run."""
        from ebjdat.data import to_float01
        from ebjdat.eval.generation import (
            InceptionUnavailable,
            buffer_samples_official,
            fid_digits,
            grid_rows,
            inception_extractor,
            inception_metrics,
        )

        x_train, _ = self.train_split()
        buf = replay_buffer(self.state)
        x_buf = None
        if buf is None:
            self.report["notes"].append(
                "the checkpoint holds no replay buffer (no generative term): buffer FID not "
                "computed"
            )
        else:
            try:
                x_buf = buffer_samples_official(
                    self.model, buf.to(self.device), self.args.buffer_ratio, self.args.batch_size
                )
            except ValueError as err:
                self.report["notes"].append(f"buffer FID not computable: {err}")
            else:
                self.report["n_buffer_selected"] = int(len(x_buf))
                shown = x_buf[: min(len(x_buf), 100)]
                self.figures["buffer_samples"] = save_grid(
                    shown, self.out / "buffer_samples.png", grid_rows(len(shown))
                )
        ref = f"{self.dataset} train split ({len(x_train)} images)"
        not_finite = f"{bad} of {len(x_gen)} fresh samples are not finite"
        if self.dataset == "digits":
            if bad:
                self.report["notes"].append(f"fid_digits not computable: {not_finite}")
            else:
                self.report["fid_digits"] = fid_digits(x_gen, x_train)
            self.report["fid_digits_test_split"] = fid_digits(to_float01(self.x_test_full), x_train)
            if x_buf is not None and len(x_buf) >= 2:
                self.report["buffer_fid_digits"] = fid_digits(x_buf, x_train)
            self.report["settings"]["fid_digits"] = {
                "reference": ref,
                "features": "64-d penultimate layer of a small CNN trained deterministically "
                "on the digits train split (not Inception)",
            }
            if len(x_gen) < 200 and not bad:
                self.report["warnings"].append(
                    f"fid_digits from only {len(x_gen)} samples is biased upward; use "
                    "--gen-n 1000 for numbers to compare"
                )
            return
        try:
            net = inception_extractor(self.device)
        except InceptionUnavailable as err:
            self.report["notes"].append(str(err))
            return
        if bad:
            self.report["notes"].append(f"FID, IS and KID not computable: {not_finite}")
        else:
            self.report.update(
                inception_metrics(
                    x_gen, x_train, device=self.device, extractor=net, progress=self.progress
                )
            )
        if x_buf is not None:
            b = inception_metrics(
                x_buf, x_train, kid=False, device=self.device, extractor=net, progress=self.progress
            )
            self.report["buffer_fid"] = b["fid"]
            self.report["buffer_inception_score"] = b["inception_score"]
        self.report["settings"]["inception"] = {
            "reference": ref,
            "extractor": "torch-fidelity InceptionV3 (2048-d pool features, uint8 inputs)",
        }

    def energies_figure(self) -> None:
        from ebjdat.attacks import pgd_attack
        from ebjdat.eval.energy import energy_gaps, energy_histogram

        eps = float(self.report.get("eps", self.eps_requested))
        steps = 20
        step = 2.5 * eps / steps
        gen = self.generator(4)
        bs = self.args.batch_size
        self.energies["clean"] = self.energy_of(self.x, "energies (clean)")
        adv = []
        for i in self.batches(len(self.x), "energies (PGD-20)"):
            xb, yb = self.x[i : i + bs].to(self.device), self.y[i : i + bs].to(self.device)
            adv.append(
                pgd_attack(
                    self.model,
                    xb,
                    yb,
                    eps=eps,
                    step_size=step,
                    steps=steps,
                    norm=self.args.norm,
                    generator=gen,
                ).cpu()
            )
        self.energies["adversarial"] = self.energy_of(torch.cat(adv), "energies (adversarial)")
        order = {}
        for k in ("clean", "adversarial", "generated"):
            if k not in self.energies:
                continue
            e = self.energies[k]
            bad = int((~torch.isfinite(e)).sum())
            if bad == len(e):
                self.report["notes"].append(
                    f"energies of the {k} set not computable: none of its {len(e)} energies is "
                    "finite"
                )
                continue
            if bad:
                self.report["notes"].append(
                    f"{bad} of {len(e)} {k} energies are not finite: left out of the histogram, "
                    "the means and the gaps"
                )
            order[k] = e
        self.report["settings"]["energy"] = {
            "energy": "E(x) = -logsumexp_y f(x)[y] on [0,1] images, no test-time noise",
            "adversarial": f"untargeted PGD-{steps} on CE, {self.args.norm} eps={eps:.6g} "
            f"(pixel units), step {step:.4g}, random start, all test examples",
            "generated": "the fresh SGLD samples of the generation section",
        }
        if not order:
            self.report["notes"].append("energy histogram not drawn: no energy is finite")
            return
        self.report.update(energy_gaps(order))
        title = f"Energy landscape: {self.cfg.preset} on {self.dataset} (test split)"
        labels = {
            "clean": "clean test images",
            "adversarial": f"PGD-{steps} adversarial ({self.args.norm}, ε={eps:.3g})",
        }
        if "generated" in order:
            n_steps = self.report["settings"]["generation"]["steps"]
            labels["generated"] = f"fresh SGLD samples ({n_steps} steps)"
        self.figures["energy"] = energy_histogram(
            self.out / "energy_histogram.png", order, title, labels=labels
        )

    def run(self) -> tuple[Path, Path]:
        from ebjdat.eval.report import write_report

        self.out.mkdir(parents=True, exist_ok=True)
        print(
            f"{PROG}: {self.args.checkpoint} on {self.dataset} test "
            f"({self.report['n_examples']} examples, {self.args.protocol} protocol, "
            f"{self.device}) -> {self.out}",
            file=sys.stderr,
        )
        self.stage("robustness", self.robustness)
        self.stage("calibration", self.calibration)
        if not self.args.no_ood:
            self.stage("ood", self.ood)
        if not self.args.no_generation:
            self.stage("generation", self.generation)
        self.stage("energies", self.energies_figure)
        return write_report(self.out, self.report, self.figures)


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from ebjdat.checkpoint import CheckpointError
    from ebjdat.data import DatasetNotFoundError
    from ebjdat.train.config import ConfigError

    try:
        attacks = _check_args(args)
        device = device_from(args.device)
        check_backends(device)
        check_checkpoint_path(args.checkpoint)
        out = output_dir(args, "eval")
        evaluation = Evaluation(args, attacks, device, out)
        json_path, html_path = evaluation.run()
    except (UsageError, CheckpointError, DatasetNotFoundError, ConfigError) as err:
        return error(PROG, err)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    r = evaluation.report
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
    print(f"{summary}\nwrote {json_path} and {html_path}")
    for w in r["warnings"]:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    return 0


def main() -> None:
    tune_cpu_allocator()
    raise SystemExit(run())


__all__ = ["EXIT_USAGE", "main", "parser", "run"]

if __name__ == "__main__":
    main()
