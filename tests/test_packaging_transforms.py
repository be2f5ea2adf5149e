"""The self-ensemble module and the bundle's invertible transforms against the library they mirror."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from usdespeckle.ensemble import SelfEnsemble
from usdespeckle.inference import pad_to_multiple, robust_range
from usdespeckle.networks import Pix2PixUNetGenerator
from usdespeckle.transforms import DivisibleReflectPadd, RobustScaleIntensityd

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _generator(seed: int = 0) -> Pix2PixUNetGenerator:
    torch.manual_seed(seed)
    return Pix2PixUNetGenerator(num_downs=4, ngf=4, norm="INSTANCE").eval()


@pytest.mark.parametrize("mirrorings", [1, 2, 4, 8])
def test_self_ensemble_is_the_generators_own_mirroring_average(mirrorings: int) -> None:
    generator = _generator()
    builtin = Pix2PixUNetGenerator(num_downs=4, ngf=4, norm="INSTANCE", test_time_flips=mirrorings).eval()
    builtin.load_state_dict(generator.state_dict())
    x = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(SelfEnsemble(generator, mirrorings).eval()(x), builtin(x))


def test_self_ensemble_state_is_the_networks_and_training_runs_one_pass() -> None:
    generator = _generator(1)
    ensemble = SelfEnsemble(_generator(2), 8)
    assert ensemble.state_dict().keys() == generator.state_dict().keys()  # no "network." prefix
    ensemble.load_state_dict(generator.state_dict())  # strict: a training model.pt loads as it is
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert float((ensemble.eval()(x) - generator(x)).abs().max()) > 1e-4
        ensemble.network.train()
        ensemble.train()
        generator.train()
        torch.manual_seed(0)
        one = ensemble(x)
        torch.manual_seed(0)
        torch.testing.assert_close(one, generator(x))  # training mode: one pass, same dropout draw
    with pytest.raises(ValueError, match="mirrorings"):
        SelfEnsemble(generator, 3)


def test_scripted_ensemble_runs_fewer_passes_by_shortening_its_list() -> None:
    generator = _generator()
    scripted = torch.jit.script(SelfEnsemble(generator, 8).eval())
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), SelfEnsemble(generator, 8).eval()(x))
        scripted.mirrorings = scripted.mirrorings[:2]  # what load_denoiser(passes=2) does
        torch.testing.assert_close(scripted(x), SelfEnsemble(generator, 2).eval()(x))


def test_robust_scaling_is_the_librarys_and_inverts(rng: np.random.Generator) -> None:
    # over a million voxels: the library samples with a stride in SimpleITK's (k, j, i) order
    sitk_order = rng.gamma(1.5, 30.0, (20, 230, 240)).astype(np.float32)  # (k, j, i)
    monai_order = MetaTensor(np.ascontiguousarray(sitk_order.T)[None])  # (C, i, j, k) as LoadImaged gives
    transform = RobustScaleIntensityd("image")
    out = transform({"image": monai_order})
    lo, hi = robust_range(sitk_order)
    expected = np.clip((sitk_order - np.float32(lo)) / np.float32(hi - lo), 0, 1)
    np.testing.assert_array_equal(out["image"][0].numpy().T, expected)
    restored = transform.inverse(out)["image"][0].numpy().T
    inside = (sitk_order >= lo) & (sitk_order <= hi)  # clipped values cannot come back
    np.testing.assert_allclose(restored[inside], sitk_order[inside], rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="constant"):
        transform({"image": MetaTensor(np.full((1, 8, 8), 3.0, np.float32))})
    with pytest.raises(ValueError, match="NaN"):
        transform({"image": MetaTensor(np.full((1, 8, 8), np.nan, np.float32))})


@pytest.mark.parametrize("shape", [(9, 12), (21, 37), (32, 48), (8, 100)])
def test_reflect_padding_is_the_librarys_at_any_size_and_crops_back(shape, rng) -> None:
    image = rng.uniform(0, 1, shape).astype(np.float32)
    padder = DivisibleReflectPadd("image", k=16)
    out = padder({"image": MetaTensor(image[None])})
    expected, (rows, cols) = pad_to_multiple(image[None], 16)
    np.testing.assert_array_equal(out["image"][0].numpy(), expected[0])
    # Invertd with the preprocessing crops a prediction back to the input's size
    preprocessing = Compose([padder])
    data = preprocessing({"image": MetaTensor(image[None])})
    data["pred"] = data["image"] * 2.0
    inverted = Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False)(data)
    np.testing.assert_allclose(inverted["pred"][0].numpy(), image * 2.0)
    assert expected[0, rows, cols].shape == shape


def test_reflect_padding_leaves_the_slice_axis_and_refuses_tiny_slices(rng) -> None:
    volume = MetaTensor(rng.uniform(0, 1, (1, 20, 30, 3)).astype(np.float32))
    out = DivisibleReflectPadd("image", k=[16, 16, 1])({"image": volume})
    assert tuple(out["image"].shape) == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="at least 8"):
        DivisibleReflectPadd("image", k=[16, 16, 1])(
            {"image": MetaTensor(np.zeros((1, 5, 30, 3), np.float32))}
        )
