"""The slice-wise runner despeckling and simulation share: checks, slices, batches, progress, cancel, padding."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from usdespeckle.runtime.errors import DespeckleCancelled
from usdespeckle.runtime.slicewise import (
    MIN_SLICE_SIZE,
    IntensityMap,
    check_volume,
    pad_to_multiple,
    robust_range,
    run_slicewise,
    slices_along,
)


def _row_cumsum(batch: np.ndarray) -> np.ndarray:
    """Depends on where each pixel sits in its slice: shows which axes a slice spans, and in which order."""
    return np.cumsum(batch, axis=1, dtype=np.float32)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("batch_size", [1, 4, 100])
def test_each_slice_along_the_axis_goes_through_the_function(rng, axis, batch_size):
    volume = rng.uniform(0, 10, size=(9, 12, 14))  # distinct sizes per axis
    (out,) = run_slicewise(volume, _row_cumsum, axis=axis, batch_size=batch_size)
    assert out.shape == volume.shape
    assert out.dtype == np.float32
    for k in range(volume.shape[axis]):
        np.testing.assert_allclose(
            np.take(out, k, axis=axis), _row_cumsum(np.take(volume, k, axis=axis)[None])[0], rtol=1e-6
        )


def test_a_2d_image_is_one_slice_whatever_the_axis(rng):
    image = rng.uniform(size=(10, 16))
    (out,) = run_slicewise(image, _row_cumsum, axis=2)
    np.testing.assert_allclose(out, np.cumsum(image, axis=0), rtol=1e-6)


def test_batches_are_float32_copies_and_the_input_is_never_written(rng):
    volume = rng.integers(0, 1000, size=(7, 10, 10)).astype(np.int16)
    before = volume.copy()
    seen: list[tuple[tuple[int, ...], np.dtype]] = []

    def scribble(batch: np.ndarray) -> np.ndarray:
        seen.append((batch.shape, batch.dtype))
        batch[...] = -1.0  # a process may work in place on its batch
        return batch

    (out,) = run_slicewise(volume, scribble, axis=1, batch_size=4)
    np.testing.assert_array_equal(volume, before)
    assert (out == -1.0).all()
    assert seen == [((4, 7, 10), np.float32), ((4, 7, 10), np.float32), ((2, 7, 10), np.float32)]


def test_several_outputs_and_progress_in_slices(rng):
    volume = rng.uniform(size=(7, 8, 9))
    calls: list[tuple[int, int]] = []
    twice, negated = run_slicewise(
        volume,
        lambda b: (2 * b, -b),
        batch_size=3,
        outputs=2,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(3, 7), (6, 7), (7, 7)]
    np.testing.assert_allclose(twice, 2 * volume, rtol=1e-6)
    np.testing.assert_allclose(negated, -volume, rtol=1e-6)


def test_cancel_by_event_or_callable_stops_between_batches(rng):
    volume = rng.uniform(size=(10, 8, 8))
    event = threading.Event()
    batches: list[int] = []

    def count(batch: np.ndarray) -> np.ndarray:
        batches.append(len(batch))
        return batch

    with pytest.raises(DespeckleCancelled, match="after 4 of 10 slices"):
        run_slicewise(volume, count, batch_size=4, progress=lambda d, t: event.set(), cancel=event)
    assert batches == [4]  # the first batch ran, the second was never started
    batches.clear()
    with pytest.raises(DespeckleCancelled, match="after 0 of 10"):
        run_slicewise(volume, count, cancel=lambda: True)
    assert batches == []
    (out,) = run_slicewise(volume, count, cancel=lambda: False)  # a callable that never asks
    np.testing.assert_allclose(out, volume, rtol=1e-6)


def test_non_finite_output_is_refused_with_the_slices_and_the_remedy(rng):
    volume = rng.uniform(size=(6, 8, 8))

    def broken(batch: np.ndarray) -> np.ndarray:
        batch[0, 0, 0] = np.inf
        return batch

    with pytest.raises(ValueError, match=r"the model returned NaN or infinite values on slices 0-1 of 6; "):
        run_slicewise(volume, broken, batch_size=2)
    with pytest.raises(ValueError, match=r"restore it\. Nothing was written"):
        run_slicewise(volume, broken, batch_size=2, name="the model", remedy="restore it.")


@pytest.mark.parametrize(
    ("array", "kwargs", "words"),
    [
        (np.zeros((2, 3, 16, 16)), {}, "2D"),
        (np.zeros(16), {}, "2D"),
        (np.zeros((16, 16), complex), {}, "real"),
        (np.array([["a"] * 16] * 16), {}, "real"),
        (np.zeros((3, 16, 16)), {"axis": 3}, "axis"),
        (np.zeros((3, 16, 16)), {"batch_size": 0}, "batch_size"),
        (np.zeros((0, 16, 16)), {}, "empty"),
        (np.full((16, 16), np.nan), {}, "NaN"),
        (np.full((16, 16), -np.inf), {}, "infinite"),
        (np.zeros((3, 32, 32)), {"axis": 1}, "another axis"),
        (np.zeros((MIN_SLICE_SIZE - 1, 32)), {}, f"at least {MIN_SLICE_SIZE}"),
    ],
)
def test_bad_inputs_are_refused_with_what_to_change(array, kwargs, words):
    with pytest.raises(ValueError, match=words):
        check_volume(array, **kwargs)


def test_good_inputs_pass_unchanged_and_slices_are_views(rng):
    volume = rng.integers(0, 255, size=(3, 8, 9)).astype(np.uint8)
    assert check_volume(volume, axis=0) is volume
    view = slices_along(volume, axis=2)
    assert view.shape == (9, 3, 8)
    assert np.shares_memory(view, volume)
    view[4] = 7  # writing a slice writes the volume
    assert (volume[:, :, 4] == 7).all()
    assert slices_along(volume[0], axis=2).shape == (1, 8, 9)


def test_robust_range_is_the_percentiles_and_falls_back_to_min_max(rng):
    values = rng.normal(100.0, 10.0, size=(50, 60))
    assert robust_range(values) == pytest.approx(tuple(np.percentile(values, (0.5, 99.5))))
    assert robust_range(values, (10.0, 90.0)) == pytest.approx(tuple(np.percentile(values, (10, 90))))
    mostly_zero = np.zeros((40, 40))
    mostly_zero[0, :3] = (5.0, 6.0, 7.0)  # the percentiles coincide (0, 0): min..max instead
    assert robust_range(mostly_zero) == (0.0, 7.0)
    large = rng.gamma(1.5, 30.0, size=(30, 200, 200))  # over a million values: a strided sample
    lo, hi = robust_range(large)
    assert (lo, hi) == robust_range(large.copy())  # deterministic
    assert abs(lo - np.percentile(large, 0.5)) < 0.5
    assert abs(hi - np.percentile(large, 99.5)) < 5.0


def test_intensity_map_to_unit_and_back(rng):
    image = rng.uniform(-50.0, 250.0, size=(20, 20)).astype(np.float32)
    mapping = IntensityMap.of(image, (0.0, 200.0))
    unit = mapping.to_unit(image)
    assert unit.dtype == np.float32
    assert unit.min() == 0.0
    assert unit.max() == 1.0
    inside = (image >= 0) & (image <= 200)
    np.testing.assert_allclose(mapping.from_unit(unit)[inside], image[inside], rtol=1e-5, atol=1e-4)
    assert IntensityMap.of(image) == IntensityMap(*robust_range(image))
    with pytest.raises(ValueError, match="constant"):
        IntensityMap.of(np.full((8, 8), 3.0))
    with pytest.raises(ValueError, match="empty"):
        IntensityMap.of(image, (5.0, 5.0))


@pytest.mark.parametrize(("shape", "divisor"), [((2, 37, 50), 16), ((1, 9, 8), 32), ((3, 32, 16), 16)])
def test_padding_reaches_the_divisor_by_reflection_and_crops_back(rng, shape, divisor):
    batch = rng.uniform(size=shape)
    padded, (rows, cols) = pad_to_multiple(batch, divisor)
    assert padded.shape[0] == shape[0]
    assert padded.shape[1] % divisor == 0
    assert padded.shape[2] % divisor == 0
    assert padded.shape[1] - shape[1] < divisor
    assert padded.shape[2] - shape[2] < divisor
    np.testing.assert_array_equal(padded[:, rows, cols], batch)
    top = rows.start
    if top > 0:  # reflection without repeating the edge row: row -1 is row 1
        np.testing.assert_array_equal(padded[:, top - 1, cols], batch[:, 1])
    # split as MONAI's DivisiblePad: half before, the rest after
    assert top == (padded.shape[1] - shape[1]) // 2
