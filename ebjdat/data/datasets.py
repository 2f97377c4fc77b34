"""Datasets as `(image, label)` with `image` a float tensor in [0, 1], shape (C, H, W), no
augmentation (augmentation happens on-device in `ebjdat.data.loader`).

Splits are "train", "val" and "test". "val" is always held out of the official training data with
a fixed seed (JEM++ style), so model selection never touches the test split:
- digits: a fixed stratified 70 / 10 / 20 split of scikit-learn's 1,797 8×8 digits;
- cifar10 / cifar100 / svhn: 5,000 training images held out for val; "test" is the official one;
- imagefolder: `root/train`, plus `root/test` or `root/val` (see `get_dataset`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

DATASETS = ("digits", "cifar10", "cifar100", "svhn", "imagefolder", "synthetic")
SPLITS = ("train", "val", "test")

SPLIT_SEED = 20240917  # fixed: the val hold-out and the digits split must never change
HOLDOUT_VAL = 5000  # CIFAR / SVHN validation images taken from train (as JEM++'s n_valid)
DEFAULT_IMAGE_SIZE = 64  # imagefolder
# What torchvision's ImageFolder reads (its IMG_EXTENSIONS), named in the no-images message.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


class DatasetNotFoundError(FileNotFoundError):
    """The dataset files are not where they should be (and download was not requested)."""


class DatasetDownloadError(DatasetNotFoundError, RuntimeError):
    """download=True was given but fetching or verifying the files failed (e.g. no network).

    Also a DatasetNotFoundError, so one `except` covers "the data is not available"."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a trainer needs to build a model, known without loading the data."""

    name: str
    num_classes: int
    channels: int
    image_size: int
    classes: tuple[str, ...] | None = None


def default_root() -> Path:
    """$EBJDAT_DATA if set, else ./data (torchvision layout: one root holds every dataset)."""
    return Path(os.environ.get("EBJDAT_DATA", "data")).expanduser()


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def _check_name(name: str) -> str:
    key = name.lower() if isinstance(name, str) else name
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return key


class TensorImageDataset(Dataset):
    """Images held as one uint8 (0..255) or float ([0, 1]) tensor [N, C, H, W].

    Keeping the raw tensor lets `load_split_tensors` hand the whole split to the on-device loader
    without a per-sample pass.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: Sequence[str] | None = None,
    ) -> None:
        if images.dim() != 4 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"images must be [N, C, H, W] and labels [N]; got {tuple(images.shape)} and "
                f"{tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.long()
        self.classes = tuple(classes) if classes is not None else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        # A float source would otherwise be returned as a view into the dataset's storage.
        image = to_float01(image) if image.dtype == torch.uint8 else image.float().clone()
        return image, int(self.labels[index])


def to_float01(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 [0, 1]; float images pass through as float32."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    return images.float()


def _holdout(n: int, n_val: int) -> dict[str, torch.Tensor]:
    """Fixed, seeded train/val index split of an official training set (sorted indices)."""
    g = torch.Generator().manual_seed(SPLIT_SEED)
    perm = torch.randperm(n, generator=g)
    return {"val": perm[:n_val].sort().values, "train": perm[n_val:].sort().values}


# ---- digits ----------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'digits' dataset needs scikit-learn (pip install scikit-learn)"
        ) from e
    d = load_digits()
    images = torch.from_numpy(np.asarray(d.images, dtype=np.float32) / 16.0).unsqueeze(1)
    return images, torch.from_numpy(np.asarray(d.target, dtype=np.int64))


@lru_cache(maxsize=1)
def _digits_split() -> dict[str, torch.Tensor]:
    """Stratified 70 / 10 / 20: per class, a seeded permutation gives round(20%) to test and
    round(10%) to val. Done with torch rather than sklearn so it cannot drift across versions."""
    _, labels = _digits_arrays()
    g = torch.Generator().manual_seed(SPLIT_SEED)
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in SPLITS}
    for c in range(int(labels.max()) + 1):
        idx = torch.nonzero(labels == c).squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_test = round(0.2 * idx.numel())
        n_val = round(0.1 * idx.numel())
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    return {s: torch.cat(v).sort().values for s, v in parts.items()}


def _digits(split: str) -> TensorImageDataset:
    images, labels = _digits_arrays()
    idx = _digits_split()[split]
    return TensorImageDataset(images[idx], labels[idx], classes=[str(i) for i in range(10)])


# ---- CIFAR-10 / CIFAR-100 / SVHN (torchvision) --------------------------------------------------

_TV = {
    "cifar10": {
        "title": "CIFAR-10",
        "subdir": "cifar-10-batches-py",
        "files": {
            "train": [f"data_batch_{i}" for i in range(1, 6)] + ["batches.meta"],
            "test": ["test_batch", "batches.meta"],
        },
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    },
    "cifar100": {
        "title": "CIFAR-100",
        "subdir": "cifar-100-python",
        "files": {"train": ["train", "meta"], "test": ["test", "meta"]},
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    },
    "svhn": {
        "title": "SVHN",
        "subdir": "",
        "files": {"train": ["train_32x32.mat"], "test": ["test_32x32.mat"]},
        "url": "http://ufldl.stanford.edu/housenumbers/{train,test}_32x32.mat",
    },
}


def _missing_message(name: str, root: Path, missing: list[str]) -> str:
    spec = _TV[name]
    where = root / spec["subdir"] if spec["subdir"] else root
    how = (
        f"extract {spec['url']} into '{root}' (it creates '{spec['subdir']}/')"
        if spec["subdir"]
        else f"put the files from {spec['url']} in '{where}'"
    )
    return (
        f"{spec['title']} not found: missing {', '.join(missing)} in directory '{where}'. "
        f"Either {how}, or pass download=True (`--download` on the command line) to fetch it "
        f"into root='{root}'."
    )


def _torchvision_split(name: str, official: str, root: Path, download: bool) -> TensorImageDataset:
    """Load the official train or test split of a torchvision dataset as uint8 tensors."""
    spec = _TV[name]
    base = root / spec["subdir"] if spec["subdir"] else root
    missing = [f for f in spec["files"][official] if not (base / f).is_file()]
    if missing and not download:
        raise DatasetNotFoundError(_missing_message(name, root, missing))
    try:
        from torchvision import datasets as tvd
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"the '{name}' dataset needs torchvision (pip install torchvision)"
        ) from e

    train = official == "train"
    try:
        if name == "svhn":
            ds = tvd.SVHN(str(root), split=official, download=download)
            images = torch.from_numpy(np.ascontiguousarray(ds.data))  # N, 3, 32, 32
            labels = torch.from_numpy(np.asarray(ds.labels, dtype=np.int64))
            classes = [str(i) for i in range(10)]
        else:
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            ds = cls(str(root), train=train, download=download)
            images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
            labels = torch.tensor(ds.targets, dtype=torch.int64)
            classes = list(ds.classes)
    except (OSError, RuntimeError) as e:
        if download:
            raise DatasetDownloadError(
                f"could not download or verify {spec['title']} into '{root}' ({e}). With no "
                f"network, fetch {spec['url']} elsewhere and place it as described: "
                + _missing_message(name, root, spec["files"][official])
            ) from e
        raise DatasetNotFoundError(
            f"{spec['title']} files in '{base}' are present but unreadable or corrupted ({e}); "
            "delete them and pass download=True (`--download`) to fetch them again"
        ) from e
    return TensorImageDataset(images, labels, classes=classes)


def _torchvision(name: str, split: str, root: Path, download: bool) -> TensorImageDataset:
    if split == "test":
        return _torchvision_split(name, "test", root, download)
    full = _torchvision_split(name, "train", root, download)
    # 5,000 for the real datasets; the cap only matters for tiny stand-ins (tests).
    idx = _holdout(len(full), min(HOLDOUT_VAL, len(full) // 10))[split]
    return TensorImageDataset(full.images[idx], full.labels[idx], classes=full.classes)


# ---- ImageFolder ------------------------------------------------------------------------------


def image_transform(size: int) -> Callable[[Any], torch.Tensor]:
    """PIL image -> RGB uint8 [3, size, size]: shorter side resized to `size` (bilinear), then
    centre-cropped. Built from torchvision transforms, so DataLoader workers can pickle it."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(size),
            transforms.PILToTensor(),
        ]
    )


class ImageFolderDataset(Dataset):
    """One split of an image-folder tree, read by `torchvision.datasets.ImageFolder` (RGB,
    resized to `image_size` square) with the labels of the *training* class list, so that they
    agree across train/ and test/ or val/ (a class of train/ may be absent from the others)."""

    def __init__(self, folder: str | os.PathLike, classes: Sequence[str], image_size: int) -> None:
        from torchvision.datasets import ImageFolder

        folder = Path(folder)
        self.classes = tuple(classes)
        self.image_size = int(image_size)
        subfolders = [p.name for p in folder.iterdir() if p.is_dir()]
        extra = sorted(set(subfolders) - set(self.classes))
        if extra:
            raise ValueError(f"imagefolder: '{folder}' has classes not in train/: {extra[:5]}")
        no_images = DatasetNotFoundError(
            f"imagefolder: no images ({', '.join(IMAGE_EXTENSIONS)}) in '{folder}'"
        )
        if not subfolders:
            raise no_images
        self.folder = ImageFolder(
            str(folder), transform=image_transform(self.image_size), allow_empty=True
        )
        if not self.folder.samples:
            raise no_images
        # The folder's own class indices -> the training class list's.
        index = {c: i for i, c in enumerate(self.classes)}
        own = self.folder.classes
        self._set_samples([(path, index[own[t]]) for path, t in self.folder.samples])
        self.folder.classes, self.folder.class_to_idx = list(self.classes), index

    def _set_samples(self, samples: list[tuple[str, int]]) -> None:
        self.folder.samples = self.folder.imgs = samples
        self.folder.targets = [t for _, t in samples]

    def subset(self, indices: Sequence[int]) -> ImageFolderDataset:
        """The images at `indices`, in that order (sharing nothing mutable with self)."""
        other = copy.copy(self)
        other.folder = copy.copy(self.folder)
        other._set_samples([self.folder.samples[i] for i in indices])
        return other

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.folder.samples]

    @property
    def labels(self) -> torch.Tensor:
        return torch.as_tensor(self.folder.targets, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.folder)

    def load_uint8(self, index: int) -> torch.Tensor:
        """Image `index` as RGB uint8 [3, image_size, image_size]."""
        return self.folder[index][0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.folder[index]
        return to_float01(image), int(label)


def _folder_classes(root: Path) -> list[str]:
    """The class list of root/train (sorted subfolder names, as torchvision's ImageFolder finds
    them), read without torchvision so that `dataset_info` stays cheap."""
    train = root / "train"
    if not train.is_dir():
        raise DatasetNotFoundError(
            f"imagefolder: expected '{train}' with one subfolder per class (plus '{root}/test' "
            f"or '{root}/val' holding the same class subfolders)"
        )
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not classes:
        raise DatasetNotFoundError(f"imagefolder: no class subfolders in '{train}'")
    return classes


def _imagefolder(split: str, root: Path, image_size: int) -> ImageFolderDataset:
    """Folder roles: train/ is train. The held-out folder is test/ if present, else val/.

    val/ is the val split only when test/ exists too; otherwise val is carved (seeded, 10% of
    train, at most 5,000) from train/, so that model selection never sees the test images.
    """
    classes = _folder_classes(root)
    has_test, has_val = (root / "test").is_dir(), (root / "val").is_dir()
    if not (has_test or has_val):
        raise DatasetNotFoundError(
            f"imagefolder: '{root}' needs a held-out folder 'test/' or 'val/' beside 'train/'"
        )
    if split == "test":
        return ImageFolderDataset(root / ("test" if has_test else "val"), classes, image_size)
    if split == "val" and has_test and has_val:
        return ImageFolderDataset(root / "val", classes, image_size)
    train = ImageFolderDataset(root / "train", classes, image_size)
    if has_test and has_val:
        return train
    if len(train) < 2:
        raise ValueError(
            f"imagefolder: '{root / 'train'}' needs at least 2 images to hold out a validation "
            "split"
        )
    n_val = min(HOLDOUT_VAL, max(1, round(0.1 * len(train))))
    return train.subset(_holdout(len(train), n_val)[split].tolist())


SYNTHETIC_SIZES = {"train": 1024, "val": 256, "test": 256}


def _synthetic(split: str) -> TensorImageDataset:
    """CIFAR-shaped random images (3x32x32 uint8, 10 classes), fixed per split: a stand-in with
    no files, for benchmarks and tests that need CIFAR's shapes, never for results."""
    seed = {"train": 0, "val": 1, "test": 2}[split]
    g = torch.Generator().manual_seed(seed)
    n = SYNTHETIC_SIZES[split]
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 10
    return TensorImageDataset(images, labels)


# ---- public ----------------------------------------------------------------------------------


def get_dataset(
    name: str,
    split: str,
    root: str | os.PathLike | None = None,
    download: bool = False,
    *,
    image_size: int | None = None,
) -> Dataset:
    """A `Dataset` of (float image in [0, 1] with shape (C, H, W), int label), unaugmented.

    `root` defaults to $EBJDAT_DATA or ./data (ignored for digits, which ships with
    scikit-learn). `image_size` applies to "imagefolder" only (default 64); for the fixed-size
    datasets it must be None or their native size.
    """
    name = _check_name(name)
    split = _check_split(split)
    if name == "imagefolder":
        if root is None:
            raise ValueError(
                "imagefolder needs root= pointing at a folder with train/ and "
                "test/ (or val/) subfolders"
            )
        size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
        if size < 1:
            raise ValueError(f"image_size must be positive, got {image_size!r}")
        return _imagefolder(split, Path(root).expanduser(), size)
    native = dataset_info(name).image_size
    if image_size is not None and image_size != native:
        raise ValueError(
            f"{name} images are {native}x{native}; image_size={image_size} is only "
            "supported for imagefolder"
        )
    if name == "digits":
        return _digits(split)
    if name == "synthetic":
        return _synthetic(split)
    return _torchvision(
        name, split, default_root() if root is None else Path(root).expanduser(), download
    )


def dataset_info(
    name: str, root: str | os.PathLike | None = None, *, image_size: int | None = None
) -> DatasetInfo:
    """Classes, channels and image size without loading the images (imagefolder lists train/)."""
    name = _check_name(name)
    if name == "digits":
        return DatasetInfo("digits", 10, 1, 8, tuple(str(i) for i in range(10)))
    if name == "cifar10":
        return DatasetInfo("cifar10", 10, 3, 32, CIFAR10_CLASSES)
    if name == "cifar100":
        return DatasetInfo("cifar100", 100, 3, 32)
    if name == "svhn":
        return DatasetInfo("svhn", 10, 3, 32, tuple(str(i) for i in range(10)))
    if name == "synthetic":
        return DatasetInfo("synthetic", 10, 3, 32, tuple(str(i) for i in range(10)))
    if root is None:
        raise ValueError("dataset_info('imagefolder') needs root= to count the classes")
    classes = _folder_classes(Path(root).expanduser())
    size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    return DatasetInfo("imagefolder", len(classes), 3, size, tuple(classes))


def load_split_tensors(
    name: str,
    split: str,
    root: str | os.PathLike | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as (images [N, C, H, W], labels int64 [N]), materialised once.

    Images are uint8 (0..255) where the source is 8-bit (CIFAR, SVHN, image files) and float32
    in [0, 1] for digits (k/16 values); `TensorLoader` accepts both. Used for the on-device loader
    and for fitting the class-conditional Gaussians of the replay buffer.
    """
    ds = get_dataset(name, split, root, download, image_size=image_size)
    if isinstance(ds, TensorImageDataset):
        return ds.images, ds.labels
    assert isinstance(ds, ImageFolderDataset)
    if len(ds) == 0:
        raise ValueError(f"{name} {split} split is empty")
    images = torch.stack([ds.load_uint8(i) for i in range(len(ds))])
    return images, ds.labels
