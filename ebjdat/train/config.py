"""The training configuration: typed sections, TOML presets that extend each other, overrides
from flags or `--set section.key=value`, and validation whose errors name the offending key.

Units: image-space quantities (adversarial eps and step) are in [0, 1] pixel units everywhere in
the config; SGLD quantities act on the model's internal [-1, 1] images, as JEM's do, so that the
official values carry over unchanged.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from ebjdat.attacks.adversarial import AdvConfig
from ebjdat.data.datasets import DATASETS
from ebjdat.sampling.sgld import SGLDConfig
from ebjdat.settings import ConfigError, check_fields, setting

__all__ = [
    "AdvConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "SGLDConfig",
    "TrainConfig",
]

NONE = "none"  # TOML has no null: "none" stands for an absent optional value


# What `--resume` may change, because it alters no result already computed: how long to train,
# how often to checkpoint and draw grids, how often a rollback may retry, and where the data is
# and how it is read.
RESUME_SAFE_KEYS = (
    "train.epochs",
    "train.checkpoint_every_iters",
    "train.sample_grid",
    "train.max_retries",
    "data.root",
    "data.download",
    "data.loader",
    "data.workers",
)

MAX_SEED = 2**32 - 1  # per-rank and per-retry seeds derived from it stay within 64 bits


@dataclass
class DataConfig:
    dataset: str = setting("digits", choices=DATASETS)
    root: str = ""
    download: bool = False
    # Both batch sizes are per process: under torchrun with N processes the global batch is N
    # times larger (optim.lr_scaling decides whether the learning rate follows).
    batch_size: int = setting(64, ge=1)  # positives x_p_d and SGLD chains
    labelled_batch_size: int = setting(64, ge=1)  # the classification / adversarial batch
    augment_pad: int = setting(1, ge=0)
    augment_flip: bool = False
    augment_positives: bool = True  # SADA-JEM leaves x_p_d unaugmented
    noise_std: float = setting(0.03, ge=0)  # data noise in [-1, 1] units, as the official code
    noise_positives: bool = True
    noise_labelled: bool = True
    image_size: int = setting(0, ge=0)  # only for imagefolder (0: dataset default)
    # "memory": the training split on the device, one gather per batch (fast for small sets);
    # "stream": read batch by batch by a DataLoader with `workers` processes; "auto": memory,
    # unless a user Dataset or an image folder exceeds 2 GiB. Both give the same batches.
    loader: str = setting("auto", choices=("auto", "memory", "stream"))
    workers: int = setting(2, ge=0)  # DataLoader worker processes when streaming


@dataclass
class ModelConfig:
    arch: str = "wrn-10-2"  # wrn-DEPTH-WIDEN, checked by the model builder's parser
    norm: str = setting("batch", choices=("batch", "none"))
    bn_momentum: float = setting(0.9, ge=0, le=1)  # PyTorch convention: official "momentum 0.9"
    dropout: float = setting(0.0, ge=0, lt=1)


@dataclass
class LossConfig:
    w_px: float = setting(1.0, ge=0)  # E(x+) - E(x_q): the generative term
    w_ce: float = setting(1.0, ge=0)  # CE on clean labelled data
    w_align: float = setting(0.1, ge=0)  # E(x+) - E(x_adv): adversarial energy alignment
    w_ce_adv: float = setting(1.0, ge=0)  # CE on adversarial samples
    # "paired": x+ = the clean images x_adv came from; "unpaired": the other minibatch, as the
    # official code does
    align_positives: str = setting("paired", choices=("paired", "unpaired"))


@dataclass
class OptimConfig:
    name: str = setting("sgd", choices=("sgd", "adam", "sam"))
    lr: float = setting(0.01, ge=0)
    momentum: float = setting(0.9, ge=0, lt=1)
    weight_decay: float = setting(4e-4, ge=0)
    betas: list[float] = setting([0.9, 0.999], ge=0, lt=1)
    # Optimiser steps, which every process takes together: the same count at any world size.
    warmup_iters: int = setting(1000, ge=0)
    # The warm-up LR of step i (counted from 0): "one" lr * (i + 1) / warmup_iters, so the first
    # step already moves the weights and the last warm-up step reaches lr; "zero" lr * i /
    # warmup_iters, the official schedule, whose first step has LR 0 and only seeds momentum.
    warmup_from: str = setting("one", choices=("one", "zero"))
    decay_epochs: list[int] = setting([40, 80, 120], ge=0)
    decay_rate: float = setting(0.2, gt=0)
    sam_rho: float = setting(2.0, gt=0)
    sam_adaptive: bool = True
    # "linear": lr x the number of processes, the linear scaling rule for the N-times global
    # batch of torchrun; "none" keeps optim.lr at every world size.
    lr_scaling: str = setting("none", choices=("none", "linear"))


@dataclass
class TrainConfig:
    epochs: int = setting(150, ge=0)
    seed: int = setting(1, ge=0, le=MAX_SEED)
    select_metric: str = setting("val_acc", choices=("val_acc", "val_robust_acc"))
    eval_eps: float = setting(8 / 255, ge=0, le=1)  # PGD validation robustness, pixel units
    eval_steps: int = setting(10, ge=0)
    eval_limit: int = setting(1000, ge=0)  # validation examples for the robust metric per epoch
    checkpoint_every_iters: int = setting(0, ge=0)  # 0: only at epoch ends
    sample_grid: int = setting(64, ge=0)  # buffer samples written per epoch
    max_loss: float = setting(1e8, gt=0)  # |loss| above this counts as divergence
    max_energy: float = setting(1e6, gt=0)  # |mean buffer energy| above this: divergence
    max_retries: int = setting(3, ge=0)
    # The host reads the divergence check and the running metrics every sync_every iterations
    # (and before each checkpoint), so a GPU step never waits on them (train/watch.py).
    sync_every: int = setting(20, ge=1)
    retry_lr_factor: float = setting(0.5, gt=0, le=1)
    # Speed switches. channels_last keeps the same function (float rounding aside); autocast
    # "bf16" runs forwards in bfloat16 (energies and the loss stay float32): opt-in, the loss
    # then agrees to ~1e-2 relative; compile wraps the model's forward in torch.compile.
    channels_last: bool = True
    autocast: str = setting("none", choices=("none", "bf16"))
    compile: bool = False
    # CUDA only: capture one SGLD and one adversarial step as CUDA graphs and replay them
    # (sampling/cuda_graphs.py); the same function, fewer kernel launches.
    cuda_graphs: bool = False
    # CUDA only: let cuDNN time its convolution algorithms for the (fixed) batch shapes once and
    # keep the fastest, as the official code does; off gives cuDNN's heuristic choice.
    cudnn_benchmark: bool = True
    # Under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA only)
    # instead of each process's own, as the official code computes them per GPU.
    sync_bn: bool = False
    # The official loop's BatchNorm running statistics: its alignment term forwards the positives
    # again, and the adversarial batch once more than ours, in train mode, after the adversarial
    # sampler. true repeats those forwards without graphs, so the loss and gradients stay the
    # same and only the running statistics (the evaluated, checkpointed model) follow the
    # official code; it costs one extra forward of the positives and one of the adversarial
    # batch per step (no backward).
    official_bn_updates: bool = False
    # An exponential moving average of the weights over the last ~1 / (1 - ema_decay) steps
    # (0: none) is the model that is validated, selected and checkpointed as "model": its
    # samples and its robustness do not swing from step to step as the live weights' do. The
    # live weights still train and drive the replay buffer; a checkpoint keeps them for resume.
    ema_decay: float = setting(0.0, ge=0, lt=1)


@dataclass
class Config:
    preset: str = "digits"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sgld: SGLDConfig = field(default_factory=SGLDConfig)
    adv: AdvConfig = field(default_factory=AdvConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (TOML- and weights_only-safe); None becomes "none"."""
        return _nones_to_strings(dataclasses.asdict(self))

    def validate(self) -> Config:
        """Checks every key against its declared range, then the rules that join keys; the
        first problem raises a ConfigError that names the key."""
        for section in SECTIONS:
            check_fields(getattr(self, section), section)
        from ebjdat.models.jem import parse_arch

        try:
            parse_arch(self.model.arch)
        except ValueError as err:
            raise ConfigError(f"model.arch: {err}") from None
        if len(self.optim.betas) != 2:
            raise ConfigError(f"optim.betas must hold two values, got {self.optim.betas}")
        if self.optim.decay_epochs != sorted(self.optim.decay_epochs):
            raise ConfigError(
                f"optim.decay_epochs must be in increasing order, got {self.optim.decay_epochs}"
            )
        if self.loss.w_px != 0 and self.sgld.buffer_size < self.data.batch_size:
            raise ConfigError("sgld.buffer_size must be at least data.batch_size")
        t = self.train
        if t.select_metric == "val_robust_acc" and (t.eval_steps < 1 or t.eval_limit < 1):
            raise ConfigError(
                "train.select_metric = val_robust_acc needs train.eval_steps >= 1 and "
                "train.eval_limit >= 1 (else the robust accuracy is never measured)"
            )
        return self


def _nones_to_strings(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _nones_to_strings(v) for k, v in tree.items()}
    return NONE if tree is None else tree


SECTIONS = {f.name: f.type for f in fields(Config) if f.name not in ("preset", "description")}


def _section_types(section: str) -> dict[str, Any]:
    cls = {
        "data": DataConfig,
        "model": ModelConfig,
        "sgld": SGLDConfig,
        "adv": AdvConfig,
        "loss": LossConfig,
        "optim": OptimConfig,
        "train": TrainConfig,
    }[section]
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """`value` (from TOML or a flag string) as the field's type, or a ConfigError naming key."""
    optional = type(None) in typing.get_args(hint)
    base = (
        next((a for a in typing.get_args(hint) if a is not type(None)), hint) if optional else hint
    )
    if optional and (value is None or (isinstance(value, str) and value.lower() == NONE)):
        return None
    origin = typing.get_origin(base)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if origin is list:
            (item,) = typing.get_args(base)
            if isinstance(value, str):
                value = [v for v in value.strip("[]").split(",") if v.strip()]
            if not isinstance(value, list):
                raise ValueError
            return [_coerce(key, v, item) for v in value]
    except (ValueError, TypeError):
        pass
    raise ConfigError(f"{key}: cannot use {value!r} as {getattr(base, '__name__', base)}")


def apply(config: Config, tree: dict[str, Any], *, source: str) -> Config:
    """Merges a {section: {key: value}} tree into config, checking every key and type."""
    for section, values in tree.items():
        if section in ("preset", "description", "extends"):
            if section != "extends":
                setattr(config, section, str(values))
            continue
        if section not in SECTIONS:
            raise ConfigError(
                f"{source}: unknown section [{section}]; sections are {', '.join(SECTIONS)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        hints = _section_types(section)
        target = getattr(config, section)
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(
                    f"{source}: unknown key {section}.{key}; keys are {', '.join(hints)}"
                )
            setattr(target, key, _coerce(f"{section}.{key}", value, hints[key]))
    return config


def preset_names() -> list[str]:
    folder = resources.files("ebjdat.train") / "presets"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def _read_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML ({err})") from None


def _preset_tree(name: str, seen: tuple[str, ...] = ()) -> list[tuple[str, dict[str, Any]]]:
    """The preset and the chain it extends, base first."""
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; presets are {', '.join(preset_names())}")
    if name in seen:
        raise ConfigError(f"preset {name!r} extends itself through {' -> '.join(seen)}")
    text = (resources.files("ebjdat.train") / "presets" / f"{name}.toml").read_text()
    tree = _read_toml(text, f"preset {name}")
    chain = _preset_tree(tree["extends"], (*seen, name)) if "extends" in tree else []
    return [*chain, (f"preset {name}", tree)]


def load_preset(name: str) -> Config:
    config = Config()
    for source, tree in _preset_tree(name):
        apply(config, tree, source=source)
    config.preset = name
    return config


def read_config_text(path: str | Path) -> str:
    """The text of a config file, or a one-line ConfigError (missing, a directory, unreadable,
    not UTF-8)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {err.start}); TOML files are UTF-8"
        ) from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read ({err.strerror})") from None


def load_file(path: str | Path, base: Config | None = None) -> Config:
    """A config file: a full config, or overrides on a preset named by its `extends` key."""
    tree = _read_toml(read_config_text(path), str(path))
    config = base or (load_preset(tree["extends"]) if "extends" in tree else Config())
    return apply(config, tree, source=str(path))


def override(config: Config, assignment: str) -> Config:
    """One `section.key=value` override from the command line."""
    if "=" not in assignment or "." not in assignment.split("=", 1)[0]:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    key, value = assignment.split("=", 1)
    section, name = key.strip().split(".", 1)
    return apply(config, {section: {name: value.strip()}}, source="--set")


def from_dict(tree: dict[str, Any]) -> Config:
    """The inverse of Config.to_dict (for checkpoints)."""
    return apply(Config(), tree, source="checkpoint config")


def to_toml(config: Config) -> str:
    """The resolved config as TOML (what a run's config.toml holds), metadata first."""
    import tomli_w

    tree = config.to_dict()
    head = {k: tree.pop(k) for k in ("preset", "description")}
    return tomli_w.dumps(head | tree)
