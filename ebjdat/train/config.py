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

from ebjdat.data.datasets import DATASETS

NONE = "none"  # TOML has no null: "none" stands for an absent optional value


class ConfigError(ValueError):
    """A bad config file, preset or override; the message names the key."""


@dataclass
class DataConfig:
    dataset: str = "digits"
    root: str = ""
    download: bool = False
    batch_size: int = 64  # positives x_p_d and SGLD chains
    labelled_batch_size: int = 64  # the classification / adversarial batch
    augment_pad: int = 1
    augment_flip: bool = False
    augment_positives: bool = True  # SADA-JEM leaves x_p_d unaugmented
    noise_std: float = 0.03  # data noise in [-1, 1] units, as the official code adds it
    noise_positives: bool = True
    noise_labelled: bool = True
    image_size: int = 0  # only for imagefolder (0: dataset default)


@dataclass
class ModelConfig:
    arch: str = "wrn-10-2"
    norm: str = "batch"  # "batch" or "none"
    bn_momentum: float = 0.9  # PyTorch convention: the official "momentum 0.9"
    dropout: float = 0.0


@dataclass
class SGLDConfig:
    buffer_size: int = 10000
    reinit_freq: float = 0.05
    init: str = "gaussian"  # "gaussian" (per-class, fitted locally) or "uniform"
    steps: int = 10
    step_size: float = 1.0
    noise_std: float = 0.0
    grad_clip: float | None = 1.0
    clamp: bool = True  # keep samples in [-1, 1]; the official JEM sampler does not
    bn_train: bool = True  # the official JEM++/SADA-JEM samplers run BN in train mode


@dataclass
class AdvConfig:
    enabled: bool = True
    objective: str = "ce"  # "logit" (official: ascend the true-class logit) or "ce"
    perception_loss: bool = False
    project: bool = True  # the official code never projects onto the eps-ball
    eps: float = 8 / 255  # [0, 1] pixel units
    step_size: float = 2 / 255
    steps: int = 5
    random_start: bool = True


@dataclass
class LossConfig:
    w_px: float = 1.0  # E(x+) - E(x_q): the generative term
    w_ce: float = 1.0  # CE on clean labelled data
    w_align: float = 0.1  # E(x+) - E(x_adv): adversarial energy alignment
    w_ce_adv: float = 1.0  # CE on adversarial samples
    align_positives: str = "paired"  # "paired": x+ = the clean images x_adv came from;
    # "unpaired": the other minibatch, as the official code does


@dataclass
class OptimConfig:
    name: str = "sgd"  # "sgd", "adam" or "sam"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 4e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_iters: int = 1000
    decay_epochs: list[int] = field(default_factory=lambda: [40, 80, 120])
    decay_rate: float = 0.2
    sam_rho: float = 2.0
    sam_adaptive: bool = True


@dataclass
class TrainConfig:
    epochs: int = 150
    seed: int = 1
    select_metric: str = "val_acc"  # "val_acc" or "val_robust_acc"
    eval_eps: float = 8 / 255  # PGD validation robustness, pixel units
    eval_steps: int = 10
    eval_limit: int = 1000  # validation examples for the robust metric per epoch
    checkpoint_every_iters: int = 0  # 0: only at epoch ends
    sample_grid: int = 64  # buffer samples written per epoch
    max_loss: float = 1e8  # |loss| above this counts as divergence
    max_energy: float = 1e6  # |mean buffer energy| above this counts as divergence
    max_retries: int = 3
    # The host reads the divergence check and the running metrics every sync_every iterations
    # (and before each checkpoint), so a GPU step never waits on them (train/watch.py).
    sync_every: int = 20
    retry_lr_factor: float = 0.5
    # Speed switches. channels_last keeps the same function (float rounding aside); autocast
    # "bf16" runs forwards in bfloat16 (energies and the loss stay float32): opt-in, the loss
    # then agrees to ~1e-2 relative; compile wraps the model's forward in torch.compile.
    channels_last: bool = True
    autocast: str = "none"  # "none" or "bf16"
    compile: bool = False
    # CUDA only: capture one SGLD and one adversarial step as CUDA graphs and replay them
    # (sampling/cuda_graphs.py); the same function, fewer kernel launches.
    cuda_graphs: bool = False
    # CUDA only: let cuDNN time its convolution algorithms for the (fixed) batch shapes once and
    # keep the fastest, as the official code does; off gives cuDNN's heuristic choice.
    cudnn_benchmark: bool = True


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
        _choice(
            "data.dataset",
            self.data.dataset,
            DATASETS,
        )
        _choice("model.norm", self.model.norm, ("batch", "none"))
        _choice("sgld.init", self.sgld.init, ("gaussian", "uniform"))
        _choice("adv.objective", self.adv.objective, ("logit", "ce"))
        _choice("loss.align_positives", self.loss.align_positives, ("paired", "unpaired"))
        _choice("optim.name", self.optim.name, ("sgd", "adam", "sam"))
        _choice("train.select_metric", self.train.select_metric, ("val_acc", "val_robust_acc"))
        _choice("train.autocast", self.train.autocast, ("none", "bf16"))
        for key, value, low in [
            ("data.batch_size", self.data.batch_size, 1),
            ("data.labelled_batch_size", self.data.labelled_batch_size, 1),
            ("sgld.buffer_size", self.sgld.buffer_size, 1),
            ("train.epochs", self.train.epochs, 0),
            ("sgld.steps", self.sgld.steps, 0),
            ("adv.steps", self.adv.steps, 0),
            ("train.sync_every", self.train.sync_every, 1),
        ]:
            if value < low:
                raise ConfigError(f"{key} must be >= {low}, got {value}")
        for key in (
            "sgld.step_size",
            "sgld.noise_std",
            "adv.eps",
            "adv.step_size",
            "optim.lr",
            "data.noise_std",
            "train.eval_eps",
        ):
            section, name = key.split(".")
            if getattr(getattr(self, section), name) < 0:
                raise ConfigError(f"{key} must be >= 0")
        if not 0 <= self.sgld.reinit_freq <= 1:
            raise ConfigError("sgld.reinit_freq must lie in [0, 1]")
        if self.loss.w_px != 0 and self.sgld.buffer_size < self.data.batch_size:
            raise ConfigError("sgld.buffer_size must be at least data.batch_size")
        return self


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


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


def load_file(path: str | Path, base: Config | None = None) -> Config:
    """A config file: a full config, or overrides on a preset named by its `extends` key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    tree = _read_toml(path.read_text(), str(path))
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
