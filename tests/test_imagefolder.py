"""Image-folder trees read by torchvision's ImageFolder: labels from train/'s class list across
splits, the layout errors, pickling for DataLoader workers, and a 64-px tree trained end to end
with the low-rank class-Gaussian buffer init."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import ebjdat
from ebjdat.data import DatasetNotFoundError, ImageFolderDataset, get_dataset, load_split_tensors


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def _solid(colour: tuple[int, int, int], h: int = 5, w: int = 7) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (h, w, 3)).copy()


COLOURS = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255)}


def test_held_out_labels_follow_the_training_classes(tmp_path: Path) -> None:
    """test/ lacks class 'b' and holds one greyscale image: its labels are train/'s indices
    (a=0, c=2) and every image comes back RGB."""
    for cls, colour in COLOURS.items():
        for i in range(3):
            _png(tmp_path / "train" / cls / f"{i}.png", _solid(colour))
    _png(tmp_path / "test" / "a" / "0.png", _solid(COLOURS["a"]))
    _png(tmp_path / "test" / "c" / "0.png", _solid(COLOURS["c"]))
    _png(tmp_path / "test" / "c" / "1.png", np.full((6, 6), 255, dtype=np.uint8), mode="L")
    test = get_dataset("imagefolder", "test", root=tmp_path, image_size=4)
    assert isinstance(test, ImageFolderDataset) and test.classes == ("a", "b", "c")
    from torchvision.datasets import ImageFolder

    assert isinstance(test.folder, ImageFolder) and test.folder.class_to_idx["c"] == 2
    images, labels = load_split_tensors("imagefolder", "test", root=tmp_path, image_size=4)
    assert labels.tolist() == [0, 2, 2] and images.shape == (3, 3, 4, 4)
    assert images.dtype == torch.uint8
    assert images[0, 0].min() == 255 and images[1, 2].min() == 255 and images[2].min() == 255
    # Pickled as DataLoader workers receive it, it reads the same images and labels.
    again = pickle.loads(pickle.dumps(test))
    for i in range(len(test)):
        assert torch.equal(again[i][0], test[i][0]) and again[i][1] == test[i][1]
    # The carved val split and the rest of train/ partition train/, with train/'s labels.
    train = get_dataset("imagefolder", "train", root=tmp_path, image_size=4)
    val = get_dataset("imagefolder", "val", root=tmp_path, image_size=4)
    assert len(train) + len(val) == 9 and not set(train.paths) & set(val.paths)
    for ds in (train, val):
        for i in range(len(ds)):
            image, label = ds[i]
            assert Path(ds.paths[i]).parent.name == "abc"[label]
            assert image.dtype == torch.float32 and image.max() == 1.0


def test_layout_errors_are_one_line_and_name_the_folder(tmp_path: Path) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"no images .* in '.*train'") as err:
        get_dataset("imagefolder", "train", root=tmp_path)
    assert "\n" not in str(err.value)
    _png(tmp_path / "train" / "a" / "0.png", _solid(COLOURS["a"]))
    with pytest.raises(DatasetNotFoundError, match=r"no images .* in '.*val'"):
        get_dataset("imagefolder", "test", root=tmp_path)
    _png(tmp_path / "val" / "z" / "0.png", _solid(COLOURS["a"]))
    with pytest.raises(ValueError, match=r"has classes not in train/: \['z'\]"):
        get_dataset("imagefolder", "test", root=tmp_path)
    with pytest.raises(ValueError, match="at least 2 images"):
        get_dataset("imagefolder", "val", root=tmp_path)


def _tree_64px(root: Path, per_class: dict[str, int]) -> None:
    """Three classes of 64x64 RGB images: a class colour plus noise, so classes differ."""
    rng = np.random.default_rng(0)
    for folder, n in per_class.items():
        for cls, colour in COLOURS.items():
            for i in range(n):
                base = np.array(colour, dtype=np.float64) * 0.6 + 50
                noisy = base + rng.normal(0, 40, (64, 64, 3))
                _png(root / folder / cls / f"{i}.png", noisy.clip(0, 255).astype(np.uint8))


def test_64px_imagefolder_trains_end_to_end_with_low_rank_gaussians(tmp_path: Path) -> None:
    _tree_64px(tmp_path / "data", {"train": 12, "val": 3})
    messages: list[str] = []
    torch.manual_seed(0)
    trainer = ebjdat.fit(
        None,
        None,
        preset="digits",
        config={
            "data.dataset": "imagefolder",
            "data.root": str(tmp_path / "data"),
            "data.batch_size": 8,
            "data.labelled_batch_size": 8,
            "model.arch": "wrn-10-1",
            "sgld.init": "gaussian",
            "sgld.buffer_size": 16,
            "sgld.steps": 2,
            "adv.steps": 1,
            "train.epochs": 1,
            "train.eval_limit": 4,
            "train.eval_steps": 1,
            "train.sample_grid": 4,
            "optim.warmup_iters": 0,
        },
        out_dir=tmp_path / "run",
        device="cpu",
        progress_bar=False,
        log=messages.append,
    )
    chosen = [m for m in messages if m.startswith("class Gaussians:")]
    assert len(chosen) == 1 and "low-rank" in chosen[0] and "3x64x64 = 12288" in chosen[0]
    gaussians = trainer.buffer.gaussians
    assert gaussians.covariance == "lowrank" and gaussians.shape == (3, 64, 64)
    assert gaussians.nbytes < 8 << 20  # full covariances: 3 x 12288^2 floats, 1.7 GiB
    assert trainer.buffer.buffer.shape == (16, 3, 64, 64)
    assert [row["epoch"] for row in trainer.state.history] == [1]
    row = trainer.state.history[0]
    terms = ("train_loss", "train_px", "train_ce", "train_align", "train_ce_adv")
    assert all(math.isfinite(row[k]) for k in terms), row
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
