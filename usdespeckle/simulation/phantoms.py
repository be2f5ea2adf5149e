"""Cyst phantoms: echogenicity maps of round inclusions in a homogeneous background, with masks.

The maps follow the echogenicity convention of :mod:`usdespeckle.simulation.physics` (RMS scatterer
amplitude in [0, 1]), so a cyst of contrast ``c`` dB is ``c`` dB from the background in the B-mode
of either simulation path.
"""

from __future__ import annotations

import math

import numpy as np

from usdespeckle.simulation.psf import check_positive

__all__ = ["make_cyst_phantom"]


def make_cyst_phantom(
    shape: tuple[int, int] = (256, 256),
    rng: np.random.Generator | None = None,
    *,
    contrasts_db: tuple[float, ...] = (-20.0, -10.0, -6.0, 6.0),
    radius_px: float | None = None,
    background: float = 0.5,
    jitter_px: float | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Echogenicity map of round cysts/inclusions in a homogeneous background, with region masks.

    Cysts sit on a regular grid (``ceil(sqrt(n))`` columns), each moved by a random jitter. A cyst
    of contrast ``c`` dB has echogenicity ``background * 10**(c/20)`` (clipped to [0, 1]), so its
    B-mode level differs from the background's by ``c`` dB.

    Args:
        shape: (H, W) in pixels.
        rng: random generator for the jitter; None means no jitter.
        contrasts_db: contrast of each cyst (dB, relative to the background).
        radius_px: cyst radius (pixels); default ``min(shape) / 10``.
        background: background echogenicity in (0, 1].
        jitter_px: largest random shift of each cyst centre (pixels); default ``radius_px / 4``.

    Returns:
        ``(echogenicity, masks)``: float32 (H, W) map in [0, 1] and boolean (H, W) masks:
        ``"background"`` (farther than 2 radii from every cyst and half a radius from the border),
        ``"cyst_<c>dB"`` for each cyst (e.g. ``"cyst_-20dB"``, its inner 80 % radius) and
        ``"edges"`` (within 2 pixels of any cyst boundary).

    Raises:
        ValueError: if the cysts do not fit, contrasts repeat, or the background is out of range.
    """
    if len(tuple(shape)) != 2 or min(shape) < 16:
        raise ValueError(f"shape must be (H, W) with H, W >= 16, got {shape}.")
    height, width = int(shape[0]), int(shape[1])
    if not 0.0 < background <= 1.0:
        raise ValueError(f"background must be in (0, 1], got {background}.")
    contrasts = [float(c) for c in contrasts_db]
    if not contrasts:
        raise ValueError("contrasts_db must name at least one cyst.")
    names = [f"cyst_{c:+g}dB".replace("+-", "-") for c in contrasts]
    if len(set(names)) != len(names):
        raise ValueError(f"contrasts_db must not repeat, got {contrasts_db}.")
    radius = min(height, width) / 10.0 if radius_px is None else check_positive("radius_px", radius_px)
    jitter = radius / 4.0 if jitter_px is None else max(0.0, float(jitter_px))
    n_cols = math.ceil(math.sqrt(len(contrasts)))
    n_rows = math.ceil(len(contrasts) / n_cols)
    cell_h, cell_w = height / n_rows, width / n_cols
    if 2 * (radius + jitter) + 2 > min(cell_h, cell_w):
        raise ValueError(
            f"{len(contrasts)} cysts of radius {radius:.3g} px (+ jitter {jitter:.3g}) do not fit in {shape}; "
            "use a smaller radius_px or fewer contrasts."
        )
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    echogenicity = np.full((height, width), float(background), dtype=np.float64)
    masks: dict[str, np.ndarray] = {}
    near_cyst = np.zeros((height, width), dtype=bool)
    edges = np.zeros((height, width), dtype=bool)
    for index, (contrast, name) in enumerate(zip(contrasts, names, strict=True)):
        centre_row = (index // n_cols + 0.5) * cell_h
        centre_col = (index % n_cols + 0.5) * cell_w
        if rng is not None and jitter > 0:
            centre_row += rng.uniform(-jitter, jitter)
            centre_col += rng.uniform(-jitter, jitter)
        distance = np.hypot(rows - centre_row, cols - centre_col)
        echogenicity[distance <= radius] = min(1.0, background * 10 ** (contrast / 20.0))
        masks[name] = distance <= 0.8 * radius
        near_cyst |= distance <= 2.0 * radius
        edges |= np.abs(distance - radius) <= 2.0
    border = max(1, int(round(radius / 2)))
    inside = np.zeros((height, width), dtype=bool)
    inside[border:-border, border:-border] = True
    masks["background"] = inside & ~near_cyst
    masks["edges"] = edges
    return echogenicity.astype(np.float32), masks
