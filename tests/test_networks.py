"""Tests of the pix2pix U-Net generator and the 70x70 PatchGAN configuration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from usdespeckle.gan.networks import Pix2PixUNetGenerator, patchgan_discriminator


def pix2pix_unet_parameters(in_channels: int, out_channels: int, num_downs: int, ngf: int) -> int:
    """Parameter count of pix2pix's UnetGenerator (batch norm), from its block definitions.

    Each UnetSkipConnectionBlock(outer, inner) has a 4x4 down conv (outer_or_input -> inner, no bias with
    batch norm), a 4x4 transposed up conv (inner or 2*inner -> outer), batch norms with 2 parameters per
    channel, and the outermost up conv has a bias.
    """
    blocks = [(ngf * 8, ngf * 8, "innermost")]
    blocks += [(ngf * 8, ngf * 8, "middle")] * (num_downs - 5)
    blocks += [(ngf * 4, ngf * 8, "middle"), (ngf * 2, ngf * 4, "middle"), (ngf, ngf * 2, "middle")]
    total = 0
    for outer, inner, kind in blocks:
        down = outer * inner * 16
        if kind == "innermost":
            total += down + inner * outer * 16 + 2 * outer
        else:
            total += down + 2 * inner + 2 * inner * outer * 16 + 2 * outer
    # outermost: input -> ngf down conv (no bias), 2*ngf -> output up conv with bias
    total += in_channels * ngf * 16 + 2 * ngf * out_channels * 16 + out_channels
    return total


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_unet_256_parameter_count_matches_pix2pix() -> None:
    assert pix2pix_unet_parameters(3, 3, 8, 64) == 54_413_955  # the reference implementation's unet_256
    assert n_params(Pix2PixUNetGenerator(in_channels=3, out_channels=3, num_downs=8, ngf=64)) == 54_413_955
    assert n_params(Pix2PixUNetGenerator(num_downs=8, ngf=64)) == pix2pix_unet_parameters(1, 1, 8, 64)
    for num_downs, ngf in [(7, 32), (8, 16), (6, 8)]:
        assert n_params(Pix2PixUNetGenerator(num_downs=num_downs, ngf=ngf)) == pix2pix_unet_parameters(
            1, 1, num_downs, ngf
        )


def test_bottleneck_is_1x1_for_256_with_8_downsamplings() -> None:
    net = Pix2PixUNetGenerator(num_downs=8, ngf=4).eval()
    shapes = []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[2:])))
    with torch.no_grad():
        net(torch.rand(1, 1, 256, 256))
    assert len(shapes) == 8
    assert shapes[-1] == (1, 1)
    assert shapes[0] == (128, 128)


def test_maps_unit_range_to_unit_range_same_shape() -> None:
    net = Pix2PixUNetGenerator(num_downs=4, ngf=8).eval()
    x = torch.cat([torch.zeros(1, 1, 32, 48), torch.ones(1, 1, 32, 48), torch.rand(1, 1, 32, 48)])
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape
    assert y.dtype == torch.float32
    assert float(y.min()) >= 0.0
    assert float(y.max()) <= 1.0
    assert float(y.std()) > 0  # not a constant map


def test_size_not_multiple_raises_with_sizes() -> None:
    net = Pix2PixUNetGenerator(num_downs=4, ngf=8)
    with pytest.raises(ValueError, match=r"\[40, 48\].*16"):
        net(torch.rand(1, 1, 40, 48))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_downs": 1},
        {"ngf": 0},
        {"dropout": 1.0},
    ],
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    (name,) = kwargs
    with pytest.raises(ValueError, match=f"^{name} must .*got {kwargs[name]}"):  # names what is wrong
        Pix2PixUNetGenerator(**kwargs)


def test_pix2pix_initialisation_and_dropout_layout() -> None:
    net = Pix2PixUNetGenerator(num_downs=8, ngf=16)
    conv_w = torch.cat(
        [m.weight.flatten() for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    )
    bn_w = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(float(conv_w.mean())) < 1e-3
    assert float(conv_w.std()) == pytest.approx(0.02, rel=0.05)
    assert float(bn_w.mean()) == pytest.approx(1.0, abs=0.01)
    assert float(bn_w.std()) == pytest.approx(0.02, rel=0.2)
    dropouts = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 8 - 5
    assert all(m.p == 0.5 for m in dropouts)
    # batch norm: convolutions without bias except the last up convolution; instance norm: with bias
    assert (
        sum(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)) == 1
    )
    inst = Pix2PixUNetGenerator(num_downs=5, ngf=4, norm="INSTANCE")
    assert all(m.bias is not None for m in inst.modules() if isinstance(m, nn.Conv2d))


def test_torchscript_round_trip(tmp_path) -> None:
    net = Pix2PixUNetGenerator(num_downs=4, ngf=8).eval()
    torch.jit.script(net).save(str(tmp_path / "g.ts"))
    loaded = torch.jit.load(str(tmp_path / "g.ts"))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))


def test_patchgan_is_70x70() -> None:
    disc = patchgan_discriminator(in_channels=2).eval()
    x = torch.rand(1, 2, 256, 256, requires_grad=True)
    out = disc(x)[-1]
    assert out.shape == (1, 1, 30, 30)
    out[0, 0, 15, 15].backward()
    touched = (x.grad.abs().sum(dim=(0, 1)) > 0).nonzero()
    height = int(touched[:, 0].max() - touched[:, 0].min()) + 1
    width = int(touched[:, 1].max() - touched[:, 1].min()) + 1
    assert (height, width) == (70, 70)


def test_resize_upsampling_has_no_transposed_convolution_and_no_checkerboard() -> None:
    torch.manual_seed(0)
    resize = Pix2PixUNetGenerator(ngf=4, num_downs=4, norm="INSTANCE", upsample="resize").eval()
    deconv = Pix2PixUNetGenerator(ngf=4, num_downs=4, norm="INSTANCE", upsample="deconv").eval()
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in resize.modules())
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in deconv.modules()) == 4
    rows, cols = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    x = (0.2 + 0.6 * rows * cols)[None, None]  # a smooth input: any period-2 pattern comes from the network

    def period_two_power(net: nn.Module) -> float:
        with torch.no_grad():
            y = net(x)[0, 0]
        spectrum = torch.fft.fft2(y - y.mean()).abs() ** 2
        return float(spectrum[32, :].sum() + spectrum[:, 32].sum()) / float(spectrum.sum() + 1e-12)

    # with random weights a transposed convolution already paints a checkerboard on a flat image
    assert period_two_power(deconv) > 10 * period_two_power(resize)
    with pytest.raises(ValueError, match="upsample"):
        Pix2PixUNetGenerator(ngf=4, num_downs=4, upsample="bilinear-ish")
