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
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ebjdat.cpu_allocator import tune_cpu_allocator

from .common import EXIT_USAGE, UsageError, device_from
from .sample import (
    add_sampler_flags,
    data_root,
    error,
    image_shape,
    load_checkpoint,
    replay_buffer,
    sample_with,
    sampler_settings,
    save_grid,
    train_images,
)

_ATTACK = re.compile(r"^(pgd\d+|autoattack)$")
PROG = "ebjdat-eval"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
    attacks = [a.lower() for a in args.attacks]
    if attacks == ["none"]:
        attacks = []
    bad = [a for a in attacks if not _ATTACK.match(a)]
    if bad:
        raise UsageError(
            f"--attacks: unknown attack {bad[0]!r}; use pgdK (e.g. pgd20) or autoattack"
        )
    if args.eps is not None and not args.eps > 0:
        raise UsageError(f"--eps must be > 0, got {args.eps}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.gen_n < 2:
        raise UsageError(f"--gen-n must be >= 2, got {args.gen_n}")
    if args.gen_steps is not None and args.gen_steps < 0:
        raise UsageError(f"--gen-steps must be >= 0, got {args.gen_steps}")
    if not 0 < args.buffer_ratio <= 1:
        raise UsageError(f"--buffer-ratio must lie in (0, 1], got {args.buffer_ratio}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    return attacks


class Evaluation:
    """One ebjdat-eval run: the model, its data and the report being filled in."""

    def __init__(self, args: argparse.Namespace, attacks: list[str]) -> None:
        from ebjdat.data import dataset_info, load_split_tensors, to_float01
        from ebjdat.eval.robustness import default_eps

        self.args = args
        self.attacks = attacks
        self.progress = not args.no_progress
        self.device = device_from(args.device)
        self.model, self.state, self.cfg = load_checkpoint(args.checkpoint, self.device)
        self.dataset = self.cfg.data.dataset
        self.root = data_root(self.cfg, args.data_root)
        size = (self.cfg.data.image_size or None) if self.dataset == "imagefolder" else None
        self.info = dataset_info(self.dataset, self.root, image_size=size)
        x, y = load_split_tensors(self.dataset, "test", self.root, self.cfg.data.download, size)
        self.x_test_full = x
        n = len(x) if args.limit is None else min(args.limit, len(x))
        self.x, self.y = to_float01(x[:n]), y[:n].long()
        self.eps_requested = (
            args.eps if args.eps is not None else default_eps(self.dataset, args.norm)
        )
        self.out = Path(args.out) if args.out else _default_eval_dir(args.checkpoint)
        self.figures: dict[str, Path] = {}
        self.energies: dict[str, torch.Tensor] = {}
        self._train: tuple[torch.Tensor, torch.Tensor] | None = None
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

    # ---- helpers ----------------------------------------------------------------------------

    def generator(self, offset: int) -> torch.Generator:
        """A fresh generator per section, so a section's numbers do not depend on which other
        sections ran."""
        return torch.Generator(self.device).manual_seed(self.args.seed * 1000 + offset)

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
        result = ood_auroc(self.model, self.x, sets, batch_size=self.args.batch_size)
        self.report["ood"] = result
        self.report["ood_auroc"] = sum(r["log_px"] for r in result.values()) / len(result)
        self.report["settings"]["ood"] = {
            "sets": sorted(sets),
            "summary": "ood_auroc = AUROC of log p(x) averaged over the sets",
        }

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
        shown = x_gen[: min(len(x_gen), 100)]
        nrow = k if labels is not None and k <= 20 else grid_rows(len(shown))
        self.figures["samples"] = save_grid(shown, self.out / "samples.png", nrow)
        self.energies["generated"] = self.energy_of(x_gen, "energies (generated)")
        self._generation_metrics(x_gen)

    def _generation_metrics(self, x_gen: torch.Tensor) -> None:
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
            x_buf = buffer_samples_official(
                self.model, buf.to(self.device), self.args.buffer_ratio, self.args.batch_size
            )
            self.report["n_buffer_selected"] = int(len(x_buf))
            shown = x_buf[: min(len(x_buf), 100)]
            self.figures["buffer_samples"] = save_grid(
                shown, self.out / "buffer_samples.png", grid_rows(len(shown))
            )
        ref = f"{self.dataset} train split ({len(x_train)} images)"
        if self.dataset == "digits":
            self.report["fid_digits"] = fid_digits(x_gen, x_train)
            self.report["fid_digits_test_split"] = fid_digits(to_float01(self.x_test_full), x_train)
            if x_buf is not None and len(x_buf) >= 2:
                self.report["buffer_fid_digits"] = fid_digits(x_buf, x_train)
            self.report["settings"]["fid_digits"] = {
                "reference": ref,
                "features": "64-d penultimate layer of a small CNN trained deterministically "
                "on the digits train split (not Inception)",
            }
            if len(x_gen) < 200:
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
        order = {
            k: self.energies[k] for k in ("clean", "adversarial", "generated") if k in self.energies
        }
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
        self.report["settings"]["energy"] = {
            "energy": "E(x) = -logsumexp_y f(x)[y] on [0,1] images, no test-time noise",
            "adversarial": f"untargeted PGD-{steps} on CE, {self.args.norm} eps={eps:.6g} "
            f"(pixel units), step {step:.4g}, random start, all test examples",
            "generated": "the fresh SGLD samples of the generation section",
        }

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


def _default_eval_dir(ckpt: str) -> Path:
    from .sample import default_out

    return default_out(ckpt, "eval")


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from ebjdat.data import DatasetNotFoundError
    from ebjdat.train.checkpoint import CheckpointError
    from ebjdat.train.config import ConfigError

    try:
        attacks = _check_args(args)
        evaluation = Evaluation(args, attacks)
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
