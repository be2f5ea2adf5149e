"""simulate_array: the trained simulator over images and volumes, slice by slice, with a tiny bundle."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from bundles import DIVISOR, make_server_bundle, record_sha256

from usdespeckle.gan.simulator import (
    load_simulator,
    simulate_array,
    simulate_bmode_from_mri,
    simulator_divisor,
)
from usdespeckle.runtime.errors import DespeckleCancelled
from usdespeckle.simulation.lowlevel import low_level_map

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A bundle with a TorchScript simulator (divisor 16) and its sha256 in metadata.json."""
    return make_server_bundle(tmp_path_factory.mktemp("bundle"))


def _mri(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Piecewise-constant tissue with noise, in MRI-like units (0-250)."""
    mri = np.full(shape, 20.0, np.float32)
    mri[..., shape[-2] // 5 : -shape[-2] // 5, shape[-1] // 6 : -shape[-1] // 6] = 120.0
    mri[..., shape[-2] // 3 : shape[-2] // 2, shape[-1] // 3 : shape[-1] // 2] = 220.0
    return mri + rng.normal(0.0, 5.0, shape).astype(np.float32)


def test_volume_is_the_simulator_on_each_slices_low_level_map(bundle, rng):
    mri = _mri(rng, (3, 32, 48))  # multiples of the divisor: no padding, so a direct reference
    out = simulate_array(mri, bundle_root=bundle, batch_size=2)
    simulator = torch.jit.load(str(bundle / "models" / "simulator.ts"))
    maps = np.stack([low_level_map(s) for s in mri])[:, np.newaxis]
    with torch.inference_mode():
        expected = simulator(torch.from_numpy(maps)).numpy()[:, 0]
    assert out.shape == mri.shape
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.min() >= 0.0
    assert out.max() <= 1.0
    assert out.std() > 0.01


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_any_axis_and_size_equals_slice_by_slice_rendering(bundle, rng, axis):
    mri = _mri(rng, (12, 20, 37))  # no side a multiple of 16: padded by reflection and cropped back
    out = simulate_array(mri, axis=axis, bundle_root=bundle, batch_size=5)
    simulator = load_simulator(bundle)
    for k in range(mri.shape[axis]):
        one = simulate_array(np.take(mri, k, axis=axis), bundle_root=bundle)
        np.testing.assert_allclose(np.take(out, k, axis=axis), one, atol=1e-6)
        np.testing.assert_allclose(
            one, simulate_bmode_from_mri(simulator, np.take(mri, k, axis=axis)[None])[0]
        )


def test_progress_and_cancel(bundle, rng):
    mri = _mri(rng, (5, 16, 16))
    calls: list[tuple[int, int]] = []
    simulate_array(mri, bundle_root=bundle, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 5), (4, 5), (5, 5)]
    event = threading.Event()
    with pytest.raises(DespeckleCancelled, match="after 2 of 5"):
        simulate_array(mri, bundle_root=bundle, batch_size=2, progress=lambda d, t: event.set(), cancel=event)


def test_a_loaded_simulator_is_cached_and_can_be_passed_in(bundle, rng):
    simulator = load_simulator(bundle)
    assert load_simulator(bundle) is simulator
    assert not simulator.training
    assert simulator_divisor(simulator) == DIVISOR
    mri = _mri(rng, (2, 16, 32))
    np.testing.assert_array_equal(
        simulate_array(mri, simulator=simulator), simulate_array(mri, bundle_root=bundle)
    )


def test_bad_input_and_bad_bundles_are_clear_errors(bundle, tmp_path, rng):
    with pytest.raises(ValueError, match="NaN"):
        simulate_array(np.full((16, 16), np.nan), bundle_root=bundle)
    with pytest.raises(ValueError, match="another axis"):
        simulate_array(_mri(rng, (3, 32, 32)), axis=1, bundle_root=bundle)
    with pytest.raises(FileNotFoundError, match="no simulator weights"):
        simulate_array(_mri(rng, (16, 16)), bundle_root=tmp_path / "empty")
    changed = make_server_bundle(tmp_path / "changed")
    record_sha256(changed, "models/simulator.ts", "0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        load_simulator(changed)
    record_sha256(changed, "models/simulator.ts", None)
    with pytest.raises(ValueError, match="records no sha256"):
        load_simulator(changed)


def test_divisor_comes_from_the_model():
    class Plain(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    from usdespeckle.gan.networks import Pix2PixUNetGenerator

    assert simulator_divisor(Pix2PixUNetGenerator(num_downs=5, ngf=2)) == 32
    assert simulator_divisor(Plain()) == 1  # says nothing about sizes: no padding
