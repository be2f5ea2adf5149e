"""Figure grids of the benchmark (numpy + PIL; matplotlib is not a dependency)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from usdespeckle.runtime.atomic import atomic_write

__all__ = ["compose_grid", "compose_panels", "display", "save_png"]


def _grid_shape(
    rows: Sequence[Sequence[np.ndarray]], column_labels: Sequence[str], row_labels: Sequence[str] | None
) -> tuple[int, ...]:
    """The one tile shape of :func:`compose_grid`'s rows; ValueError for an empty or ragged grid."""
    if not rows or not rows[0]:
        raise ValueError("compose_grid needs at least one row with one image.")
    ncols = len(rows[0])
    if any(len(r) != ncols for r in rows):
        raise ValueError(f"every row needs {ncols} images; got row lengths {[len(r) for r in rows]}.")
    if len(column_labels) != ncols:
        raise ValueError(f"{ncols} columns but {len(column_labels)} column labels: {list(column_labels)}.")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(row_labels)} row labels.")
    shape = np.asarray(rows[0][0]).shape
    for r in rows:
        for img in r:
            if np.asarray(img).shape != shape:
                raise ValueError(f"all tiles must share one shape; got {np.asarray(img).shape} and {shape}.")
    return shape


def compose_grid(
    rows: Sequence[Sequence[np.ndarray]],
    column_labels: Sequence[str],
    row_labels: Sequence[str] | None = None,
    *,
    gap: int = 4,
    label_height: int = 22,
    row_label_width: int = 0,
) -> np.ndarray:
    """Tile grey images into one labelled uint8 grid (rows x columns), white background.

    Args:
        rows: rows of 2D float images in [0, 1]; every image of the grid has the same shape.
        column_labels: one label per column, drawn above the first row.
        row_labels: optional label per row, drawn in a left margin of ``row_label_width`` pixels
            (as wide as the longest label when the width is 0).
        gap: white pixels between tiles.
        label_height: pixels reserved above the first row for the column labels.
        row_label_width: width of the row-label margin, pixels.

    Returns:
        uint8 (H, W) grid image.

    Raises:
        ValueError: if the grid is empty, the rows are ragged, shapes differ or labels miscount.
    """
    from PIL import Image, ImageDraw

    shape = _grid_shape(rows, column_labels, row_labels)
    ncols = len(rows[0])
    h, w = shape
    font = _font(max(6, label_height - 8))
    if row_labels is not None and row_label_width == 0:  # as wide as the longest row label
        measure = ImageDraw.Draw(Image.new("L", (1, 1)))
        row_label_width = 8 + int(max(measure.textlength(str(t), font=font) for t in row_labels))
    height = label_height + len(rows) * (h + gap)
    width = row_label_width + ncols * (w + gap)
    # Labels first, tiles after: a label's overflow is painted over instead of covering an image.
    pil = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(pil)

    def fit(text: str, room: float) -> str:
        while text and draw.textlength(text, font=font) > room:
            text = text[:-1]
        return text

    for j, label in enumerate(column_labels):
        draw.text((row_label_width + j * (w + gap) + 2, 3), fit(str(label), w - 2), fill=0, font=font)
    for i, label in enumerate(row_labels or []):
        text = fit(str(label), row_label_width - 4)
        draw.text((2, label_height + i * (h + gap) + h // 2 - 6), text, fill=0, font=font)
    canvas = np.array(pil, dtype=np.uint8)
    for i, r in enumerate(rows):
        for j, img in enumerate(r):
            tile = np.clip(np.nan_to_num(np.asarray(img, dtype=np.float64)), 0.0, 1.0)
            top, left = label_height + i * (h + gap), row_label_width + j * (w + gap)
            canvas[top : top + h, left : left + w] = np.round(tile * 255).astype(np.uint8)
    return canvas


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def compose_panels(
    tiles: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    columns: int = 5,
    gap: int = 4,
    label_height: int = 22,
) -> np.ndarray:
    """Tile grey images of possibly different shapes, each with its label above, ``columns`` per row.

    Tiles are centred in cells as large as the largest tile, on a black background (the colour
    outside an ultrasound field), with white gaps and label strips.

    Args:
        tiles: 2D float images in [0, 1].
        labels: one label per tile.
        columns: tiles per row (>= 1).
        gap: white pixels between cells.
        label_height: pixels of the label strip above each tile.

    Returns:
        uint8 (H, W) image.

    Raises:
        ValueError: if there is no tile, a tile is not 2D, or labels miscount.
    """
    from PIL import Image, ImageDraw

    if not tiles:
        raise ValueError("compose_panels needs at least one tile.")
    if len(labels) != len(tiles):
        raise ValueError(f"{len(tiles)} tiles but {len(labels)} labels.")
    if any(np.asarray(t).ndim != 2 for t in tiles):
        raise ValueError(f"tiles must be 2D; got shapes {[np.asarray(t).shape for t in tiles]}.")
    columns = max(1, min(int(columns), len(tiles)))
    h = max(np.asarray(t).shape[0] for t in tiles)
    w = max(np.asarray(t).shape[1] for t in tiles)
    nrows = -(-len(tiles) // columns)
    cell_h, cell_w = label_height + h + gap, w + gap
    pil = Image.new("L", (columns * cell_w, nrows * cell_h), 255)
    draw = ImageDraw.Draw(pil)
    font = _font(max(6, label_height - 8))
    canvas_tiles = []
    for index, (tile, label) in enumerate(zip(tiles, labels, strict=True)):
        row, col = divmod(index, columns)
        top, left = row * cell_h, col * cell_w
        text = str(label)
        while text and draw.textlength(text, font=font) > w - 2:
            text = text[:-1]
        draw.text((left + 2, top + 3), text, fill=0, font=font)
        canvas_tiles.append((top + label_height, left, np.asarray(tile, dtype=np.float64)))
    canvas = np.array(pil, dtype=np.uint8)
    for top, left, tile in canvas_tiles:
        canvas[top : top + h, left : left + w] = 0
        th, tw = tile.shape
        dy, dx = (h - th) // 2, (w - tw) // 2
        values = np.round(np.clip(np.nan_to_num(tile), 0.0, 1.0) * 255).astype(np.uint8)
        canvas[top + dy : top + dy + th, left + dx : left + dx + tw] = values
    return canvas


def display(reference: np.ndarray) -> np.ndarray:
    """Stretch a reference (e.g. an echogenicity map) to [0, 1] for display only."""
    ref = np.asarray(reference, dtype=np.float64)
    lo, hi = float(ref.min()), float(ref.max())
    return ((ref - lo) / (hi - lo) if hi > lo else np.zeros_like(ref)).astype(np.float32)


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a uint8 image as PNG atomically (:func:`usdespeckle.runtime.atomic.atomic_write`)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG"))
