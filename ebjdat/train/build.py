"""What a Trainer is built from, checked before anything runs: the config (a preset plus
overrides), the data (a named dataset, or the user's own `Dataset` or tensors) and the energy
model (ebjdat's WideResNet, or any classifier mapping [0, 1] images to logits)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from ebjdat.data import (
    Augment,
    TensorLoader,
    dataset_info,
    get_dataset,
    load_split_tensors,
    to_float01,
)
from ebjdat.data.loader import EpochLoader, Shard
from ebjdat.data.stream import StreamLoader, check_batch, collate, labels_of, read_examples
from ebjdat.models import Classifier, EnergyModel, build_model
from ebjdat.sampling import ReplayBuffer, fit_class_gaussians

from .config import Config, ConfigError, DataConfig, apply, load_preset
from .losses import needs
from .parallel import Distributed, data_parallel
from .sam import SAM


def resolve_config(preset: str, config: Config | Mapping[str, Any] | None) -> Config:
    """A validated Config: `config` itself, or the preset with `{"section.key": value}`
    overrides (values as Python objects or strings, checked like `--set`)."""
    if isinstance(config, Config):
        return config.validate()
    cfg = load_preset(preset)
    if config is None:
        return cfg.validate()
    if not isinstance(config, Mapping):
        raise TypeError(
            f"config must be a Config or a dict of 'section.key' overrides, got "
            f"{type(config).__name__}"
        )
    for key, value in config.items():
        if not isinstance(key, str) or key.count(".") != 1:
            raise ConfigError(f"config override {key!r} must be named 'section.key'")
        section, name = key.split(".")
        apply(cfg, {section: {name: value}}, source="config")
    return cfg.validate()


@dataclass
class TrainData:
    """The training split, in memory (train_x [N, C, H, W] uint8 or float in [0, 1], train_y
    [N]) or as a Dataset to stream (train_set), and the validation split as whole tensors."""

    train_x: torch.Tensor | None
    train_y: torch.Tensor | None
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    name: str
    train_set: Dataset | None = None  # streamed through a DataLoader when set
    train_labels: torch.Tensor | None = None  # train_set's labels, in its order

    @property
    def streamed(self) -> bool:
        return self.train_set is not None

    @property
    def num_train(self) -> int:
        return len(self.train_set) if self.train_set is not None else len(self.train_x)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.val_x.shape[1:])

    def first_images(self, n: int) -> torch.Tensor:
        """The first n training images in [0, 1] (a probe batch for the model)."""
        if self.train_set is not None:
            return to_float01(read_examples(self.train_set, list(range(n)))[0])
        return to_float01(self.train_x[:n])

    def gaussian_examples(self, log: Callable[[str], None]) -> tuple[torch.Tensor, torch.Tensor]:
        """The images the class Gaussians are fitted to: the whole split in memory; from a
        streamed split at most GAUSSIAN_FIT_PER_CLASS per class, the first ones in the
        split's order, so that a class with fewer gets the same fit on both paths."""
        if self.train_set is None:
            return self.train_x, self.train_y
        return read_examples(self.train_set, self._gaussian_index(log).tolist())

    def augmented_gaussian_examples(
        self,
        augment: Augment,
        batch_size: int,
        generator: torch.Generator,
        log: Callable[[str], None],
        workers: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The images of sgld.gaussian_fit = "augmented": one shuffled pass over the images
        `gaussian_examples` picks, each once (no tail dropped), through `augment` (pixel units,
        noisy, unclipped), as the official code fits its Gaussians to an epoch of its augmented,
        noisy training loader. The loader runs on the CPU with `generator` alone, so the fit is
        the same on every device and no other random stream of the run moves."""
        cpu = torch.device("cpu")
        if self.train_set is None:
            loader: EpochLoader = TensorLoader(
                self.train_x,
                self.train_y,
                batch_size,
                device=cpu,
                generator=generator,
                augment=augment,
                drop_last=False,
            )
        else:
            loader = StreamLoader(
                Subset(self.train_set, self._gaussian_index(log).tolist()),
                batch_size,
                device=cpu,
                generator=generator,
                augment=augment,
                drop_last=False,
                workers=workers,
                num_classes=self.num_classes,
            )
        batches = list(loader)
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])

    def _gaussian_index(self, log: Callable[[str], None]) -> torch.Tensor:
        """A streamed split's examples for the Gaussian fit, in the split's order."""
        labels = self.train_labels
        picked = [
            (labels == k).nonzero().flatten()[:GAUSSIAN_FIT_PER_CLASS]
            for k in range(self.num_classes)
        ]
        index = torch.cat(picked).sort().values
        if len(index) < len(labels):
            log(
                f"class Gaussians fitted to {len(index)} of the {len(labels)} streamed training "
                f"images (at most {GAUSSIAN_FIT_PER_CLASS} per class)"
            )
        return index


# A streamed split's class Gaussians are fitted to this many images per class at most.
GAUSSIAN_FIT_PER_CLASS = 256
# The seed of the "augmented" Gaussian fit's pass is train.seed * 1000 + this, on every rank
# (all ranks fit the same Gaussians), clear of the offsets of the loaders, shards, buffer and
# samplers.
GAUSSIAN_FIT_SEED_OFFSET = 700
# The "auto" loader keeps a split in memory (on the training device) up to this size.
MEMORY_BUDGET_BYTES = 2 << 30


def load_named(cfg: Config, log: Callable[[str], None] = print) -> TrainData:
    """The dataset the config names (its train and val splits); data.loader decides whether
    the training split is loaded whole or streamed."""
    d = cfg.data
    root = d.root or None
    size = d.image_size or None
    info = dataset_info(d.dataset, root, image_size=size)
    val_x, val_y = load_split_tensors(d.dataset, "val", root, d.download, size)
    # The fixed named datasets fit in memory (SVHN's 73k images take 0.2 GiB); only an image
    # folder can outgrow it, so only there does "auto" list the split to measure it.
    if d.loader == "stream" or (d.loader == "auto" and d.dataset == "imagefolder"):
        train_set = get_dataset(d.dataset, "train", root, d.download, image_size=size)
        bytes_needed = len(train_set) * val_x[0].numel() * val_x.element_size()
        if d.loader == "stream" or bytes_needed > MEMORY_BUDGET_BYTES:
            if d.loader == "auto":
                log(
                    f"streaming the {d.dataset} training split ({bytes_needed / 2**30:.1f} GiB "
                    f"> {MEMORY_BUDGET_BYTES / 2**30:.0f} GiB in memory) with {d.workers} workers"
                )
            labels = labels_of(train_set, d.workers)
            return TrainData(
                None, None, val_x, val_y, info.num_classes, d.dataset, train_set, labels
            )
    train_x, train_y = load_split_tensors(d.dataset, "train", root, d.download, size)
    return TrainData(train_x, train_y, val_x, val_y, info.num_classes, d.dataset)


def as_tensors(data: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a map-style Dataset of (image, label) or of an (images, labels) pair,
    checked: images float in [0, 1] (or uint8) of one shape [C, H, W], integer labels >= 0."""
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        x, y = data
    else:
        if not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
            raise TypeError(
                f"{name} must be a map-style Dataset of (image, label) or an (images, labels) "
                f"pair of tensors, got {type(data).__name__}"
            )
        if len(data) == 0:
            raise ValueError(f"{name} is empty")
        items = [data[i] for i in range(len(data))]
        try:
            x = torch.stack([torch.as_tensor(item[0]) for item in items])
            y = torch.as_tensor([int(item[1]) for item in items])
        except (TypeError, ValueError, RuntimeError, IndexError) as err:
            raise ValueError(
                f"{name}: items must be (image tensor [C, H, W], integer label) pairs of one "
                f"shape ({err})"
            ) from None
    if x.dim() != 4:
        raise ValueError(f"{name}: images must be [N, C, H, W], got shape {tuple(x.shape)}")
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"{name}: labels must be [N] with N = {len(x)}, got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"{name}: labels must be integers, got {y.dtype}")
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"{name}: labels must be >= 0, got {int(y.min())}")
    if x.dtype != torch.uint8:
        if not x.is_floating_point():
            raise ValueError(f"{name}: images must be uint8 or float in [0, 1], got {x.dtype}")
        if not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
            raise ValueError(f"{name}: float images must lie in [0, 1] (finite)")
        x = x.float()
    return x, y.long()


def _hold_out(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(val, train) indices: a fixed, seeded 10% (at most 1000) of n examples for validation."""
    n_val = min(1000, max(1, n // 10))
    if n - n_val < 2:
        raise ValueError("train_data needs at least 3 examples to hold out a validation split")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:n_val], order[n_val:]


def _item_bytes(data: Any) -> int:
    x, _ = collate([data[0]])
    return x.numel() * x.element_size()


def user_data(
    train_data: Any,
    val_data: Any,
    seed: int,
    log: Callable[[str], None],
    loader: str = "memory",
    workers: int = 0,
) -> TrainData:
    """TrainData from the user's own data; without val_data a fixed, seeded 10% (at most 1000
    images) of train_data is held out for validation and model selection, and said so.
    `loader` is data.loader: "memory" stacks a Dataset into tensors, "stream" reads it batch by
    batch, "auto" streams a Dataset larger than MEMORY_BUDGET_BYTES."""
    pair = (
        isinstance(train_data, (tuple, list))
        and len(train_data) == 2
        and all(isinstance(t, torch.Tensor) for t in train_data)
    )
    stream = loader == "stream"
    if loader == "auto" and not pair and hasattr(train_data, "__getitem__"):
        try:
            size = len(train_data) * _item_bytes(train_data) if len(train_data) else 0
        except (ValueError, TypeError, IndexError, KeyError):
            size = 0  # as_tensors below reports what is wrong with the items
        stream = size > MEMORY_BUDGET_BYTES
        if stream:
            log(
                f"streaming train_data ({size / 2**30:.1f} GiB > "
                f"{MEMORY_BUDGET_BYTES / 2**30:.0f} GiB in memory) with {workers} workers"
            )
    if stream:
        return _streamed_user_data(train_data, val_data, seed, log, workers, pair)
    train_x, train_y = as_tensors(train_data, "train_data")
    if val_data is not None:
        val_x, val_y = _val_tensors(val_data, train_x.shape[1:])
    else:
        val_idx, train_idx = _hold_out(len(train_x), seed)
        val_x, val_y = train_x[val_idx], train_y[val_idx]
        train_x, train_y = train_x[train_idx], train_y[train_idx]
        log(f"no val_data: holding out {len(val_idx)} of the training examples for validation")
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    return TrainData(train_x, train_y, val_x, val_y, max(num_classes, 2), "user data")


def _val_tensors(val_data: Any, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    val_x, val_y = as_tensors(val_data, "val_data")
    if val_x.shape[1:] != shape:
        raise ValueError(
            f"val_data images are {tuple(val_x.shape[1:])}, train_data's {tuple(shape)}"
        )
    return val_x, val_y


def _streamed_user_data(
    train_data: Any,
    val_data: Any,
    seed: int,
    log: Callable[[str], None],
    workers: int,
    pair: bool,
) -> TrainData:
    """The user's Dataset to stream: its first item and all its labels are checked now, every
    image as its batch arrives (data/stream.py); the validation split is read whole."""
    dataset = TensorDataset(*train_data) if pair else train_data
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise TypeError(
            f"train_data must be a map-style Dataset of (image, label) or an (images, labels) "
            f"pair of tensors, got {type(train_data).__name__}"
        )
    if len(dataset) == 0:
        raise ValueError("train_data is empty")
    try:
        first = collate([dataset[0]])
        check_batch(*first, None)
    except ValueError as err:
        raise ValueError(f"train_data: {err}") from None
    labels = labels_of(dataset, workers)
    if len(labels) and int(labels.min()) < 0:
        raise ValueError(f"train_data: labels must be >= 0, got {int(labels.min())}")
    shape = tuple(first[0].shape[1:])
    if val_data is not None:
        val_x, val_y = _val_tensors(val_data, shape)
        train_set, train_labels = dataset, labels
    else:
        val_idx, train_idx = _hold_out(len(dataset), seed)
        val_x, val_y = read_examples(dataset, val_idx.tolist(), workers)
        val_x, val_y = as_tensors((val_x, val_y), "train_data")
        train_set, train_labels = Subset(dataset, train_idx.tolist()), labels[train_idx]
        log(f"no val_data: holding out {len(val_idx)} of the training examples for validation")
    num_classes = int(max(train_labels.max(), val_y.max())) + 1
    return TrainData(
        None, None, val_x, val_y, max(num_classes, 2), "user data", train_set, train_labels
    )


def energy_model(model: nn.Module | None, cfg: Config, data: TrainData) -> EnergyModel:
    """ebjdat's WideResNet from the config (model=None), or the user's classifier as an energy
    model, after one forward pass that checks it maps [B, C, H, W] images to [B, K] logits."""
    c, h, w = data.image_shape
    if model is None:
        m = cfg.model
        return build_model(
            m.arch,
            num_classes=data.num_classes,
            in_channels=c,
            image_size=w,
            norm=None if m.norm == "none" else m.norm,
            bn_momentum=m.bn_momentum,
            dropout=m.dropout,
        )
    if isinstance(model, Config):
        raise TypeError("Trainer's first argument is the model; pass the config as config=...")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    probe = data.first_images(2)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            out = model(probe.to(device))
    except Exception as err:  # noqa: BLE001 - any failure of the user's forward is reported
        raise ValueError(
            f"model failed on a batch of training images {tuple(probe.shape)} in [0, 1]: "
            f"{type(err).__name__}: {err}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(probe):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must map images [B, C, H, W] to logits [B, K]; got {shape}")
    k = out.shape[1]
    if k < data.num_classes:
        raise ValueError(
            f"the data has labels up to {data.num_classes - 1} but the model outputs {k} logits"
        )
    if not math.isfinite(float(out.float().abs().max())):
        raise ValueError("model outputs non-finite logits on training images")
    data.num_classes = k
    return model if isinstance(model, EnergyModel) else Classifier(model, k)


def device_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device).manual_seed(seed)


def gaussian_fit_seed(seed: int) -> int:
    """The seed of the "augmented" Gaussian fit's pass for a run seed (the same on every rank)."""
    return seed * 1000 + GAUSSIAN_FIT_SEED_OFFSET


def sampler_seed(seed: int, rank: int) -> int:
    """The seed of the sampler noise and starts for a run (or rollback) seed and a rank."""
    return seed * 1000 + rank + 4


@dataclass
class TrainingParts:
    """Everything a Trainer runs on, built and checked before anything is written: the config,
    the energy model and the forward the samplers call, both loaders, the replay buffer, the
    sampler generator, the optimiser and the validation split."""

    cfg: Config
    device: torch.device
    dist: Distributed
    model: EnergyModel
    logits: Callable[[torch.Tensor], torch.Tensor]  # the samplers' forward: never all-reduces
    loss_logits: Callable[[torch.Tensor], torch.Tensor]  # the loss's: through DDP when parallel
    memory_format: torch.memory_format
    labelled: EpochLoader
    positives: EpochLoader
    buffer: ReplayBuffer | None
    generator: torch.Generator
    optimizer: torch.optim.Optimizer
    val_x: torch.Tensor
    val_y: torch.Tensor
    image_shape: tuple[int, ...]
    num_classes: int
    data_source: str  # "config": the dataset the config names; "user": data passed in


def lr_factor(cfg: Config, dist: Distributed) -> float:
    """What optim.lr is multiplied by: the world size under the linear scaling rule (the global
    batch grows with it), else 1."""
    return float(dist.world_size) if cfg.optim.lr_scaling == "linear" else 1.0


def parallel_summary(
    cfg: Config, dist: Distributed, labelled: EpochLoader, num_train: int, buffer: bool
) -> str:
    """The run log's line on data parallelism: world, batches per process and global, the
    shard, the replay chains and the learning rate."""
    d, n, factor = cfg.data, dist.world_size, lr_factor(cfg, dist)
    chains = (
        f", keeping {buffer_share(cfg.sgld.buffer_size, dist)} of the {cfg.sgld.buffer_size} "
        "replay chains"
        if buffer
        else ""
    )
    how = f"optim.lr {cfg.optim.lr:g} x {n}, linear scaling" if factor != 1 else "not scaled"
    return (
        f"data parallel over {n} processes: data.labelled_batch_size {d.labelled_batch_size} and "
        f"data.batch_size {d.batch_size} per process (global {n * d.labelled_batch_size} / "
        f"{n * d.batch_size}), {len(labelled)} iterations per epoch, each process seeing "
        f"{labelled.num_samples} of {num_train} examples{chains}; lr "
        f"{cfg.optim.lr * factor:g} ({how})"
    )


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    params = model.parameters()
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    sgd = dict(lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "sam":
        return SAM(params, torch.optim.SGD, rho=o.sam_rho, adaptive=o.sam_adaptive, **sgd)
    return torch.optim.SGD(params, **sgd)


def build_loaders(
    cfg: Config, data: TrainData, device: torch.device, dist: Distributed
) -> tuple[EpochLoader, EpochLoader]:
    """The labelled and the positive streams: independent shuffles of the same split, each
    from its own seeded generator, in memory or streamed as the data says. Under data
    parallelism each stream is sharded on its own (the ranks share its permutation seed and
    split every epoch between them), and augmentation stays per rank."""
    d = cfg.data
    rank_seed = cfg.train.seed * 1000 + dist.rank

    def loader(batch_size: int, offset: int, aug: Augment) -> EpochLoader:
        generator = device_generator(device, rank_seed + offset)
        shard = (
            Shard(dist.rank, dist.world_size, seed=cfg.train.seed * 1000 + 500 + offset)
            if dist.world_size > 1
            else None
        )
        if data.train_set is not None:
            return StreamLoader(
                data.train_set,
                batch_size,
                device=device,
                generator=generator,
                augment=aug,
                workers=d.workers,
                num_classes=data.num_classes,
                shard=shard,
            )
        return TensorLoader(
            data.train_x,
            data.train_y,
            batch_size,
            device=device,
            generator=generator,
            augment=aug,
            shard=shard,
        )

    labelled = loader(d.labelled_batch_size, 1, data_augment(d, True, d.noise_labelled))
    positives = loader(d.batch_size, 2, data_augment(d, d.augment_positives, d.noise_positives))
    return labelled, positives


def data_augment(d: DataConfig, on: bool, noise: bool) -> Augment:
    """A stream's augmentation: pad-and-crop and flip when `on`, the data noise when `noise`."""
    return Augment(
        pad=d.augment_pad if on else 0,
        flip=d.augment_flip and on,
        noise_std=d.noise_std if noise else 0.0,
    )


def buffer_share(size: int, dist: Distributed) -> int:
    """This process's part of sgld.buffer_size: the parts of all processes add up to it, so N
    processes each drawing data.batch_size chains refresh the buffer at the rate one process
    with the N-times batch does."""
    return size // dist.world_size + (dist.rank < size % dist.world_size)


def build_buffer(
    cfg: Config,
    data: TrainData,
    device: torch.device,
    dist: Distributed,
    log: Callable[[str], None],
) -> ReplayBuffer:
    s = cfg.sgld
    gaussians = None
    if s.init == "gaussian":
        if s.gaussian_fit == "augmented":  # the labelled stream's augmentation and noise
            d = cfg.data
            x, y = data.augmented_gaussian_examples(
                data_augment(d, True, d.noise_labelled),
                d.labelled_batch_size,
                device_generator(torch.device("cpu"), gaussian_fit_seed(cfg.train.seed)),
                log,
                d.workers,
            )
            log(f"class Gaussians fitted to one augmented, noisy pass over {len(x)} images")
        else:
            x, y = data.gaussian_examples(log)
        gaussians = fit_class_gaussians(x, y, data.num_classes, log=log)
    return ReplayBuffer(
        buffer_share(s.buffer_size, dist),
        data.image_shape,
        device=device,
        init=s.init,
        gaussians=gaussians,
        reinit_freq=s.reinit_freq,
        generator=device_generator(device, cfg.train.seed * 1000 + dist.rank + 3),
    )


def build_training(
    model: nn.Module | None = None,
    train_data: Any = None,
    *,
    val_data: Any = None,
    preset: str = "digits",
    config: Config | Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    distributed: Distributed | None = None,
    log: Callable[[str], None] = print,
) -> TrainingParts:
    """The parts of a training run (see Trainer for the arguments), every one checked: a bad
    config key, data, model or device raises here, before a run directory exists."""
    cfg = resolve_config(preset, config)
    dist = distributed or Distributed.from_environment()
    dist.check()
    log = log if dist.main else (lambda message: None)
    if device is None:
        device = torch.device("cuda", dist.local_rank) if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    t, d = cfg.train, cfg.data
    if t.cuda_graphs and device.type != "cuda":
        raise ConfigError(f"train.cuda_graphs needs a CUDA device, not {device}; set it to false")
    torch.manual_seed(t.seed)
    random.seed(t.seed)
    if train_data is None:
        if val_data is not None:
            raise ValueError("val_data needs train_data (or neither: the config's dataset)")
        data = load_named(cfg, log)
    else:
        data = user_data(train_data, val_data, t.seed, log, d.loader, d.workers)
    need = needs(cfg.loss, cfg.adv.enabled)
    chains = cfg.sgld.buffer_size // dist.world_size  # the smallest share (buffer_share)
    if need["samples"] and dist.world_size > 1 and chains < d.batch_size:
        raise ConfigError(
            f"sgld.buffer_size = {cfg.sgld.buffer_size} leaves {chains} chains per process over "
            f"{dist.world_size} processes, fewer than data.batch_size = {d.batch_size}"
        )
    for key, size in (
        ("data.labelled_batch_size", d.labelled_batch_size),
        ("data.batch_size", d.batch_size),
    ):
        share = data.num_train // dist.world_size
        if size > share:
            per = f", {share} per process over {dist.world_size}" if dist.world_size > 1 else ""
            raise ConfigError(
                f"{key} = {size} is larger than the {data.name} training split "
                f"({data.num_train} images{per})"
            )
    energy = energy_model(model, cfg, data).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = t.cudnn_benchmark
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    energy.to(memory_format=memory_format)
    # The forwards the samplers and the loss call (compiled or not); evaluation and checkpoints
    # use the model itself. Under data parallelism the loss's goes through DDP.
    logits = loss_logits = energy.logits_internal
    if dist.world_size > 1:
        probe = energy.to_internal(data.first_images(2).to(device))
        loss_logits = data_parallel(energy, probe, device, sync_bn=t.sync_bn, log=log)
    if t.compile:
        logits, loss_logits = torch.compile(logits), torch.compile(loss_logits)
    labelled, positives = build_loaders(cfg, data, device, dist)
    if dist.world_size > 1:
        log(parallel_summary(cfg, dist, labelled, data.num_train, need["samples"]))
    buffer = build_buffer(cfg, data, device, dist, log) if need["samples"] else None
    return TrainingParts(
        cfg=cfg,
        device=device,
        dist=dist,
        model=energy,
        logits=logits,
        loss_logits=loss_logits,
        memory_format=memory_format,
        labelled=labelled,
        positives=positives,
        buffer=buffer,
        generator=device_generator(device, sampler_seed(t.seed, dist.rank)),
        optimizer=build_optimizer(cfg, energy),
        val_x=data.val_x,
        val_y=data.val_y,
        image_shape=data.image_shape,
        num_classes=data.num_classes,
        data_source="config" if train_data is None else "user",
    )
