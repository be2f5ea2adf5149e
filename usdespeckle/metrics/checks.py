"""Input checks shared by the metric modules (private): image pairs, region masks, field masks."""

from __future__ import annotations

import numpy as np


def check_pair(output: np.ndarray, reference: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 after checking they share a shape, are not empty and are finite."""
    out = np.asarray(output, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if out.shape != ref.shape:
        raise ValueError(f"{name}: output shape {out.shape} differs from reference shape {ref.shape}")
    if out.size == 0:
        raise ValueError(f"{name}: empty images")
    if not (np.all(np.isfinite(out)) and np.all(np.isfinite(ref))):
        raise ValueError(f"{name}: images contain NaN/inf; replace them first")
    return out, ref


def region_values(image: np.ndarray, mask: np.ndarray, name: str, what: str = "mask") -> np.ndarray:
    """The float64 values of ``image`` under a boolean ``mask`` of its shape (>= 2, all finite)."""
    img = np.asarray(image, dtype=np.float64)
    m = np.asarray(mask)
    if m.shape != img.shape:
        raise ValueError(f"{name}: {what} shape {m.shape} differs from image shape {img.shape}")
    if m.dtype != bool:
        raise ValueError(f"{name}: {what} must be a boolean array, got dtype {m.dtype}")
    values = img[m]
    if values.size < 2:
        raise ValueError(f"{name}: {what} selects {values.size} pixels; need at least 2")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name}: the {what} region contains NaN/inf")
    return values


def check_field(field: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The valid-pixel mask as booleans (everything when None)."""
    if field is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(field)
    if m.shape != shape:
        raise ValueError(f"{name}: field mask shape {m.shape} differs from image shape {shape}")
    return m > 0 if m.dtype != bool else m
