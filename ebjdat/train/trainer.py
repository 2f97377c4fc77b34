"""The EB-JDAT training loop: samplers, loss, optimiser, evaluation on the validation split,
checkpoints that hold everything, exact resume, and a divergence guard that rolls back.

One iteration, in the official order (see docs/method-notes.md, 'One official training
iteration'): draw positives x+ and a labelled batch (x, y); run SGLD from the replay buffer
(x_q); run the adversarial sampler on (x, y) (x_adv); take one optimiser step on the EB-JDAT
loss (SAM: two passes on the same samples, BN running statistics frozen in the second).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ebjdat import checkpoint
from ebjdat.attacks import adversarial_samples, pgd_attack
from ebjdat.data import to_float01
from ebjdat.eval.robustness import clean_accuracy
from ebjdat.files import write_text_atomic
from ebjdat.models import Classifier, EnergyModel, frozen_bn_stats

from . import rundir
from .averaging import WeightAverage
from .build import (
    Distributed,
    TrainingParts,
    build_training,
    device_generator,
    lr_factor,
    sampler_seed,
)
from .config import RESUME_SAFE_KEYS, Config, ConfigError, from_dict, to_toml
from .losses import Forward, LossTerms, eb_jdat_loss, needs
from .sam import SAM
from .schedule import learning_rate
from .watch import Diverged, StepWatch


class PhaseTimer:
    """Wall-clock time per phase of an iteration (device-synchronised), for benchmarks."""

    def __init__(self, enabled: bool = True, device: torch.device | None = None) -> None:
        self.enabled = enabled
        self.device = device
        self.seconds: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


class TrainingStopped(RuntimeError):
    """Divergence persisted through every allowed retry; the last good checkpoint is intact."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM (a scheduler's preemption) stopped training after a checkpoint of the
    interrupted state was written; `--resume` continues it exactly."""

    def __init__(self, signum: int, epoch: int, iteration: int, path: Path) -> None:
        self.signum, self.epoch, self.iteration, self.path = signum, epoch, iteration, path
        name = signal.Signals(signum).name
        super().__init__(f"{name} at epoch {epoch + 1}, iteration {iteration}; saved {path}")


@dataclass
class Progress:
    """Counters and history that a checkpoint carries besides the tensors."""

    epoch: int = 0  # completed epochs
    iteration: int = 0  # completed iterations, over all epochs
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float = -math.inf
    lr_scale: float = 1.0
    retries: int = 0
    seed: int = 0  # the current sampler seed (changed by a rollback)


class Trainer:
    """EB-JDAT training of one classifier: the loop, its state, checkpoints, exact resume and
    divergence rollback.

    `model` is any `nn.Module` mapping [0, 1] images to logits (None: ebjdat's WideResNet from
    the config's [model] section). `train_data`/`val_data` are map-style Datasets of
    (image, label) or (images, labels) tensors (None: the dataset the config names; without
    val_data a seeded 10% of train_data is held out). `config` is a Config or a dict of
    "section.key" overrides on `preset`. `out_dir=None` trains without writing anything (the
    rollback point is then kept in memory). `distributed` (default: what torchrun's environment
    or an initialised process group says) makes the run data parallel, one shard per process.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        train_data: Any = None,
        *,
        val_data: Any = None,
        preset: str = "digits",
        config: Config | Mapping[str, Any] | None = None,
        out_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        distributed: Distributed | None = None,
        log: Callable[[str], None] = print,
        progress_bar: bool = True,
        handle_signals: bool = True,
    ) -> None:
        parts = build_training(
            model,
            train_data,
            val_data=val_data,
            preset=preset,
            config=config,
            device=device,
            distributed=distributed,
            log=log,
        )
        self._adopt(parts, out_dir, log, progress_bar, handle_signals)

    @classmethod
    def from_parts(
        cls,
        parts: TrainingParts,
        *,
        out_dir: str | Path | None = None,
        log: Callable[[str], None] = print,
        progress_bar: bool = True,
        handle_signals: bool = True,
    ) -> Trainer:
        """A Trainer on parts that `build_training` made (the CLI builds them first)."""
        trainer = cls.__new__(cls)
        trainer._adopt(parts, out_dir, log, progress_bar, handle_signals)
        return trainer

    def _adopt(
        self,
        parts: TrainingParts,
        out_dir: str | Path | None,
        log: Callable[[str], None],
        progress_bar: bool,
        handle_signals: bool,
    ) -> None:
        self.cfg, self.device, self.dist = parts.cfg, parts.device, parts.dist
        self.model: EnergyModel = parts.model
        self.logits, self.memory_format = parts.logits, parts.memory_format
        self.loss_logits = parts.loss_logits
        self.lr_factor = lr_factor(self.cfg, self.dist)
        self.labelled, self.positives, self.buffer = parts.labelled, parts.positives, parts.buffer
        self.generator, self.optimizer = parts.generator, parts.optimizer
        self.val_x, self.val_y = parts.val_x, parts.val_y
        self.image_shape, self.num_classes = parts.image_shape, parts.num_classes
        self.data_source = parts.data_source
        self.out = Path(out_dir) if out_dir is not None else None
        self.handle_signals = handle_signals
        self.log = log if self.dist.main else (lambda msg: None)
        self.progress_bar = progress_bar and self.dist.main
        self.need = needs(self.cfg.loss, self.cfg.adv.enabled)
        self.state = Progress(seed=self.cfg.train.seed)
        self.watch = StepWatch(
            self.cfg.train.max_loss, self.cfg.train.max_energy, self.device, self.dist.world_size
        )
        self._positive_batches = iter(self.positives)
        self._stop_signal: int | None = None
        self._memory: bytes | None = None  # the last checkpoint, when there is no out_dir
        self.run_id: str | None = None
        self._resumed = False
        self._started = False
        self._writer: Any = None  # TensorBoard, opened at the first metrics row
        self.average: WeightAverage | None = None  # made once the ranks share the weights
        if isinstance(self.model, Classifier) and self.model.builder is None and self.out:
            self.log(
                f"{type(self.model.net).__name__} records no builder: load its checkpoints with "
                "ebjdat.load_classifier(path, model=<an untrained instance>), or pass "
                "ebjdat.Classifier(net, num_classes, builder='module:function', kwargs={...})"
            )
        self._sync_parameters()
        decay = self.cfg.train.ema_decay
        self.average = WeightAverage(self.model, decay) if decay > 0 else None

    # ---- construction helpers ----------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        if self.out is None:
            raise ValueError("this Trainer has no out_dir: it writes no files")
        return self.out

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def _tensorboard(self) -> Any:
        if not self.dist.main or self.out is None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

    @property
    def evaluated_model(self) -> EnergyModel:
        """The model that is validated, chosen as best and checkpointed as "model": the weight
        average with train.ema_decay > 0, else the live (training) model."""
        return self.average.module if self.average is not None else self.model  # type: ignore[return-value]

    def _sync_parameters(self, buffers_only: bool = False) -> None:
        """Every rank takes rank 0's weights (at the start) or BN statistics (before each
        evaluation, so that every rank evaluates, and checkpoints, the same model)."""
        if self.dist.world_size > 1:
            tensors = list(self.model.buffers())
            if self.average is not None:
                tensors += list(self.average.module.buffers())
            if not buffers_only:
                tensors += list(self.model.parameters())
            for t in tensors:
                dist.broadcast(t.data, src=0)

    # ---- one iteration -----------------------------------------------------------------------

    def _next_positives(self) -> torch.Tensor:
        try:
            x, _ = next(self._positive_batches)
        except StopIteration:
            self._positive_batches = iter(self.positives)
            x, _ = next(self._positive_batches)
        return x

    def _samples(self) -> torch.Tensor:
        s = self.cfg.sgld
        with torch.autocast(self.device.type, enabled=False):  # buffer math stays float32
            z0, idx = self.buffer.sample(self.cfg.data.batch_size)
        z = s(  # the [sgld] section is the sampler
            self.model,
            z0.contiguous(memory_format=self.memory_format),
            generator=self.generator,
            logits_fn=self.logits,
            cuda_graph=self.cfg.train.cuda_graphs,
        )
        self.buffer.update(idx, z)
        return z

    def _adversarial(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return adversarial_samples(
            self.model,
            z,
            y,
            self.cfg.adv,  # the [adv] section is the sampler's settings
            generator=self.generator,
            logits_fn=self.logits,
            cuda_graph=self.cfg.train.cuda_graphs,
        )

    @torch.no_grad()
    def _official_bn_updates(
        self, z_pos: torch.Tensor | None, z_lab: torch.Tensor | None, z_adv: torch.Tensor
    ) -> None:
        """train.official_bn_updates: the train-mode forwards that the official loop makes after
        the adversarial sampler and ours does not, in its order. Its alignment term forwards its
        positives again (the positives minibatch, or with paired positives the labelled batch)
        and the adversarial batch, which the adversarial CE term then forwards once more. No
        graphs, so only BatchNorm running statistics (and dropout draws) see them; self.logits
        is the unwrapped model, so they never all-reduce under data parallelism."""
        need = self.need
        if not need["align"]:
            return  # the adversarial batch is forwarded once, as here
        positives = z_pos if self.cfg.loss.align_positives == "unpaired" else z_lab
        if positives is not None:
            self.logits(positives)
        if need["ce_adv"]:
            self.logits(z_adv)  # the loss's own forward of z_adv is the official's second

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 forwards when asked (train.autocast = "bf16"); energies stay float32."""
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.cfg.train.autocast == "bf16"
        )

    def train_step(
        self,
        x_pos: torch.Tensor,
        x_lab: torch.Tensor,
        y: torch.Tensor,
        timer: PhaseTimer | None = None,
    ) -> LossTerms:
        """One optimiser step. The forwards run in the official order (positives, SGLD, samples,
        labelled, adversarial sampling, adversarial), so the BatchNorm running statistics that
        the eval-mode adversarial sampler reads are exactly the official code's, but no input is
        forwarded twice: after the sampler the official loop forwards the positives again and
        the adversarial batch twice, which only moves the running statistics further;
        train.official_bn_updates repeats those forwards without graphs. A diverged step is
        recorded, not raised, so that nothing waits for the device: `self.watch.check()` raises
        Diverged (fit() calls it every train.sync_every iterations and before every
        checkpoint)."""
        phase = timer or PhaseTimer(enabled=False)
        lr = learning_rate(
            self.cfg.optim,
            self.state.iteration,
            self.state.epoch,
            self.state.lr_scale * self.lr_factor,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        need = self.need
        fmt = self.memory_format
        x_pos = x_pos.contiguous(memory_format=fmt)
        x_lab = x_lab.contiguous(memory_format=fmt)
        z_pos = self.model.to_internal(x_pos) if need["positives"] else None
        z_all = self.model.to_internal(x_lab)  # the adversarial sampler starts from it either way
        z_lab = z_all if need["labelled"] else None
        # The loss forwards; under data parallelism they go through DDP, whose backward
        # all-reduces the gradients. The samplers call self.logits, which never communicates.
        f = self.loss_logits
        self.optimizer.zero_grad(set_to_none=True)
        self.model.train()
        with self._autocast():
            with phase("loss_forward"):
                logits_pos = f(z_pos) if z_pos is not None else None
            z_q = logits_q = None
            if need["samples"]:
                with phase("sgld"):
                    z_q = self._samples()
                with phase("loss_forward"):
                    logits_q = f(z_q)
            with phase("loss_forward"):
                logits_lab = f(z_lab) if z_lab is not None else None
            z_adv = logits_adv = None
            if need["adversarial"]:
                with phase("adversarial"):
                    z_adv = self._adversarial(z_all, y)
                with phase("loss_forward"):
                    if self.cfg.train.official_bn_updates:
                        self._official_bn_updates(z_pos, z_lab, z_adv)
                    logits_adv = f(z_adv)
            with phase("loss_forward"):
                forward = Forward(logits_pos, logits_q, logits_lab, logits_adv)
                terms = eb_jdat_loss(self.cfg.loss, forward, y, self.cfg.adv.enabled)
                self.watch.add(terms, self.state.iteration)
        with phase("loss_backward"):
            terms.total.backward()
        with phase("optimizer"):
            if isinstance(self.optimizer, SAM):
                # The second pass: the same samples at the perturbed weights, BN stats frozen.
                self.optimizer.first_step()
                self.optimizer.zero_grad(set_to_none=True)
                with frozen_bn_stats(self.model), self._autocast():
                    again = Forward(
                        *(f(z) if z is not None else None for z in (z_pos, z_q, z_lab, z_adv))
                    )
                    eb_jdat_loss(self.cfg.loss, again, y, self.cfg.adv.enabled).total.backward()
                self.optimizer.second_step()
            else:
                self.optimizer.step()
        if self.average is not None:
            self.average.update(self.model)
        self.state.iteration += 1
        return terms

    # ---- evaluation ----------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Clean accuracy on the validation split and PGD accuracy on its first eval_limit
        examples (L-inf, eval_eps, eval_steps, step 2.5 eps / steps, random start), of the
        evaluated_model (the weight average when there is one)."""
        t = self.cfg.train
        model = self.evaluated_model.eval()
        out = {"val_acc": clean_accuracy(model, self.val_x, self.val_y)}
        n = min(t.eval_limit, len(self.val_x))
        if n > 0 and t.eval_steps > 0:
            x = to_float01(self.val_x[:n]).to(self.device)
            y = self.val_y[:n].to(self.device)
            x_adv = pgd_attack(
                model,
                x,
                y,
                eps=t.eval_eps,
                step_size=2.5 * t.eval_eps / t.eval_steps,
                steps=t.eval_steps,
                generator=device_generator(self.device, 12345),
            )
            out["val_robust_acc"] = clean_accuracy(model, x_adv, y)
        return out

    # ---- checkpoints -----------------------------------------------------------------------------

    def _local_state(self) -> dict[str, Any]:
        """What differs between ranks: loaders, buffer, generators."""
        return {
            "labelled": self.labelled.state_dict(),
            "positives": self.positives.state_dict(),
            "buffer": self.buffer.state_dict() if self.buffer is not None else None,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python_rng": list(random.getstate()[1]),
            "watch": self.watch.state_dict(),
        }

    def state_dict(self) -> dict[str, Any]:
        local = self._local_state()
        if self.dist.world_size > 1:
            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, local)
            ranks = gathered
        else:
            ranks = [local]
        p = self.state
        averaged = {}
        if self.average is not None:
            # "model" is what every reader evaluates; the live weights are only for resume.
            averaged = {"live_model": self.model.state_dict(), "ema": self.average.state_dict()}
        return {
            "config": self.cfg.to_dict(),
            "run_id": self.run_id,
            "model": self.evaluated_model.state_dict(),
            **averaged,
            "model_config": self.model.config,
            # "user": trained on data passed in (not the config's dataset), which ebjdat-eval
            # cannot reload by name.
            "data_source": self.data_source,
            "optimizer": self.optimizer.state_dict(),
            "progress": {
                "epoch": p.epoch,
                "iteration": p.iteration,
                "best": p.best,
                "lr_scale": p.lr_scale,
                "retries": p.retries,
                "seed": p.seed,
            },
            "history": p.history,
            "ranks": ranks,
            "world_size": self.dist.world_size,
        }

    def load_state_dict(self, state: dict[str, Any], source: str | Path = "checkpoint") -> None:
        """Restores everything; a checkpoint that does not fit this trainer (another model,
        optimiser, loader or buffer) raises a one-line CheckpointError, not a KeyError or a
        35-line size-mismatch report."""

        checkpoint.check_training_state(state, source)
        ranks = state["ranks"]
        if len(ranks) != self.dist.world_size:
            # Each process's loader positions, replay chains and RNG streams belong to its
            # shard; re-splitting them would not continue the same run.
            raise checkpoint.CheckpointError(
                f"checkpoint {source} was written by {len(ranks)} process"
                f"{'es' if len(ranks) != 1 else ''} and this run has {self.dist.world_size}: "
                f"resume it with the same number (torchrun --nproc-per-node {len(ranks)}, or "
                f"a plain ebjdat-train for 1)"
            )
        self._load_weights(state, str(source))
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise checkpoint.CheckpointError(
                f"checkpoint {source}: its optimiser state does not fit optim.name = "
                f"{self.cfg.optim.name!r} ({_first_line(err)})"
            ) from None
        p = state["progress"]
        self.state = Progress(
            epoch=int(p["epoch"]),
            iteration=int(p["iteration"]),
            history=list(state["history"]),
            best=float(p["best"]),
            lr_scale=float(p["lr_scale"]),
            retries=int(p["retries"]),
            seed=int(p["seed"]),
        )
        local = ranks[self.dist.rank]
        try:
            self.labelled.load_state_dict(local["labelled"])
            self.positives.load_state_dict(local["positives"])
            self._positive_batches = iter(self.positives)
            if self.buffer is not None and local["buffer"] is not None:
                self.buffer.load_state_dict(local["buffer"])
            self.generator.set_state(local["generator"])
            torch.set_rng_state(local["torch_rng"])
            if local["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(local["cuda_rng"])
            random.setstate((3, tuple(local["python_rng"]), None))
            self.watch.load_state_dict(local.get("watch", {}))
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as err:
            raise checkpoint.CheckpointError(
                f"checkpoint {source}: its loader, buffer or RNG state does not fit this run "
                f"({_first_line(err)})"
            ) from None

    def _load_weights(self, state: dict[str, Any], source: str) -> None:
        """The live weights (and the average's), from a checkpoint with or without an average."""
        from ebjdat.models.loading import load_weights

        averaged = "live_model" in state
        if self.average is not None and not (averaged and isinstance(state.get("ema"), dict)):
            raise checkpoint.CheckpointError(
                f"checkpoint {source} holds no weight average (no 'live_model' and 'ema' "
                "entries), and this run has train.ema_decay > 0"
            )
        load_weights(self.model, state["live_model" if averaged else "model"], source)
        if self.average is not None:
            load_weights(self.average.module, state["model"], source)
            try:
                self.average.load_state_dict(state["ema"])
            except (KeyError, TypeError, ValueError) as err:
                raise checkpoint.CheckpointError(
                    f"checkpoint {source}: its 'ema' entry is malformed ({_first_line(err)})"
                ) from None

    def save(self, *names: str) -> None:
        self.watch.check()  # never write a checkpoint after an unchecked diverged step
        state = self.state_dict()  # every rank takes part in the gather
        if self.out is None:  # no run directory: keep the rollback point in memory
            buffer = io.BytesIO()
            torch.save(state, buffer)
            self._memory = buffer.getvalue()
            return
        if self.dist.main:
            for name in names:
                checkpoint.save(self.ckpt_dir / name, state)
            self._write_metrics()

    def _write_metrics(self) -> None:
        """metrics.jsonl, rewritten whole from the history of the checkpoint just written: the
        file always agrees with the last checkpoint, whatever failed or was resumed in between."""
        if self.dist.main and self.out is not None:
            text = "".join(json.dumps(row) + "\n" for row in self.state.history)
            write_text_atomic(self.metrics_path, text)

    def start(self, *, overwrite: bool = False) -> None:
        """Creates the run directory with its config, marker and first checkpoint, atomically:
        it appears complete (and resumable) or not at all. With `overwrite`, an existing ebjdat
        run at the same place is replaced only once the new one stands."""
        final = self.out
        if final is None:
            self.save("last.pt")
            self._started = True
            return
        new = rundir.NewRun(final) if self.dist.main else None
        if new is not None:
            rundir.check_new(final, overwrite=overwrite)
            self.run_id = new.id
        try:
            if new is not None:
                self.out = new.begin(to_toml(self.cfg))
            self.save("last.pt")  # the first good state a rollback can return to
            if new is not None:
                new.commit()
        except BaseException:
            if new is not None:
                new.abort()
            raise
        finally:
            self.out = final
        self._started = True

    def resume(self, loaded: tuple[dict[str, Any], Config] | None = None) -> None:
        """Continues from out_dir's last.pt; `loaded` is what load_training already returned
        for it (the CLI reads it once to build the config), so it is not read twice."""
        if self.out is None:
            raise ValueError("resume() needs the out_dir of the run to continue")
        path = self.ckpt_dir / "last.pt"
        state, saved = loaded if loaded is not None else load_training(path)
        rundir.check_resume(self.out, state.get("run_id"), state["config"], path)
        changed = config_changes(saved, self.cfg)
        refused = [key for key in changed if key not in RESUME_SAFE_KEYS]
        if refused:
            raise ConfigError(
                f"--resume: {refused[0]} differs from the run's config; a resumed run keeps its "
                f"config except {', '.join(RESUME_SAFE_KEYS)}"
            )
        self.load_state_dict(state, path)
        self.run_id = state.get("run_id") or rundir.run_id(self.out)
        if changed and self.dist.main:
            write_text_atomic(self.out / "config.toml", to_toml(self.cfg))
            self.log("resume: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
        self._write_metrics()  # drop rows written after the checkpoint (a crash in between)
        if self.dist.main:  # temporaries of writes that a kill -9 cut short
            for stale in self.ckpt_dir.glob(".*.pt.*.tmp"):
                stale.unlink(missing_ok=True)
        self._resumed = True
        self.log(
            f"resumed from {path} at epoch {self.state.epoch}, iteration {self.state.iteration}"
        )

    def _rollback(self, reason: Diverged) -> None:
        """Back to the last good checkpoint with a lower learning rate and a fresh seed."""
        retries = self.state.retries + 1
        scale = self.state.lr_scale * self.cfg.train.retry_lr_factor
        if retries > self.cfg.train.max_retries:
            raise TrainingStopped(
                f"training diverged ({reason}) and {self.cfg.train.max_retries} rollbacks did not "
                f"help; the last good checkpoint is "
                f"{self.ckpt_dir / 'last.pt' if self.out is not None else 'the in-memory one'}"
            )
        if self.out is None:
            path: str | Path = "the in-memory checkpoint"
            assert self._memory is not None
            state = torch.load(
                io.BytesIO(self._memory), map_location=self.device, weights_only=True
            )
        else:
            path = self.ckpt_dir / "last.pt"
            state = checkpoint.load(path, map_location=self.device)
        self.load_state_dict(state, path)
        # ^ the watch too: the checkpoint's sums, nothing pending
        self.state.retries, self.state.lr_scale = retries, scale
        self.state.seed = self.cfg.train.seed + 7919 * retries
        self.generator.manual_seed(sampler_seed(self.state.seed, self.dist.rank))
        self.log(
            f"divergence: {reason}; rolled back to epoch {self.state.epoch}, iteration "
            f"{self.state.iteration}, learning-rate scale {scale:g}, seed {self.state.seed} "
            f"(retry {retries}/{self.cfg.train.max_retries})"
        )

    # ---- interruption ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM only ask training to stop: the loop then saves the state it has
        reached and raises TrainingInterrupted. A second signal stops at once (the last
        checkpoint on disk stays intact: writes are atomic)."""
        if (
            not self.handle_signals
            or self.out is None  # nothing to save to: Ctrl-C is an ordinary KeyboardInterrupt
            or threading.current_thread() is not threading.main_thread()
        ):
            yield
            return
        previous: dict[int, Any] = {}

        def handler(signum: int, frame: Any) -> None:
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signum  # nothing else here: printing could re-enter stdout

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
        try:
            yield
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)

    def _stop_requested(self) -> bool:
        """Whether a signal asked to stop; under DDP every rank agrees, at sync points only, so
        that all of them take part in the same checkpoint."""
        if self.dist.world_size == 1:
            return self._stop_signal is not None
        if self.state.iteration % self.cfg.train.sync_every:
            return False
        flag = torch.tensor(
            [0 if self._stop_signal is None else int(self._stop_signal)], device=self.device
        )
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self._stop_signal is None:
            self._stop_signal = int(flag.item())
        return bool(flag.item())

    def _interrupt(self) -> TrainingInterrupted:
        return TrainingInterrupted(
            int(self._stop_signal or signal.SIGINT),
            self.state.epoch,
            self.state.iteration,
            self.ckpt_dir / "last.pt",
        )

    # ---- the loop --------------------------------------------------------------------------------

    def _save_samples(self) -> None:
        if (
            self.buffer is None
            or self.out is None
            or not self.dist.main
            or self.cfg.train.sample_grid <= 0
        ):
            return
        from ebjdat.grids import grid_image, write_png

        n = min(self.cfg.train.sample_grid, self.buffer.size)
        grid = self.model.from_internal(self.buffer.buffer[:n].float()).clamp(0, 1).cpu()
        img = grid_image(grid, int(math.sqrt(n)) or 1)  # >= ~400 px: 8x8 digits enlarged
        write_png(img, self.out / "samples" / f"epoch_{self.state.epoch:04d}.png")
        if self._writer is not None:
            self._writer.add_image("replay_buffer", img, self.state.epoch)

    def _record(self, row: dict[str, Any]) -> None:
        """Adds the epoch's row to the history; metrics.jsonl follows with the checkpoint."""
        self.state.history.append(row)
        if not self.dist.main:
            return
        if self._writer is None:
            self._writer = self._tensorboard()
        if self._writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self._writer.add_scalar(key, value, row["epoch"])
            self._writer.flush()

    def _run_epoch(self) -> dict[str, float]:
        from tqdm import tqdm

        bar = tqdm(
            total=len(self.labelled),
            initial=self.labelled.position,
            desc=f"epoch {self.state.epoch + 1}/{self.cfg.train.epochs}",
            disable=not self.progress_bar,
            leave=False,
            dynamic_ncols=True,
        )
        every = self.cfg.train.checkpoint_every_iters
        sync_every = self.cfg.train.sync_every
        if not 0 < self.labelled.position < len(self.labelled):
            self.watch.reset()  # a new epoch; a mid-epoch resume keeps the restored sums
        for x_lab, y in self.labelled:
            self.train_step(self._next_positives(), x_lab, y)
            bar.update(1)
            if self.state.iteration % sync_every == 0:
                self.watch.check()
                means = self.watch.means()
                bar.set_postfix(
                    {
                        k: f"{means[k]:.3g}"
                        for k in ("total", "acc", "acc_adv", "e_pos", "e_q", "e_adv")
                        if k in means
                    }
                )
            if self._stop_requested():
                bar.close()
                self.log(f"{signal.Signals(self._stop_signal).name}: saving a checkpoint")
                self.save("last.pt")
                raise self._interrupt()
            if every and self.state.iteration % every == 0:
                self.save("last.pt")
        bar.close()
        self.watch.check()
        return {
            ("train_loss" if k == "total" else f"train_{k}"): v
            for k, v in self.watch.means().items()
        }

    def fit(self) -> dict[str, Any]:
        """Trains to cfg.train.epochs and returns the last metrics row. A new run's directory is
        created first (see start()); SIGINT/SIGTERM save the state reached and raise
        TrainingInterrupted."""
        if not (self._resumed or self._started):
            self.start()
        with self._signals():
            try:
                self._fit()
            finally:
                if self._writer is not None:
                    self._writer.close()
                    self._writer = None
        return self.state.history[-1] if self.state.history else {}

    def _fit(self) -> None:
        self._save_samples()
        while self.state.epoch < self.cfg.train.epochs:
            start = time.perf_counter()
            try:
                train = self._run_epoch()
            except Diverged as err:
                self._rollback(err)
                continue
            self.state.epoch += 1
            row: dict[str, Any] = {
                "epoch": self.state.epoch,
                "iteration": self.state.iteration,
                **train,
            }
            self._sync_parameters(buffers_only=True)
            row.update(self.evaluate())
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            row["time_s"] = round(time.perf_counter() - start, 2)
            self._record(row)
            metric = row.get(self.cfg.train.select_metric, row.get("val_acc", -math.inf))
            improved = metric > self.state.best
            if improved:
                self.state.best = metric
            self.save("last.pt", *(["best.pt"] if improved else []))
            self._save_samples()
            self.log(
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                )
            )
            if self._stop_requested():
                raise self._interrupt()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def config_changes(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """section.key -> (old value, new value) for every key that differs."""
    a, b = old.to_dict(), new.to_dict()
    return {
        f"{section}.{key}": (value, b[section][key])
        for section, values in a.items()
        if isinstance(values, dict)
        for key, value in values.items()
        if b[section][key] != value
    }


def load_training(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], Config]:
    """(state, Config) of a training checkpoint, checked for everything a resume reads; one
    CheckpointError line for anything missing, malformed or an unusable config."""
    state = checkpoint.check_training_state(checkpoint.load(path, map_location=map_location), path)
    try:
        config = from_dict(state["config"]).validate()
    except ConfigError as err:
        raise checkpoint.CheckpointError(
            f"checkpoint {path} has an unusable config ({err})"
        ) from None
    return state, config
