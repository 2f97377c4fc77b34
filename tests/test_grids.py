"""Sample grids: at least ~400 px wide, enlarged nearest-neighbour, one labelled class per row."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ebjdat.grids import MIN_WIDTH, class_rows, grid_image, save_grid


def test_small_images_are_enlarged_nearest_neighbour(tmp_path: Path) -> None:
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    path = save_grid(x, tmp_path / "g.png", 8)
    width, height = Image.open(path).size
    assert width >= MIN_WIDTH and height >= MIN_WIDTH
    img = grid_image(x, 8)
    scale = img.shape[2] // (8 * 9 + 1)
    # The first image's top-left pixel is a scale x scale block of its value.
    block = img[0, scale : 2 * scale, scale : 2 * scale]
    assert bool((block == round(float(x[0, 0, 0, 0]) * 255)).all())
    big = torch.rand(4, 3, 256, 256)
    assert grid_image(big, 2).shape[2] == 2 * 256 + 3  # large images are left at 1:1


def test_class_rows_and_labels(tmp_path: Path) -> None:
    x = torch.rand(12, 1, 8, 8)
    labels = torch.arange(12) % 5
    cells, width, rows = class_rows(x, labels, 5)
    assert width == 3 and rows == [0, 1, 2, 3, 4] and len(cells) == 15
    torch.testing.assert_close(cells[0], x[0])
    torch.testing.assert_close(cells[1], x[5])
    assert bool((cells[14] == 1.0).all())  # class 4 has only 2 images: a white cell
    path = save_grid(cells, tmp_path / "c.png", width, row_labels=[str(r) for r in rows])
    assert Image.open(path).size[0] >= MIN_WIDTH
