"""Data: digits (scikit-learn, offline), CIFAR-10/100, SVHN, ImageFolder; an on-device loader."""

from __future__ import annotations

from .datasets import (
    DATASETS,
    SPLITS,
    DatasetDownloadError,
    DatasetInfo,
    DatasetNotFoundError,
    ImageFolderDataset,
    TensorImageDataset,
    dataset_info,
    default_root,
    get_dataset,
    load_split_tensors,
    to_float01,
)
from .loader import Augment, EpochLoader, Shard, TensorLoader
from .stream import StreamLoader

__all__ = [
    "DATASETS",
    "SPLITS",
    "Augment",
    "DatasetDownloadError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "ImageFolderDataset",
    "TensorImageDataset",
    "EpochLoader",
    "Shard",
    "StreamLoader",
    "TensorLoader",
    "dataset_info",
    "default_root",
    "get_dataset",
    "load_split_tensors",
    "to_float01",
]
