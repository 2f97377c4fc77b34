"""Datasets (digits split, missing-file errors, ImageFolder) and the on-device TensorLoader."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ebjdat.data import (
    DATASETS,
    Augment,
    DatasetDownloadError,
    DatasetNotFoundError,
    TensorLoader,
    dataset_info,
    get_dataset,
    load_split_tensors,
)
from ebjdat.data.datasets import _digits_split

# ---- digits -----------------------------------------------------------------------------------


def test_digits_splits_sizes_and_contents() -> None:
    sizes = {}
    for split in ("train", "val", "test"):
        ds = get_dataset("digits", split)
        sizes[split] = len(ds)
        image, label = ds[0]
        assert image.shape == (1, 8, 8) and image.dtype == torch.float32
        assert isinstance(label, int) and 0 <= label < 10
        images, labels = load_split_tensors("digits", split)
        assert images.shape == (len(ds), 1, 8, 8) and labels.dtype == torch.int64
        assert images.min() >= 0 and images.max() <= 1 and images.max() == 1
        # values are k/16
        torch.testing.assert_close(images * 16, (images * 16).round(), atol=0, rtol=0)
    assert sum(sizes.values()) == 1797
    assert abs(sizes["train"] / 1797 - 0.7) < 0.01
    assert abs(sizes["val"] / 1797 - 0.1) < 0.01
    assert abs(sizes["test"] / 1797 - 0.2) < 0.01


def test_digits_split_disjoint_stratified_deterministic() -> None:
    idx = _digits_split()
    together = torch.cat([idx["train"], idx["val"], idx["test"]])
    assert together.numel() == 1797 and together.unique().numel() == 1797  # disjoint, complete
    full_counts = torch.zeros(10)
    per_split = {}
    for split in ("train", "val", "test"):
        _, labels = load_split_tensors("digits", split)
        per_split[split] = torch.bincount(labels, minlength=10).float()
        full_counts += per_split[split]
    for split, frac in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        # stratified: every class within one image of its share
        assert ((per_split[split] - frac * full_counts).abs() <= 1.0).all(), split
    for split in ("train", "test"):
        a, b = get_dataset("digits", split), get_dataset("digits", split)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_dataset_errors_and_info() -> None:
    with pytest.raises(ValueError, match="cifar10.*svhn.*imagefolder"):
        get_dataset("mnist", "train")
    with pytest.raises(ValueError, match="split"):
        get_dataset("digits", "validation")
    with pytest.raises(ValueError, match="image_size"):
        get_dataset("digits", "train", image_size=32)
    assert set(DATASETS) == {"digits", "cifar10", "cifar100", "svhn", "imagefolder", "synthetic"}
    info = dataset_info("digits")
    assert (info.num_classes, info.channels, info.image_size) == (10, 1, 8)
    assert dataset_info("cifar100").num_classes == 100
    assert dataset_info("cifar10").image_size == 32 and dataset_info("svhn").channels == 3


@pytest.mark.parametrize(
    ("name", "expect"),
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("svhn", "train_32x32.mat"),
    ],
)
def test_missing_files_clear_error(tmp_path: Path, name: str, expect: str) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        get_dataset(name, "val", root=tmp_path, download=False)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert expect in msg and str(tmp_path) in msg and "download" in msg


def test_failed_download_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    import torchvision.datasets as tvd

    def offline(self: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvd.CIFAR100, "download", offline)
    with pytest.raises(DatasetDownloadError, match="cifar-100-python.tar.gz") as err:
        get_dataset("cifar100", "train", root=tmp_path, download=True)
    assert isinstance(err.value, RuntimeError) and isinstance(err.value, DatasetNotFoundError)
    assert str(tmp_path) in str(err.value)


def test_corrupt_files_clear_error(tmp_path: Path) -> None:
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (base / f).write_bytes(b"not a pickle")
    with pytest.raises(DatasetNotFoundError, match="corrupted.*download"):
        get_dataset("cifar10", "test", root=tmp_path)


def test_cifar_layout_and_holdout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in CIFAR-10 files (checksums bypassed): NCHW pixels, labels, a fixed val hold-out."""
    import pickle

    import numpy as np
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tvcifar

    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tvcifar, "check_integrity", lambda *a, **k: True)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    rows = {}
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows[f] = rng.integers(0, 256, size=(20, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=20).tolist()
        rows[f + "_labels"] = labels
        (base / f).write_bytes(pickle.dumps({"data": rows[f], "labels": labels}))
    names = [f"c{i}" for i in range(10)]
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))

    test = get_dataset("cifar10", "test", root=tmp_path)
    want = torch.from_numpy(rows["test_batch"].reshape(-1, 3, 32, 32))
    assert torch.equal(test.images, want) and test.images.dtype == torch.uint8
    assert test.labels.tolist() == rows["test_batch_labels"] and test.classes == tuple(names)
    image, label = test[3]
    torch.testing.assert_close(image, want[3].float() / 255)
    train = get_dataset("cifar10", "train", root=tmp_path)
    val = get_dataset("cifar10", "val", root=tmp_path)
    assert (len(train), len(val)) == (90, 10)
    full = np.concatenate([rows[f"data_batch_{i}"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    both = torch.cat([train.images, val.images])
    assert torch.equal(both.sort(0).values, torch.from_numpy(full).sort(0).values)
    assert torch.equal(get_dataset("cifar10", "val", root=tmp_path).images, val.images)


# ---- ImageFolder ------------------------------------------------------------------------------


def _png(path: Path, array: torch.Tensor) -> None:
    """Write an [H, W, 3] uint8 tensor as PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(array.numpy()).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def _tree(root: Path, folders: dict[str, int]) -> None:
    """Two classes; class 'a' images are solid red, class 'b' solid blue, of assorted sizes."""
    colour = {"a": (255, 0, 0), "b": (0, 0, 255)}
    for folder, per_class in folders.items():
        for cls in ("a", "b"):
            for i in range(per_class):
                h, w = 6 + i, 10 + 2 * i
                img = torch.tensor(colour[cls], dtype=torch.uint8).expand(h, w, 3).contiguous()
                _png(root / folder / cls / f"{i}.png", img)


def test_imagefolder_splits(tmp_path: Path) -> None:
    _tree(tmp_path, {"train": 10, "test": 2})
    train = get_dataset("imagefolder", "train", root=tmp_path, image_size=12)
    val = get_dataset("imagefolder", "val", root=tmp_path, image_size=12)
    test = get_dataset("imagefolder", "test", root=tmp_path, image_size=12)
    assert (len(train), len(val), len(test)) == (18, 2, 4)
    assert not set(train.paths) & set(val.paths)  # val carved out of train
    image, label = train[0]
    assert image.shape == (3, 12, 12) and image.dtype == torch.float32
    assert train.classes == ("a", "b")
    for split, ds in (("train", train), ("val", val), ("test", test)):
        images, labels = load_split_tensors("imagefolder", split, root=tmp_path, image_size=12)
        assert images.dtype == torch.uint8 and images.shape == (len(ds), 3, 12, 12)
        assert torch.equal(labels, ds.labels)
    # solid colours survive resize + crop; label 0 = 'a' = red, 1 = 'b' = blue
    images, labels = load_split_tensors("imagefolder", "train", root=tmp_path, image_size=12)
    red = images[labels == 0].float().mean(dim=(0, 2, 3))
    blue = images[labels == 1].float().mean(dim=(0, 2, 3))
    torch.testing.assert_close(red, torch.tensor([255.0, 0, 0]), atol=1, rtol=0)
    torch.testing.assert_close(blue, torch.tensor([0.0, 0, 255]), atol=1, rtol=0)
    info = dataset_info("imagefolder", root=tmp_path, image_size=12)
    assert (info.num_classes, info.channels, info.image_size) == (2, 3, 12)
    # a val/ folder beside test/ is used as the val split
    _tree(tmp_path, {"val": 1})
    assert len(get_dataset("imagefolder", "val", root=tmp_path)) == 2
    assert len(get_dataset("imagefolder", "train", root=tmp_path)) == 20


def test_imagefolder_centre_crop(tmp_path: Path) -> None:
    """A 16x8 image at size 8 keeps its middle 8 columns: left half red, right half blue."""
    img = torch.zeros(8, 16, 3, dtype=torch.uint8)
    img[:, :8, 0] = 255
    img[:, 8:, 2] = 255
    _png(tmp_path / "train" / "x" / "0.png", img)
    _png(tmp_path / "train" / "x" / "1.png", img)
    _png(tmp_path / "test" / "x" / "0.png", img)
    image, _ = get_dataset("imagefolder", "test", root=tmp_path, image_size=8)[0]
    assert torch.equal(image[0, :, :4], torch.ones(8, 4)) and image[0, :, 4:].sum() == 0
    assert torch.equal(image[2, :, 4:], torch.ones(8, 4)) and image[2, :, :4].sum() == 0


def test_imagefolder_needs_root_and_layout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="root"):
        get_dataset("imagefolder", "train")
    with pytest.raises(FileNotFoundError, match="train"):
        get_dataset("imagefolder", "train", root=tmp_path)


# ---- TensorLoader -----------------------------------------------------------------------------


def indexed_data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images whose every pixel is the sample index, labels = index: pairing is checkable."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 4, 4).clone()
    return images, torch.arange(n)


def batches(loader: TensorLoader, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    while len(out) < k:
        for b in loader:
            out.append(b)
            if len(out) == k:
                break
    return out


def test_loader_epochs_and_pairing() -> None:
    images, labels = indexed_data(40)
    loader = TensorLoader(images, labels, 16, generator=0, drop_last=True)
    assert len(loader) == 2
    assert len(TensorLoader(images, labels, 16, generator=0, drop_last=False)) == 3
    seen = []
    for x, y in loader:
        assert x.dtype == torch.float32 and x.shape == (16, 1, 4, 4)
        torch.testing.assert_close((x[:, 0, 0, 0] * 255).round().long(), y, atol=0, rtol=0)
        seen.append(y)
    assert loader.epoch == 1 and torch.cat(seen).unique().numel() == 32
    full = TensorLoader(images, labels, 16, generator=0, drop_last=False)
    assert sorted(torch.cat([y for _, y in full]).tolist()) == list(range(40))
    with pytest.raises(ValueError, match="batch_size"):
        TensorLoader(images, labels, 64)


def test_loader_deterministic_given_seed() -> None:
    images, labels = indexed_data()
    aug = Augment(pad=1, flip=True, noise_std=0.03)
    a = batches(TensorLoader(images, labels, 8, generator=123, augment=aug), 7)
    b = batches(TensorLoader(images, labels, 8, generator=123, augment=aug), 7)
    c = batches(TensorLoader(images, labels, 8, generator=124, augment=aug), 7)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(ya, yc) for (_, ya), (_, yc) in zip(a, c, strict=True))
    torch.manual_seed(5)
    d = batches(TensorLoader(images, labels, 8, augment=aug), 3)
    torch.manual_seed(5)
    e = batches(TensorLoader(images, labels, 8, augment=aug), 3)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(d, e, strict=True))


@pytest.mark.parametrize("stop_at", [3, 5, 7])  # mid-epoch, end of epoch, next epoch
def test_loader_state_dict_resumes_exactly(tmp_path: Path, stop_at: int) -> None:
    images, labels = indexed_data()
    aug = Augment(pad=1, flip=True, noise_std=0.03)
    reference = batches(TensorLoader(images, labels, 8, generator=7, augment=aug), 12)

    first = TensorLoader(images, labels, 8, generator=7, augment=aug)
    got = batches(first, stop_at)
    torch.save(first.state_dict(), tmp_path / "loader.pt")
    resumed = TensorLoader(images, labels, 8, generator=999, augment=aug)
    resumed.load_state_dict(torch.load(tmp_path / "loader.pt", weights_only=True))
    got += batches(resumed, 12 - stop_at)
    for (xr, yr), (xg, yg) in zip(reference, got, strict=True):
        assert torch.equal(xr, xg) and torch.equal(yr, yg)
    with pytest.raises(ValueError, match="batch"):
        TensorLoader(images, labels, 4).load_state_dict(first.state_dict())


def test_augment_crop_is_a_window_of_the_padded_image() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8).expand(32, 2, 8, 8) / 64
    for mode in ("constant", "reflect"):
        out = Augment(pad=2, pad_mode=mode, flip=False, noise_std=0.0)(x, g)
        padded = F.pad(x[:1], (2, 2, 2, 2), mode=mode)[0]
        offsets = set()
        for sample in out:
            hits = [
                (i, j)
                for i in range(5)
                for j in range(5)
                if torch.equal(sample, padded[:, i : i + 8, j : j + 8])
            ]
            assert hits, mode
            offsets.add(hits[0])
        assert len(offsets) > 5  # per-sample offsets


def test_augment_flip_per_sample() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 5, 5).expand(200, 3, 5, 5)
    out = Augment(pad=0, flip=True, noise_std=0.0)(x, g)
    flipped = torch.tensor([torch.equal(o, x[0].flip(-1)) for o in out])
    same = torch.tensor([torch.equal(o, x[0]) for o in out])
    assert (flipped | same).all()
    assert 60 < int(flipped.sum()) < 140


def test_augment_noise_std_in_internal_units() -> None:
    """noise_std=0.03 (official, [-1, 1] units) adds std 0.015 noise to [0, 1] images."""
    g = torch.Generator().manual_seed(2)
    x = torch.full((256, 3, 8, 8), 0.5)
    aug = Augment(pad=0, flip=False, noise_std=0.03)
    out = aug(x, g)
    assert aug.pixel_noise_std == pytest.approx(0.015)
    assert abs((out - x).std().item() - 0.015) < 0.0005
    assert abs((out - x).mean().item()) < 0.0005
    # and in internal units it is the official sigma
    assert abs(((2 * out - 1) - (2 * x - 1)).std().item() - 0.03) < 0.001
    clamped = Augment(pad=0, flip=False, noise_std=2.0, clamp=True)(x, g)
    assert clamped.min() >= 0 and clamped.max() <= 1


def test_loader_digits_float_images_with_augment() -> None:
    images, labels = load_split_tensors("digits", "train")
    loader = TensorLoader(
        images, labels, 64, generator=0, augment=Augment(pad=1, flip=False, noise_std=0.0)
    )
    x, y = next(iter(loader))
    assert x.shape == (64, 1, 8, 8) and x.min() >= 0 and x.max() <= 1
    assert y.dtype == torch.int64 and len(loader) == len(labels) // 64


def test_synthetic_is_cifar_shaped_and_fixed() -> None:
    from ebjdat.data import dataset_info, load_split_tensors

    a, la = load_split_tensors("synthetic", "train")
    b, lb = load_split_tensors("synthetic", "train")
    assert a.shape == (1024, 3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert dataset_info("synthetic").num_classes == 10
    assert not torch.equal(load_split_tensors("synthetic", "val")[0][:5], a[:5])
