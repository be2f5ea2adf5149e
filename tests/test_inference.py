"""Slice-wise despeckling: padding, axes, strength, streaming, cancellation, bundle checks."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from bundles import DIVISOR, make_bundle, record_sha256

from usdespeckle.runtime.bundle_utils import default_bundle_root
from usdespeckle.runtime.denoiser import mirror, unmirror
from usdespeckle.runtime.errors import DespeckleCancelled
from usdespeckle.runtime.inference import despeckle_array, despeckle_image, load_denoiser
from usdespeckle.runtime.options import MIRRORINGS, PASSES
from usdespeckle.runtime.slicewise import robust_range

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def expected_square(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """What the SquareDenoiser bundle gives through despeckle_array's intensity mapping."""
    mapped = np.clip((array.astype(np.float32) - lo) / (hi - lo), 0, 1)
    return mapped**2 * (hi - lo) + lo


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"), onnx=True)


def test_2d_known_answer_with_padding_and_crop(bundle, rng):
    image = rng.uniform(10, 200, size=(37, 50)).astype(np.float32)  # not multiples of 16
    out = despeckle_array(image, bundle_root=bundle)
    lo, hi = robust_range(image)
    assert out.dtype == np.float32
    assert out.shape == image.shape
    np.testing.assert_allclose(out, expected_square(image, lo, hi), rtol=1e-5, atol=1e-3)
    # back in the input's range, and really changed
    assert out.min() >= lo - 1e-3
    assert out.max() <= hi + 1e-3
    assert np.abs(out - image).mean() > 1.0


def test_onnx_matches_torch(bundle, rng):
    volume = rng.uniform(0, 1, size=(5, 20, 33)).astype(np.float32)
    a = despeckle_array(volume, bundle_root=bundle, backend="torch", batch_size=2)
    b = despeckle_array(volume, bundle_root=bundle, backend="onnx", batch_size=3)
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_axis_equals_per_slice_processing(bundle, rng, axis):
    volume = rng.uniform(0, 255, size=(9, 12, 14)).astype(np.float32)  # distinct sizes per axis
    rng_lo_hi = robust_range(volume)
    out = despeckle_array(volume, bundle_root=bundle, axis=axis, batch_size=4, intensity_range=rng_lo_hi)
    for k in range(volume.shape[axis]):
        one = despeckle_array(np.take(volume, k, axis=axis), bundle_root=bundle, intensity_range=rng_lo_hi)
        np.testing.assert_allclose(np.take(out, k, axis=axis), one, atol=1e-5)


def test_axis_matters_for_a_spatial_filter(tmp_path, rng):
    """With a 3x3 smoothing denoiser, slicing along different axes gives different volumes."""

    class Smooth(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

    root = make_bundle(tmp_path / "smooth", model=Smooth())
    volume = rng.uniform(0, 1, size=(10, 12, 14)).astype(np.float32)
    a0 = despeckle_array(volume, bundle_root=root, axis=0)
    a2 = despeckle_array(volume, bundle_root=root, axis=2)
    assert np.abs(a0 - a2).mean() > 0.01


def test_strength_zero_returns_input_and_blends_linearly(bundle, rng):
    image = rng.integers(0, 4000, size=(24, 30)).astype(np.int16)
    np.testing.assert_array_equal(despeckle_array(image, bundle_root=bundle, strength=0.0), image)
    full = despeckle_array(image, bundle_root=bundle, strength=1.0)
    half = despeckle_array(image, bundle_root=bundle, strength=0.5)
    np.testing.assert_allclose(half, 0.5 * image + 0.5 * full, rtol=1e-5, atol=1e-2)


def test_input_is_not_modified(bundle, rng):
    volume = rng.uniform(0, 1, size=(10, 16, 16)).astype(np.float32)
    before = volume.copy()
    despeckle_array(volume, bundle_root=bundle, axis=1)
    np.testing.assert_array_equal(volume, before)


def test_progress_and_cancel(bundle, rng):
    volume = rng.uniform(0, 1, size=(10, 16, 16)).astype(np.float32)
    calls: list[tuple[int, int]] = []
    despeckle_array(volume, bundle_root=bundle, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 10), (8, 10), (10, 10)]

    event = threading.Event()

    def stop_after_first(done: int, total: int) -> None:
        event.set()

    with pytest.raises(DespeckleCancelled):
        despeckle_array(volume, bundle_root=bundle, batch_size=4, progress=stop_after_first, cancel=event)
    with pytest.raises(DespeckleCancelled):
        despeckle_array(volume, bundle_root=bundle, cancel=lambda: True)


def test_despeckle_image_keeps_geometry_and_metadata(bundle, rng):
    image = sitk.GetImageFromArray(rng.uniform(0, 100, size=(4, 20, 24)).astype(np.float32))
    image.SetSpacing((0.2, 0.3, 1.5))
    image.SetOrigin((-3.0, 4.0, 10.5))
    image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    image.SetMetaData("Modality", "US")
    out = despeckle_image(image, bundle_root=bundle)
    assert out.GetSpacing() == image.GetSpacing()
    assert out.GetOrigin() == image.GetOrigin()
    assert out.GetDirection() == image.GetDirection()
    assert out.GetMetaData("Modality") == "US"
    assert out.GetPixelID() == sitk.sitkFloat32


def test_classical_method_or_clear_error(rng):
    from usdespeckle.runtime.filters import despeckle_median

    image = rng.uniform(0, 1, size=(32, 32)).astype(np.float32)
    out = despeckle_array(image, "median")
    assert out.shape == image.shape
    assert out.std() < image.std()
    exact = despeckle_array(image, "median", intensity_range=(0.0, 1.0))  # no remapping of [0, 1]
    np.testing.assert_allclose(exact, despeckle_median(image), atol=1e-6)  # the filter, with its defaults
    with pytest.raises(ValueError, match="not one of"):
        despeckle_array(image, "wiener")


def test_bad_arguments(bundle, rng):
    image = rng.uniform(0, 1, size=(16, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="strength"):
        despeckle_array(image, bundle_root=bundle, strength=1.5)
    with pytest.raises(ValueError, match="axis"):
        despeckle_array(image[None].repeat(3, 0), bundle_root=bundle, axis=3)
    with pytest.raises(ValueError, match="2D"):
        despeckle_array(image[None, None], bundle_root=bundle)
    bad = image.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        despeckle_array(bad, bundle_root=bundle)
    with pytest.raises(ValueError, match="constant"):
        despeckle_array(np.ones((16, 16)), bundle_root=bundle)
    with pytest.raises(ValueError, match="another axis"):
        despeckle_array(rng.uniform(size=(3, 32, 32)), bundle_root=bundle, axis=1)


def test_missing_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("USDESPECKLE_BUNDLE", str(tmp_path / "nowhere"))
    assert default_bundle_root() == tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="training/"):
        load_denoiser()
    with pytest.raises(FileNotFoundError, match="training/"):
        despeckle_array(np.arange(256.0).reshape(16, 16))


def test_sha256_mismatch_is_refused(tmp_path):
    root = make_bundle(tmp_path / "b")
    record_sha256(root, "models/model.ts", "0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        load_denoiser(root, backend="torch")
    record_sha256(root, "models/model.ts", None)
    with pytest.raises(ValueError, match="weights_sha256"):
        load_denoiser(root, backend="torch")


def test_loaded_model_is_cached(bundle):
    assert load_denoiser(bundle) is load_denoiser(bundle)
    assert load_denoiser(bundle).backend == "onnx"  # auto, the default: the bundle has model.onnx
    assert load_denoiser(bundle, backend="torch") is not load_denoiser(bundle)
    assert load_denoiser(bundle, backend="torch") is load_denoiser(bundle, backend="torch")
    assert load_denoiser(bundle).divisor == DIVISOR


def make_generator_bundle(
    root: Path, mirrorings: int = 1, *, onnx: bool = False
) -> tuple[Path, torch.nn.Module]:
    """A tiny bundle exported as the shipped one is: a real generator in a ``SelfEnsemble``.

    Returns the bundle and the plain (one-pass) generator; ``mirrorings`` > 1 makes an export that
    averages mirrorings itself (as before 1.0.0). ``onnx`` also writes ``models/model.onnx``.
    """
    from usdespeckle.gan.ensemble import SelfEnsemble
    from usdespeckle.gan.networks import Pix2PixUNetGenerator

    torch.manual_seed(0)
    generator = Pix2PixUNetGenerator(ngf=4, num_downs=4, norm="INSTANCE").eval()
    return make_bundle(root, model=SelfEnsemble(generator, mirrorings), onnx=onnx), generator


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_passes_are_the_self_ensemble_for_every_pass_count(tmp_path, rng, backend):
    """The library's numpy mirroring over the one-pass export equals the torch SelfEnsemble module."""
    from usdespeckle.gan.ensemble import SelfEnsemble

    root, generator = make_generator_bundle(tmp_path / "b", onnx=True)
    assert load_denoiser(root, backend=backend).passes == 1  # the default: one pass
    batch = rng.uniform(size=(2, 1, 32, 48)).astype(np.float32)  # not square: transposes must round-trip
    for passes in PASSES:
        with torch.no_grad():
            expected = SelfEnsemble(generator, passes).eval()(torch.from_numpy(batch)).clamp(0, 1).numpy()
        denoiser = load_denoiser(root, backend=backend, passes=passes)
        assert denoiser.passes == passes
        np.testing.assert_allclose(denoiser(batch), expected, atol=1e-5)
    image = rng.uniform(0, 100, size=(3, 20, 30))
    one = despeckle_array(image, bundle_root=root, backend=backend, passes=1)
    assert np.abs(one - despeckle_array(image, bundle_root=root, backend=backend, passes=8)).max() > 1e-3


def test_mirror_and_unmirror_undo_each_other_over_the_table(rng):
    batch = rng.uniform(size=(2, 1, 4, 6))
    views = {mirror(batch, i).tobytes() for i in range(len(MIRRORINGS))}
    assert len(views) == 8  # eight different mirrorings of a generic image
    for i in range(len(MIRRORINGS)):
        np.testing.assert_array_equal(unmirror(mirror(batch, i), i), batch)


def test_an_export_that_averages_mirrorings_itself_is_refused(tmp_path):
    root, _ = make_generator_bundle(tmp_path / "b", mirrorings=4)
    with pytest.raises(ValueError, match="averages 4 mirrorings itself") as info:
        load_denoiser(root)
    assert "export_bundle.py" in str(info.value)
    assert "\n" not in str(info.value)


def test_passes_work_with_onnx_and_bad_values_are_clear_errors(bundle, rng):
    batch = rng.uniform(size=(1, 1, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(
        load_denoiser(bundle, backend="onnx", passes=8)(batch),
        load_denoiser(bundle, passes=8)(batch),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="1, 2, 4, 8"):
        load_denoiser(bundle, passes=3)


class ShiftDenoiser(torch.nn.Module):
    """Not mirror-symmetric: shifts the image one pixel down, so mirrored passes disagree."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, 1, dims=2)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_uncertainty_is_zero_for_a_mirror_symmetric_model(bundle, rng, backend):
    volume = rng.uniform(10, 90, size=(3, 24, 40))
    output, spread = despeckle_array(volume, bundle_root=bundle, backend=backend, return_uncertainty=True)
    np.testing.assert_allclose(
        output, despeckle_array(volume, bundle_root=bundle, backend=backend), atol=1e-5
    )
    assert spread.shape == volume.shape
    assert spread.dtype == np.float32
    assert float(spread.max()) < 1e-4  # x**2 pixel by pixel: every mirroring gives the same answer


def test_uncertainty_shows_where_mirrored_passes_disagree(tmp_path, rng):
    root = make_bundle(tmp_path / "shift", model=ShiftDenoiser())
    image = np.zeros((32, 32))
    image[:, 16:] = 100.0  # an edge along the rows: the shift moves it only in transposed passes
    image[10:20, :] = 50.0
    _, spread = despeckle_array(image, bundle_root=root, return_uncertainty=True, strength=0.5)
    assert spread.max() > 5.0  # mirrorings disagree at the horizontal edges, in input units
    assert spread[25:, 2:14].max() < 1e-4  # flat areas agree
    sitk_image = sitk.GetImageFromArray(image.astype(np.float32))
    sitk_image.SetSpacing((0.3, 0.2))
    sitk_image.SetOrigin((5.0, -2.0))
    despeckled, spread_image = despeckle_image(sitk_image, bundle_root=root, return_uncertainty=True)
    assert spread_image.GetSpacing() == (0.3, 0.2)
    assert spread_image.GetOrigin() == (5.0, -2.0)
    assert despeckled.GetSize() == spread_image.GetSize() == sitk_image.GetSize()
    with pytest.raises(ValueError, match="needs the denoiser"):
        despeckle_array(image, "median", return_uncertainty=True)


def test_onnx_cuda_that_falls_back_says_so(tmp_path, monkeypatch):
    """A listed CUDA provider whose libraries do not load: ONNX Runtime runs on the CPU, and we say so."""
    import sys
    import types

    from usdespeckle.runtime import inference

    made = {}

    class Session:
        def __init__(self, path, options, providers):
            made["providers"] = providers

        def get_providers(self):
            return ["CPUExecutionProvider"]  # what ONNX Runtime does when CUDA fails to load

    fake = types.SimpleNamespace(
        get_available_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        SessionOptions=lambda: types.SimpleNamespace(intra_op_num_threads=0),
        InferenceSession=Session,
    )
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    with pytest.warns(RuntimeWarning, match="runs on the CPU"):
        inference._open_onnx(tmp_path / "model.onnx", "cuda")
    assert made["providers"][0] == "CUDAExecutionProvider"
    fake.get_available_providers = lambda: ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="no CUDA provider"):
        inference._open_onnx(tmp_path / "model.onnx", "cuda")
