"""The self-ensemble module and the bundle's invertible transforms against the library they mirror."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from usdespeckle.data.transforms import DivisibleReflectPadd, RobustScaleIntensityd
from usdespeckle.gan.ensemble import SelfEnsemble
from usdespeckle.gan.networks import Pix2PixUNetGenerator
from usdespeckle.runtime.slicewise import pad_to_multiple, robust_range

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _generator(seed: int = 0) -> Pix2PixUNetGenerator:
    torch.manual_seed(seed)
    return Pix2PixUNetGenerator(num_downs=4, ngf=4, norm="INSTANCE").eval()


def _mirrored_average(plain: torch.nn.Module, x: torch.Tensor, count: int) -> torch.Tensor:
    """The self-ensemble written out by hand: each mirroring of x through ``plain``, undone, averaged."""
    mirrorings = [
        lambda t: t,
        lambda t: torch.flip(t, [-1]),
        lambda t: torch.flip(t, [-2]),
        lambda t: torch.flip(t, [-2, -1]),
    ]
    mirrorings += [lambda t, m=m: m(t).transpose(-2, -1) for m in mirrorings]
    undo = mirrorings[:4] + [lambda t, m=m: m(t.transpose(-2, -1)) for m in mirrorings[:4]]
    outputs = [undo[i](plain(mirrorings[i](x))) for i in range(count)]
    return torch.stack(outputs).mean(dim=0)


@pytest.mark.parametrize("mirrorings", [1, 2, 4, 8])
def test_self_ensemble_averages_the_mirrored_passes(mirrorings: int) -> None:
    generator = _generator()
    ensemble = SelfEnsemble(generator, mirrorings).eval()
    x = torch.rand(2, 1, 32, 48)  # not square: transposed passes see 48x32
    with torch.no_grad():
        out = ensemble(x)
        torch.testing.assert_close(out, _mirrored_average(generator, x, mirrorings))
        if mirrorings > 1:
            assert float((out - generator(x)).abs().max()) > 1e-4  # the average differs from one pass
        torch.testing.assert_close(torch.jit.script(ensemble)(x), out)  # what ckpt_export writes


def test_eight_mirrorings_make_the_output_mirror_equivariant() -> None:
    ensemble = SelfEnsemble(_generator(1), 8).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        out = ensemble(x)
        torch.testing.assert_close(ensemble(torch.flip(x, [-1])), torch.flip(out, [-1]))
        torch.testing.assert_close(ensemble(torch.flip(x, [-2])), torch.flip(out, [-2]))
        torch.testing.assert_close(ensemble(x.transpose(-2, -1)), out.transpose(-2, -1))


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
