"""Sample grids a person can read: small images are enlarged nearest-neighbour (8x8 digits
drawn at 1:1 make a thumbnail nobody can judge), and class-conditional grids get one class per
row with the class written in a narrow column on the left. Used for every grid the package
writes: ebjdat-eval and ebjdat-sample reports, the trainer's epoch grids and TensorBoard."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

MIN_WIDTH = 400  # pixels: the narrowest grid written
PAD_VALUE = 1.0  # padding and empty cells are white
LABEL_WIDTH = 28  # pixels of the class-label column


def class_rows(
    x01: torch.Tensor, labels: torch.Tensor, num_classes: int, per_row: int | None = None
) -> tuple[torch.Tensor, int, list[int]]:
    """Reorders images so that each row holds one class: (images, images per row, the class of
    each row). Classes with fewer than `per_row` images get white cells, so rows stay aligned;
    classes without images are left out. per_row None: the largest class count."""
    labels = labels.long().cpu()
    counts = torch.bincount(labels, minlength=num_classes)
    width = int(counts.max()) if per_row is None else per_row
    width = max(1, width)
    blank = torch.full_like(x01[:1], PAD_VALUE)
    cells, rows = [], []
    for k in range(num_classes):
        idx = torch.nonzero(labels == k).squeeze(1)[:width]
        if len(idx) == 0:
            continue
        rows.append(k)
        cells.append(x01[idx])
        if len(idx) < width:
            cells.append(blank.expand(width - len(idx), *x01.shape[1:]))
    return torch.cat(cells), width, rows


def grid_image(
    x01: torch.Tensor,
    nrow: int,
    *,
    row_labels: Sequence[str] | None = None,
    min_width: int = MIN_WIDTH,
    padding: int = 1,
) -> torch.Tensor:
    """The grid as a [3, H, W] uint8 tensor at least `min_width` pixels wide: the images,
    `nrow` per row, enlarged by a whole factor (nearest-neighbour, so pixels stay sharp), and
    with row_labels a label column on the left (one label per grid row)."""
    from torchvision.utils import make_grid

    x = torch.nan_to_num(x01.detach().float().cpu(), nan=0.0).clamp(0, 1)
    grid = make_grid(x, nrow=nrow, padding=padding, pad_value=PAD_VALUE)
    h, w = grid.shape[1:]
    label_w = LABEL_WIDTH if row_labels else 0
    scale = max(1, math.ceil((min_width - label_w) / w))
    img = (grid * 255).round().to(torch.uint8)
    img = img.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    if not row_labels:
        return img
    return _with_labels(img, list(row_labels), (x.shape[2] + padding) * scale, padding * scale)


def _with_labels(img: torch.Tensor, labels: list[str], row_h: int, pad: int) -> torch.Tensor:
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    _, h, w = img.shape
    canvas = Image.new("RGB", (w + LABEL_WIDTH, h), "white")
    canvas.paste(Image.fromarray(img.permute(1, 2, 0).numpy()), (LABEL_WIDTH, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, text in enumerate(labels):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        cy = pad + i * row_h + (row_h - pad) / 2
        x = max(0, (LABEL_WIDTH - (right - left)) / 2)
        draw.text((x, cy - (bottom - top) / 2 - top), text, fill="black", font=font)
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)


def save_grid(
    x01: torch.Tensor,
    path: str | Path,
    nrow: int,
    *,
    row_labels: Sequence[str] | None = None,
    min_width: int = MIN_WIDTH,
) -> Path:
    """[0, 1] images as one PNG grid (see grid_image); returns the path."""
    return write_png(grid_image(x01, nrow, row_labels=row_labels, min_width=min_width), path)


def write_png(img: torch.Tensor, path: str | Path) -> Path:
    """A [3, H, W] uint8 image (grid_image's) as a PNG; returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)
    return path
