"""Behaviour of the classical despecklers in usdespeckle.filters."""

from __future__ import annotations

import numpy as np
import pytest

from usdespeckle import filters, metrics

METHODS = sorted(filters.FILTERS)


def _phantom(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A clean phantom in [0, 1]: a homogeneous left half and a structured right half; and the
    mask of the homogeneous region's interior."""
    clean = np.full((size, size), 0.5)
    y, x = np.mgrid[0:size, 0:size]
    right = x >= size // 2
    clean[right] = 0.3 + 0.4 * ((x[right] // 8 + y[right] // 8) % 2)
    mask = np.zeros((size, size), bool)
    mask[6 : size - 6, 6 : size // 2 - 8] = True
    return clean, mask


def _speckle(clean: np.ndarray, rng: np.random.Generator, looks: int = 2) -> np.ndarray:
    """Multiplicative envelope speckle ``x * sqrt(Gamma(L, 1/L))``."""
    return clean * np.sqrt(rng.gamma(looks, 1.0 / looks, clean.shape))


@pytest.fixture(scope="module")
def speckled() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    clean, mask = _phantom()
    noisy = _speckle(clean, np.random.default_rng(7))
    return clean, noisy, mask


@pytest.mark.parametrize("method", METHODS)
def test_reduces_speckle(method: str, speckled: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    clean, noisy, mask = speckled
    before = noisy.copy()
    out = filters.FILTERS[method](noisy)
    assert out is not noisy
    assert not np.shares_memory(out, noisy)
    np.testing.assert_array_equal(noisy, before)  # input untouched
    assert out.dtype == np.float32 and out.shape == noisy.shape
    assert np.all(np.isfinite(out))
    assert metrics.speckle_snr(out, mask) > 1.5 * metrics.speckle_snr(noisy, mask)
    assert np.mean((out - clean) ** 2) < 0.7 * np.mean((noisy - clean) ** 2)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "bm3d"])
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_volume_is_slicewise(method: str, axis: int, rng: np.random.Generator) -> None:
    clean, _ = _phantom(24)
    volume = np.stack([_speckle(clean, rng) for _ in range(3)], axis=0)  # (3, 24, 24)
    volume = np.moveaxis(volume, 0, axis)
    out = filters.despeckle(volume, method, axis=axis)
    assert out.dtype == np.float32 and out.shape == volume.shape
    for k in range(3):
        sl = np.take(volume, k, axis=axis)
        np.testing.assert_allclose(
            np.take(out, k, axis=axis), filters.despeckle(sl, method), rtol=1e-5, atol=1e-6
        )


def test_bm3d_volume_is_slicewise(rng: np.random.Generator) -> None:
    clean, _ = _phantom(32)
    volume = np.stack([_speckle(clean, rng) for _ in range(2)], axis=2)  # (32, 32, 2)
    out = filters.despeckle_bm3d(volume, axis=2)
    assert out.shape == volume.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 1], filters.despeckle_bm3d(volume[..., 1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "bm3d"])
def test_dtypes_ranges_and_constant(method: str, rng: np.random.Generator) -> None:
    clean, _ = _phantom(32)
    noisy = _speckle(clean, rng)
    as_u8 = (np.clip(noisy, 0, 1) * 255).astype(np.uint8)
    out_u8 = filters.despeckle(as_u8, method)
    out_f = filters.despeckle(as_u8.astype(np.float64) / 255, method)
    assert out_u8.dtype == np.float32
    # range-independent filters: scaling the input scales the output
    if method in ("median", "lee", "kuan", "frost", "srad", "obnlm", "tv"):
        np.testing.assert_allclose(out_u8 / 255, out_f, rtol=1e-4, atol=1e-4)
    flat = np.full((32, 32), 0.25, np.float32)
    out_flat = filters.despeckle(flat, method)
    assert out_flat is not flat
    np.testing.assert_allclose(out_flat, 0.25, atol=1e-5)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.full((8, 8), np.nan), "NaN"),
        (np.array([[0.0, np.inf], [0.0, 0.0]]), "NaN/inf"),
        (np.zeros((2, 2, 2, 2)), "4D|3D"),
        (np.zeros(8), "2D"),
        (np.zeros((4, 4), complex), "dtype"),
    ],
)
@pytest.mark.parametrize("method", METHODS)
def test_bad_input(method: str, bad: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        filters.despeckle(bad, method)


def test_registry_and_parameter_errors() -> None:
    assert set(filters.FILTERS) == {"median", "lee", "frost", "kuan", "srad", "obnlm", "bm3d", "nlm", "tv"}
    image = np.ones((16, 16))
    with pytest.raises(ValueError, match="valid names: median"):
        filters.despeckle(image, "wiener")
    with pytest.raises(ValueError, match="valid parameters"):
        filters.despeckle(image, "median", window=3)
    with pytest.raises(ValueError, match="odd"):
        filters.despeckle_median(image, size=4)
    with pytest.raises(ValueError, match="dt"):
        filters.despeckle_srad(image, dt=0.5)
    with pytest.raises(ValueError, match="axis"):
        filters.despeckle_lee(np.ones((4, 8, 8)), axis=3)
    with pytest.raises(ValueError, match="transform"):
        filters.despeckle_bm3d(image, transform="anscombe")
    with pytest.raises(ValueError, match="step"):
        filters.despeckle_obnlm(image, block_radius=1, step=4)
