"""The pix2pix U-Net generator, written MONAI-style.

Both models of the method (the ``simulator``, low-level map -> B-mode, and the ``denoiser``, B-mode ->
clean image) use this generator. The discriminator is MONAI's
:class:`monai.networks.nets.PatchDiscriminator`; :func:`patchgan_discriminator` configures it as the
70x70 PatchGAN of pix2pix.

References:
    Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks", CVPR 2017,
    doi:10.1109/CVPR.2017.632.
    Vieira et al., "Ultrasound Despeckling With GANs and Cross Modality Transfer Learning",
    IEEE Access 12:45811, 2024, doi:10.1109/ACCESS.2024.3381630.
"""

from __future__ import annotations

import torch
from monai.networks.layers import Act, Conv, Norm, get_act_layer, get_norm_layer, split_args
from monai.networks.nets import PatchDiscriminator
from monai.networks.utils import normal_init
from torch import nn

__all__ = [
    "UPSAMPLE_MODES",
    "Pix2PixUNetGenerator",
    "ResidualUNetDenoiser",
    "UNetSkipBlock",
    "patchgan_discriminator",
]

UPSAMPLE_MODES = ("deconv", "resize")


class UNetSkipBlock(nn.Module):
    """One level of the pix2pix U-Net: down, the nested block, up, and the skip connection.

    A block halves the spatial size with a stride-2 4x4 convolution, runs ``submodule`` (the deeper
    levels, or nothing at the bottleneck), doubles the size back with a stride-2 4x4 transposed
    convolution and concatenates its input to its output (except at the outermost level).

    Args:
        spatial_dims: number of spatial dimensions (2 for images).
        outer_channels: channels of the block's input and of its up-path output.
        inner_channels: channels after the down convolution.
        submodule: the nested deeper block, or None at the bottleneck (innermost level).
        in_channels: channels of the network input at the outermost level; defaults to outer_channels.
        outermost: whether this is the top level (no norm, tanh out, no skip concatenation).
        norm: normalisation type and arguments, as MONAI's Norm factory names them ("BATCH", "INSTANCE").
        dropout: dropout probability after the up path (pix2pix uses 0.5 in the deep middle blocks).
        upsample: "deconv" (pix2pix: stride-2 4x4 transposed convolution) or "resize" (nearest-neighbour
            2x upsampling, then a 3x3 convolution: Odena, Dumoulin and Olah, "Deconvolution and
            checkerboard artifacts", Distill 2016, doi:10.23915/distill.00003). A transposed
            convolution whose kernel size is not divisible by its stride overlaps unevenly and paints a
            checkerboard; resize-convolution cannot.
    """

    def __init__(
        self,
        spatial_dims: int,
        outer_channels: int,
        inner_channels: int,
        submodule: UNetSkipBlock | None = None,
        in_channels: int | None = None,
        outermost: bool = False,
        norm: str | tuple = Norm.BATCH,
        dropout: float = 0.0,
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES} (got {upsample!r}).")
        self.outermost = outermost
        innermost = submodule is None
        in_channels = outer_channels if in_channels is None else in_channels
        norm_name, _ = split_args(norm)
        # pix2pix: convolutions carry a bias only when the following norm has no affine shift (instance norm).
        use_bias = str(norm_name).lower() != "batch"
        conv_type = Conv[Conv.CONV, spatial_dims]
        convtrans_type = Conv[Conv.CONVTRANS, spatial_dims]

        def up_conv_of(channels_in: int, channels_out: int, bias: bool) -> nn.Module:
            if upsample == "deconv":
                return convtrans_type(
                    channels_in, channels_out, kernel_size=4, stride=2, padding=1, bias=bias
                )
            return nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"),
                conv_type(channels_in, channels_out, kernel_size=3, stride=1, padding=1, bias=bias),
            )

        down_conv = conv_type(in_channels, inner_channels, kernel_size=4, stride=2, padding=1, bias=use_bias)
        down_act = get_act_layer((Act.LEAKYRELU, {"negative_slope": 0.2, "inplace": True}))
        up_act = get_act_layer((Act.RELU, {"inplace": True}))
        # the up path sees the concatenated (skip + deeper) features, except at the bottleneck
        up_in = inner_channels if innermost else inner_channels * 2

        layers: list[nn.Module]
        if outermost:
            up_conv = up_conv_of(up_in, outer_channels, True)
            layers = [down_conv, submodule, up_act, up_conv, nn.Tanh()]  # type: ignore[list-item]
        elif innermost:
            up_conv = up_conv_of(up_in, outer_channels, use_bias)
            up_norm = get_norm_layer(norm, spatial_dims=spatial_dims, channels=outer_channels)
            layers = [down_act, down_conv, up_act, up_conv, up_norm]
        else:
            up_conv = up_conv_of(up_in, outer_channels, use_bias)
            down_norm = get_norm_layer(norm, spatial_dims=spatial_dims, channels=inner_channels)
            up_norm = get_norm_layer(norm, spatial_dims=spatial_dims, channels=outer_channels)
            layers = [down_act, down_conv, down_norm, submodule, up_act, up_conv, up_norm]  # type: ignore[list-item]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the level; inner levels return ``cat(x, level(x))`` along channels."""
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], dim=1)


class Pix2PixUNetGenerator(nn.Module):
    """The pix2pix "unet_256" generator, mapping images in [0, 1] to images in [0, 1].

    ``num_downs`` stride-2 levels: with 8 downsamplings a 256x256 image becomes 1x1 at the
    bottleneck, with 7 a 128x128 image does. Level ``i`` (0 at the top) has ``ngf * min(2**i, 8)``
    channels; as in pix2pix, the levels between the fourth and the bottleneck (512 channels at ngf=64)
    use dropout in their up path. At ngf=64, num_downs=8 and 3 -> 3 channels this is exactly the
    reference ``unet_256`` (54,413,955 parameters); 1 -> 1 channels has 54,407,809.

    The input is scaled from [0, 1] to [-1, 1] inside, the output goes through tanh and back to [0, 1].
    The network is one pass; the test-time self-ensemble over mirrorings of the input is a wrapper
    around it (:class:`usdespeckle.gan.ensemble.SelfEnsemble`), as MONAI keeps test-time augmentation
    apart from networks.

    Args:
        spatial_dims: number of spatial dimensions (2 for images; 3 works but is not used).
        in_channels: input channels (1 for grey images).
        out_channels: output channels (1 for grey images).
        num_downs: number of stride-2 levels, >= 2. H and W must be multiples of ``2**num_downs``.
        ngf: channels of the first level (64 in pix2pix).
        norm: normalisation, "BATCH" (pix2pix default) or "INSTANCE", or a MONAI (name, args) tuple.
        dropout: dropout probability in the deep middle levels (0.5 in pix2pix; 0 disables it).
        upsample: "deconv" (pix2pix's transposed convolutions) or "resize" (upsampling then
            convolution, free of checkerboard artefacts), see :class:`UNetSkipBlock`.

    Raises:
        ValueError: num_downs < 2, ngf < 1 or dropout outside [0, 1).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        num_downs: int = 8,
        ngf: int = 64,
        norm: str | tuple = Norm.BATCH,
        dropout: float = 0.5,
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        if num_downs < 2:
            raise ValueError(f"num_downs must be at least 2 (got {num_downs}); pix2pix's unet_256 uses 8.")
        if ngf < 1:
            raise ValueError(f"ngf must be a positive number of channels (got {ngf}); pix2pix uses 64.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1) (got {dropout}); pix2pix uses 0.5.")
        self.spatial_dims = spatial_dims
        self.num_downs = num_downs
        self.divisor = 2**num_downs

        def channels(level: int) -> int:
            return ngf * min(2**level, 8)

        # build from the bottleneck outwards: level num_downs-1 is innermost, level 0 outermost
        block: UNetSkipBlock | None = None
        for level in range(num_downs - 1, 0, -1):
            deep_middle = channels(level - 1) == channels(level) and block is not None
            block = UNetSkipBlock(
                spatial_dims,
                outer_channels=channels(level - 1),
                inner_channels=channels(level),
                submodule=block,
                norm=norm,
                dropout=dropout if deep_middle else 0.0,
                upsample=upsample,
            )
        self.model = UNetSkipBlock(
            spatial_dims,
            outer_channels=out_channels,
            inner_channels=channels(0),
            submodule=block,
            in_channels=in_channels,
            outermost=True,
            norm=norm,
            upsample=upsample,
        )
        # pix2pix initialisation: conv weights N(0, 0.02), batch-norm weights N(1, 0.02), biases 0
        self.apply(normal_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Translate a batch of images.

        Args:
            x: (B, C_in, H, W) float tensor in [0, 1]; H and W multiples of ``2**num_downs``.

        Returns:
            (B, C_out, H, W) float tensor in [0, 1].

        Raises:
            ValueError: a spatial size is not a multiple of ``2**num_downs``.
        """
        spatial = x.shape[2:]
        for size in spatial:
            if size % self.divisor != 0:
                raise ValueError(
                    f"input spatial size {list(spatial)} must be multiples of 2**num_downs = {self.divisor}; "
                    "pad the image (e.g. monai.transforms.DivisiblePad, mode='reflect') and crop the output."
                )
        return (self.model(x * 2.0 - 1.0) + 1.0) * 0.5


def patchgan_discriminator(
    in_channels: int = 2, channels: int = 64, num_layers_d: int = 3, norm: str | tuple = Norm.BATCH
) -> PatchDiscriminator:
    """MONAI's PatchDiscriminator configured as pix2pix's 70x70 PatchGAN (``n_layers=3``, ndf=64).

    Conditional: the input is ``cat(image, label_or_prediction)``, hence ``in_channels=2`` for grey
    images. The bundle configs build the same object directly from JSON.

    Args:
        in_channels: channels of the concatenated input (2 for one grey input and one grey output).
        channels: filters of the first layer (ndf, 64 in pix2pix), doubled per layer.
        num_layers_d: layers after the first (3 gives the 70x70 receptive field).
        norm: normalisation, "BATCH" as pix2pix.

    Returns:
        The discriminator; its forward returns a list whose last element is the (B, 1, h, w) logit map.
    """
    return PatchDiscriminator(
        spatial_dims=2,
        channels=channels,
        in_channels=in_channels,
        out_channels=1,
        num_layers_d=num_layers_d,
        kernel_size=4,
        norm=norm,
        padding=1,
    )


class ResidualUNetDenoiser(nn.Module):
    """A U-Net built for denoising: MONAI's BasicUNet predicting the speckle, subtracted from the input.

    Each level has two 3x3 convolutions (MONAI :class:`~monai.networks.nets.BasicUNet`), upsampling is
    interpolation followed by convolution (no checkerboard), and the network learns the residual
    ``output = input + body(input)`` (the global residual of DnCNN and DRUNet: a near-identity is the
    easy starting point, and grey levels the body leaves alone pass through unchanged).

    References:
        Zhang et al., "Beyond a Gaussian Denoiser: Residual Learning of Deep CNN for Image
        Denoising", IEEE TIP 2017, doi:10.1109/TIP.2017.2662206.

    Args:
        spatial_dims: number of spatial dimensions (2 for images).
        features: channels of the five levels and of the last convolution, as BasicUNet's
            ``features`` (six numbers).
        norm: normalisation of every convolution, a MONAI name or (name, args); "batch" by default.

    The input and output are (B, 1, H, W) in [0, 1] (the output is not clipped while training; the
    library clips what it returns). H and W must be multiples of 16 (:attr:`divisor`).
    """

    divisor = 16

    def __init__(
        self,
        spatial_dims: int = 2,
        features: tuple[int, ...] = (32, 32, 64, 128, 256, 32),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        from monai.networks.nets import BasicUNet

        self.body = BasicUNet(
            spatial_dims=spatial_dims,
            in_channels=1,
            out_channels=1,
            features=tuple(features),
            norm=norm,
            upsample="nontrainable",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Despeckle a batch: (B, 1, H, W) in [0, 1] -> (B, 1, H, W), H and W multiples of 16."""
        return x + self.body(x)
