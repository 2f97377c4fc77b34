"""One checkpoint's evaluation in standard units, callable from Python: accuracy and robustness,
calibration, OOD detection, generation and the energy landscape, written to OUT/report.json,
OUT/report.html (one self-contained page) and the PNG figures.

Evaluated on the TEST split of the checkpoint's dataset (the first `limit` examples). A metric
that was not run is absent from the report, never 0. A model whose weights or outputs are not
finite is still evaluated: what can be computed is reported (a prediction from non-finite logits
counts as wrong), every metric that cannot be is left out with a note saying why, and the
report opens with a warning.
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ebjdat.checks import MAX_TORCH_SEED, SettingsError, check_setting

from .checkpoints import (
    data_root,
    default_out,
    image_shape,
    image_size,
    load_checkpoint,
    non_finite_weights,
    pick_device,
    replay_buffer,
    train_images,
)
from .fresh_samples import SamplerOverrides, sample_with, save_grid
from .generation import MAX_GEN_SAMPLES
from .robustness import AA_PACKAGES, resolve_autoattack

ATTACK = re.compile(r"^(pgd\d+|autoattack)$")
# Each section seeds its own generator with seed * 1000 + offset (offsets 1..5).
_SEED_STRIDE, _SEED_OFFSETS = 1000, 5
MAX_SEED = (MAX_TORCH_SEED - _SEED_OFFSETS) // _SEED_STRIDE


@dataclass(frozen=True)
class EvalSettings:
    """What evaluate_checkpoint measures and where it writes. protocol "standard": eps in [0, 1]
    pixel units and unmodified attacks (the numbers to cite); "paper": the official code's
    units, test-time noise and reduced AutoAttack, labelled so in the report."""

    protocol: str = "standard"  # "standard" or "paper"
    attacks: tuple[str, ...] = ("pgd20", "autoattack")  # pgdK (any K >= 1), autoattack; () none
    eps: float | None = None  # [0, 1] pixel units; None: 8/255 Linf or 0.5 L2, 0.1 Linf on digits
    norm: str = "linf"  # "linf" or "l2"
    limit: int | None = None  # the first `limit` test examples only
    sanity: bool = True  # the gradient-masking sanity checks (several extra PGD runs)
    generation: bool = True  # fresh SGLD samples and the generation metrics
    ood: bool = True  # OOD detection
    gen_n: int = 1000  # fresh samples for the generation metrics, at most 50,000
    gen_uniform: bool = True  # also chains from uniform noise, the hard case
    gen_sampler: SamplerOverrides = field(default_factory=SamplerOverrides)
    buffer_ratio: float = 0.9  # the official buffer-FID selection: top R per predicted class
    seed: int = 0  # attacks, OOD sets and sampling
    batch_size: int = 500
    data_root: str | Path | None = None  # None: the checkpoint's, $EBJDAT_DATA or ./data
    progress: bool = True  # progress bars
    out: str | Path | None = None  # None: RUN/eval next to the checkpoint
    # AutoAttack engine and version; None: the protocol's own (standard: the original
    # AutoAttack, "standard" version; paper: its torchattacks-built reduced version).
    aa_impl: str | None = None  # "original" (pyautoattack) or "torchattacks"
    aa_version: str | None = None  # "standard", "plus", "rand"; "full" with torchattacks

    def attack_names(self) -> list[str]:
        return [a.lower() for a in self.attacks]

    def autoattack(self) -> tuple[str, str]:
        """(engine, version) of AutoAttack under these settings; SettingsError naming aa_impl
        or aa_version for a pair the protocol or the engine does not have."""
        return resolve_autoattack(self.protocol, self.aa_impl, self.aa_version)

    def validate(self) -> EvalSettings:
        """SettingsError naming the field, before anything is loaded (a bad value fails here,
        not after an hour); returns self."""
        if self.protocol not in ("standard", "paper"):
            raise SettingsError(
                "protocol", f"must be 'standard' or 'paper', got {self.protocol!r}"
            )
        if self.norm not in ("linf", "l2"):
            raise SettingsError("norm", f"must be 'linf' or 'l2', got {self.norm!r}")
        if isinstance(self.attacks, str):
            raise SettingsError(
                "attacks", f"must be a sequence of names, e.g. ({self.attacks!r},), not a string"
            )
        attacks = self.attack_names()
        bad = [a for a in attacks if not ATTACK.match(a)]
        if bad:
            raise SettingsError(
                "attacks",
                f"holds an unknown attack {bad[0]!r}; use pgdK (e.g. pgd20) or autoattack",
            )
        zero = [a for a in attacks if a.startswith("pgd") and int(a[3:]) < 1]
        if zero:
            raise SettingsError("attacks", f"{zero[0]}: PGD needs at least 1 step (e.g. pgd20)")
        engine, _ = self.autoattack()
        if "autoattack" in attacks and importlib.util.find_spec(AA_PACKAGES[engine]) is None:
            if engine == "original":
                raise SettingsError(
                    "aa_impl",
                    "original: autoattack needs pyautoattack, which is not installed (pip "
                    "install pyautoattack); or use aa_impl='torchattacks', or leave autoattack "
                    "out: attacks=('pgd20',)",
                )
            raise SettingsError(
                "attacks",
                "autoattack needs torchattacks, which is not installed (pip install "
                "--no-build-isolation -e '.[eval]'), or leave it out: ('pgd20',)",
            )
        # Pixel units: an L-inf ball of radius 1 already holds every image.
        eps_max = 1.0 if self.norm == "linf" else None
        check_setting("eps", self.eps, low=0.0, low_open=True, high=eps_max)
        check_setting("limit", self.limit, low=1)
        check_setting("gen_n", self.gen_n, low=2, high=MAX_GEN_SAMPLES)
        self.gen_sampler.validate("gen_sampler.")
        check_setting("buffer_ratio", self.buffer_ratio, low=0.0, low_open=True, high=1.0)
        check_setting("seed", self.seed, low=0, high=MAX_SEED)
        check_setting("batch_size", self.batch_size, low=1)
        return self


def evaluate_checkpoint(
    path: str | Path,
    settings: EvalSettings | None = None,
    device: str | torch.device | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluates the checkpoint at `path` and writes OUT/report.json, OUT/report.html and the
    figures (OUT = settings.out, else RUN/eval next to the checkpoint); returns the report.

    SettingsError, CheckpointError or DatasetNotFoundError come before anything is computed or
    written. `device` defaults to cuda when available; `log` receives one line per stage.
    """
    from ebjdat.files import unwritable_reason

    settings = (settings or EvalSettings()).validate()
    out = Path(settings.out) if settings.out else default_out(path, "eval")
    reason = unwritable_reason(out)
    if reason is not None:
        raise SettingsError("out", f"{out}: {reason}")
    evaluation = Evaluation(path, settings, pick_device(device), out, log=log)
    evaluation.run()
    return evaluation.report


class Evaluation:
    """One evaluation of one checkpoint: the model, its data and the report being filled in.
    evaluate_checkpoint is the one-call form; this class lets a caller run sections alone."""

    def __init__(
        self,
        checkpoint: str | Path,
        settings: EvalSettings,
        device: torch.device,
        out: Path,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """Loads everything a section needs (checkpoint, test split, train split when sampling),
        so that a missing file fails here, before the output directory is touched."""
        from ebjdat.data import dataset_info, load_split_tensors, to_float01

        from .robustness import autoattack_min_classes, default_eps

        s = settings.validate()
        self.checkpoint = checkpoint
        self.settings = s
        self.attacks = s.attack_names()
        self.progress = s.progress
        self.log = log or (lambda message: None)
        self.device = device
        self.model, self.state, self.cfg = load_checkpoint(checkpoint, self.device)
        self.dataset = self.cfg.data.dataset
        self.root = data_root(self.cfg, s.data_root)
        size = image_size(self.cfg)
        self.info = dataset_info(self.dataset, self.root, image_size=size)
        _, aa_version = s.autoattack()
        need = autoattack_min_classes(aa_version)
        if "autoattack" in self.attacks and self.info.num_classes < need:
            raise SettingsError(
                "attacks",
                f"autoattack needs at least {need} classes ({self.dataset} has "
                f"{self.info.num_classes}); use pgdK",
            )
        x, y = load_split_tensors(self.dataset, "test", self.root, self.cfg.data.download, size)
        self.x_test_full = x
        n = len(x) if s.limit is None else min(s.limit, len(x))
        self.x, self.y = to_float01(x[:n]), y[:n].long()
        self.eps_requested = s.eps if s.eps is not None else default_eps(self.dataset, s.norm)
        self.out = out
        self.figures: dict[str, Path] = {}
        self.energies: dict[str, torch.Tensor] = {}
        self._train: tuple[torch.Tensor, torch.Tensor] | None = None
        if s.generation:
            self.train_split()
        import ebjdat

        progress = self.state.get("progress") if isinstance(self.state, dict) else None
        self.report: dict[str, Any] = {
            "checkpoint": str(checkpoint),
            "dataset": self.dataset,
            "preset": self.cfg.preset,
            "epoch": progress.get("epoch") if isinstance(progress, dict) else None,
            "protocol": s.protocol,
            "norm": s.norm,
            "n_examples": int(n),
            "split": "test",
            "ebjdat_version": ebjdat.__version__,
            "device": str(self.device),
            "seed": s.seed,
            "warnings": [],
            "notes": [],
            "settings": {},
            "timings": {},
        }
        if self.report["epoch"] is None:
            del self.report["epoch"]
        ema = self.state.get("ema") if isinstance(self.state, dict) else None
        if isinstance(ema, dict) and "decay" in ema:
            # The checkpoint's model is the trainer's weight average (train.ema_decay).
            self.report["weights"] = f"exponential moving average, decay {ema['decay']:g}"
        else:
            self.report["weights"] = "the trained weights as they were at the checkpoint"
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
        return torch.Generator(self.device).manual_seed(self.settings.seed * _SEED_STRIDE + offset)

    def train_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._train is None:
            self._train = train_images(self.cfg, self.root)
        return self._train

    def batches(self, n: int, desc: str) -> Any:
        from tqdm import tqdm

        bs = self.settings.batch_size
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
        bs = self.settings.batch_size
        return torch.cat(
            [
                self.model.energies(x01[i : i + bs].to(self.device)).energy.float().cpu()
                for i in self.batches(len(x01), desc)
            ]
        )

    def stage(self, name: str, fn: Callable[[], None]) -> None:
        self.log(f"{name} ...")
        start = time.perf_counter()
        fn()
        self.report["timings"][name] = round(time.perf_counter() - start, 2)

    # ---- sections ---------------------------------------------------------------------------

    def robustness(self) -> None:
        from .robustness import evaluate_robustness

        result = evaluate_robustness(
            self.model,
            self.x,
            self.y,
            protocol=self.settings.protocol,
            eps=self.eps_requested,
            norm=self.settings.norm,
            attacks=tuple(self.attacks),
            n_classes=self.info.num_classes,
            generator=self.generator(1),
            batch_size=self.settings.batch_size,
            seed=self.settings.seed,
            sanity=self.settings.sanity and bool(self.attacks),
            aa_impl=self.settings.aa_impl,
            aa_version=self.settings.aa_version,
        )
        self.report["warnings"].extend(
            f"AutoAttack's own check ({result['autoattack_engine']} engine): {message}"
            for message in result.get("autoattack_checks", [])
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
        from .calibration import expected_calibration_error, reliability_diagram

        bs = self.settings.batch_size
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
        from .ood import ood_auroc, ood_sets_for

        found = ood_sets_for(self.dataset, self.root, len(self.x), self.generator(2), x=self.x)
        sets, skipped = found["sets"], found["skipped"]
        for name, reason in skipped.items():
            self.report["notes"].append(f"OOD set {name} skipped: {reason}")
        if not sets:
            self.report["notes"].append("no OOD sets available: OOD AUROC not computed")
            return
        from .ood import SCORES

        result = ood_auroc(self.model, self.x, sets, batch_size=self.settings.batch_size)
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
        """Fresh samples and, beside them, what they must be judged against: their own starts
        (0 SGLD steps), chains from uniform noise (the hard case) and held-out real images."""
        from dataclasses import replace

        from ebjdat.sampling import fit_class_gaussians

        from .generation import grid_rows

        s = self.settings
        settings = s.gen_sampler.resolve(self.cfg)
        k = self.info.num_classes
        gaussians = None
        if settings.start == "class":
            gaussians = fit_class_gaussians(*self.train_split(), k)
        shape = None if gaussians is not None else image_shape(self.state, self.cfg, self.root)
        starts: list[torch.Tensor] = []
        start = time.perf_counter()
        x_gen, labels = sample_with(
            self.model, s.gen_n, settings, gaussians=gaussians, shape=shape,
            generator=self.generator(3),
            batch_size=s.batch_size, progress=self.progress, on_start=self._keeper(starts),
        )
        self.report["settings"]["generation"] = {
            **settings.record(),
            "n": s.gen_n,
            "seed": s.seed,
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
        shown_labels = None if labels is None else labels[: len(shown)]
        self.figures["samples"], _ = save_grid(
            shown, self.out / "samples.png", grid_rows(len(shown)), labels=shown_labels,
            num_classes=k, class_names=self.info.classes,
        )
        self.energies["generated"] = self.energy_of(x_gen, "energies (generated)")
        sets: dict[str, tuple[torch.Tensor, int]] = {
            "": (x_gen, bad),
            "_init": (self._cat(starts), 0),
        }
        if s.gen_uniform and settings.start != "noise":
            uniform = replace(settings, start="noise")
            starts_u: list[torch.Tensor] = []
            x_uni, _ = sample_with(
                self.model, s.gen_n, uniform, gaussians=None,
                shape=shape or image_shape(self.state, self.cfg, self.root),
                generator=self.generator(5), batch_size=s.batch_size, progress=self.progress,
                on_start=self._keeper(starts_u),
            )
            bad_u = int((~torch.isfinite(x_uni.flatten(1)).all(dim=1)).sum())
            sets["_uniform"] = (x_uni, bad_u)
            sets["_uniform_init"] = (self._cat(starts_u), 0)
            self.figures["uniform_samples"], _ = save_grid(
                torch.nan_to_num(x_uni[:100], nan=0.0), self.out / "uniform_samples.png",
                grid_rows(min(len(x_uni), 100)),
            )
        elif s.gen_uniform:
            sets["_uniform"], sets["_uniform_init"] = sets[""], sets["_init"]
        self._generation_metrics(sets)

    def _keeper(self, into: list[torch.Tensor]) -> Callable[[torch.Tensor], None]:
        """Collects start batches: as floats on digits (64 values an image), else as the uint8
        images Inception is fed anyway, a quarter of the memory and the same features."""
        if self.dataset == "digits":
            return into.append
        return lambda x01: into.append((x01 * 255).round().to(torch.uint8))

    @staticmethod
    def _cat(batches: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(batches)
        return x.float() / 255 if x.dtype == torch.uint8 else x

    def _real_floor(self, n: int) -> torch.Tensor:
        """The first n held-out test images (all of them when the split is smaller)."""
        from ebjdat.data import to_float01

        return to_float01(self.x_test_full[: min(n, len(self.x_test_full))])

    def _generation_metrics(self, sets: dict[str, tuple[torch.Tensor, int]]) -> None:
        """The sample metrics of every set (suffix "" the fresh samples, "_init" their starts,
        "_uniform" / "_uniform_init" chains from uniform noise, "_real" held-out real images),
        all against one reference; a set with non-finite samples is noted as not computable."""
        from ebjdat.data import to_float01

        from .generation import (
            InceptionUnavailable,
            buffer_samples_official,
            digits_features,
            feature_statistics,
            frechet_distance,
            grid_rows,
            inception_extractor,
            inception_features,
            inception_metrics_from_features,
            sample_count_warning,
        )

        x_gen, bad = sets[""]
        x_train, _ = self.train_split()
        buf = replay_buffer(self.state)
        x_buf = None
        if buf is None:
            self.report["notes"].append(
                "the checkpoint holds no replay buffer (no generative term): buffer FID not "
                "computed"
            )
        else:
            s = self.settings
            try:
                x_buf = buffer_samples_official(
                    self.model, buf.to(self.device), s.buffer_ratio, s.batch_size
                )
            except ValueError as err:
                self.report["notes"].append(f"buffer FID not computable: {err}")
            else:
                self.report["n_buffer_selected"] = int(len(x_buf))
                shown = x_buf[: min(len(x_buf), 100)]
                self.figures["buffer_samples"], _ = save_grid(
                    shown, self.out / "buffer_samples.png", grid_rows(len(shown))
                )
        x_real = self._real_floor(len(x_gen))
        sets = {**sets, "_real": (x_real, 0)}
        ref = f"{self.dataset} train split ({len(x_train)} images)"
        baselines = {
            "reference": ref,
            "n_samples": len(x_gen),
            "init": "the fresh samples' own starts, 0 SGLD steps",
            "real": f"the first {len(x_real)} held-out test images (the floor)",
        }
        if "_uniform" in sets:
            baselines["uniform"] = (
                "the same SGLD settings from U(0, 1) images (uniform noise in the image range)"
                + (" = the fresh samples, whose start is uniform noise"
                   if sets["_uniform"] is sets[""] else "")
            )
            baselines["uniform_init"] = "those uniform-noise starts, 0 SGLD steps"
        self.report["settings"]["generation_baselines"] = baselines
        if len(x_real) < len(x_gen):
            self.report["notes"].append(
                f"the real-data floor uses all {len(x_real)} held-out test images, fewer than "
                f"the {len(x_gen)} samples: its own small-sample bias is larger"
            )

        def broken(suffix: str, what: str) -> bool:
            n_bad = sets[suffix][1]
            if n_bad:
                self.report["notes"].append(
                    f"{what}{suffix} not computable: {n_bad} of {len(sets[suffix][0])} samples "
                    "are not finite"
                )
            return bool(n_bad)

        if self.dataset == "digits":
            mu_r, s_r = feature_statistics(digits_features(x_train))
            for suffix, (x, _) in sets.items():
                if not broken(suffix, "fid_digits"):
                    mu, sig = feature_statistics(digits_features(x))
                    self.report[f"fid_digits{suffix}"] = frechet_distance(mu, sig, mu_r, s_r)
            mu, sig = feature_statistics(digits_features(to_float01(self.x_test_full)))
            self.report["fid_digits_test_split"] = frechet_distance(mu, sig, mu_r, s_r)
            if x_buf is not None and len(x_buf) >= 2:
                mu, sig = feature_statistics(digits_features(x_buf))
                self.report["buffer_fid_digits"] = frechet_distance(mu, sig, mu_r, s_r)
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
            warning = sample_count_warning(len(x_gen), "fid_digits and its baselines")
            if warning:
                self.report["warnings"].append(warning)
            return
        try:
            net = inception_extractor(self.device)
        except InceptionUnavailable as err:
            self.report["notes"].append(str(err))
            return
        pool_r, _ = inception_features(net, x_train, progress=self.progress)
        for suffix, (x, _) in sets.items():
            if broken(suffix, "FID, IS and KID"):
                continue
            pool, logits = inception_features(net, x, progress=self.progress)
            metrics = inception_metrics_from_features(pool, logits, pool_r)
            self.report.update({f"{k}{suffix}": v for k, v in metrics.items()})
        if x_buf is not None:
            pool, logits = inception_features(net, x_buf, progress=self.progress)
            b = inception_metrics_from_features(pool, logits, pool_r, kid=False)
            self.report["buffer_fid"] = b["fid"]
            self.report["buffer_inception_score"] = b["inception_score"]
        self.report["settings"]["inception"] = {
            "reference": ref,
            "extractor": "torch-fidelity InceptionV3 (2048-d pool features, uint8 inputs)",
        }
        warning = sample_count_warning(len(x_gen), "FID, IS and KID")
        if warning:
            self.report["warnings"].append(warning)

    def energies_figure(self) -> None:
        from ebjdat.attacks import pgd_attack

        from .energy import energy_gaps, energy_histogram

        eps = float(self.report.get("eps", self.eps_requested))
        steps = 20
        step = 2.5 * eps / steps
        gen = self.generator(4)
        bs = self.settings.batch_size
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
                    norm=self.settings.norm,
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
            "adversarial": f"untargeted PGD-{steps} on CE, {self.settings.norm} eps={eps:.6g} "
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
            "adversarial": f"PGD-{steps} adversarial ({self.settings.norm}, ε={eps:.3g})",
        }
        if "generated" in order:
            n_steps = self.report["settings"]["generation"]["steps"]
            labels["generated"] = f"fresh SGLD samples ({n_steps} steps)"
        self.figures["energy"] = energy_histogram(
            self.out / "energy_histogram.png", order, title, labels=labels
        )

    def run(self) -> tuple[Path, Path]:
        """Every section the settings ask for, then OUT/report.json and OUT/report.html;
        returns their paths."""
        from .report import write_report

        self.out.mkdir(parents=True, exist_ok=True)
        self.log(
            f"{self.checkpoint} on {self.dataset} test "
            f"({self.report['n_examples']} examples, {self.settings.protocol} protocol, "
            f"{self.device}) -> {self.out}"
        )
        self.stage("robustness", self.robustness)
        self.stage("calibration", self.calibration)
        if self.settings.ood:
            self.stage("ood", self.ood)
        if self.settings.generation:
            self.stage("generation", self.generation)
        self.stage("energies", self.energies_figure)
        return write_report(self.out, self.report, self.figures)


