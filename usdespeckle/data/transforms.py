"""Invertible MONAI dict transforms that give the bundle's inference exactly the library's mapping.

``usdespeckle.runtime.inference.despeckle_array`` maps a volume's intensities to [0, 1] with a robust range
(:func:`usdespeckle.runtime.slicewise.robust_range`: 0.5 and 99.5 percentiles, clipped), pads each slice by
numpy's reflection to a multiple of the network's divisor, and maps the output back to the input's
units. The bundle's ``inference.json`` does the same with these two transforms and MONAI's ``Invertd``
(which crops and maps back in one step), so both doors give the same output.

Written here because MONAI has no invertible counterpart: ``ScaleIntensityRangePercentilesd`` keeps
no record to invert, and ``DivisiblePadd(mode="reflect")`` pads with torch, which refuses pads wider
than the image ("Padding size should be less than the corresponding input dimension"), so slices
under about half the divisor could not be processed.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform
from monai.utils import convert_to_dst_type, convert_to_numpy, ensure_tuple_rep

from usdespeckle.runtime.options import PERCENTILES
from usdespeckle.runtime.slicewise import MIN_SLICE_SIZE, IntensityMap, robust_range

__all__ = ["DivisibleReflectPadd", "RobustScaleIntensityd"]


class RobustScaleIntensityd(MapTransform, InvertibleTransform):
    """Map intensities to [0, 1] by the library's robust range; the inverse maps back.

    The range is :func:`usdespeckle.runtime.slicewise.robust_range` of the whole image (all channels):
    the ``percentiles`` (0.5, 99.5 by default), or min..max where those coincide; volumes over a
    million values are sampled with the library's stride, in SimpleITK's voxel order. Values outside
    it are clipped. The inverse (``Invertd`` on the prediction) applies ``y * (high - low) + low``;
    both directions are the library's :class:`usdespeckle.runtime.slicewise.IntensityMap`.

    Args:
        keys: keys of the images to map.
        percentiles: low and high percentile, in [0, 100].
        allow_missing_keys: do not raise for missing keys.

    Raises:
        ValueError: (when called) an image is constant or holds NaN or infinite values.
    """

    def __init__(
        self,
        keys: KeysCollection,
        percentiles: Sequence[float] = PERCENTILES,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(percentiles) != 2 or not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
            raise ValueError(
                f"percentiles must be (low, high) with 0 <= low < high <= 100, got {percentiles}"
            )
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            values = convert_to_numpy(image)
            if not np.isfinite(values).all():
                raise ValueError(f"{_name(image)} holds NaN or infinite values; fix or mask them first")
            # MONAI's readers give (C, i, j, k), SimpleITK's array (k, j, i): reversed axes give the
            # library's order, so robust_range's strided sample of large volumes picks the same voxels
            low, high = robust_range(values.T, self.percentiles)
            if not high > low:
                raise ValueError(f"{_name(image)} is constant ({low}): nothing to despeckle")
            mapped = IntensityMap(low, high).to_unit(values.astype(np.float32))
            d[key] = convert_to_dst_type(mapped, image, dtype=torch.float32)[0]
            self.push_transform(d, key, extra_info={"low": low, "high": high})
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            info = self.pop_transform(d, key)["extra_info"]
            d[key] = IntensityMap(info["low"], info["high"]).from_unit(d[key])
        return d


class DivisibleReflectPadd(MapTransform, InvertibleTransform):
    """Pad spatial sizes to multiples of ``k`` by numpy's reflection, symmetrically; the inverse crops.

    The split is the library's (:func:`usdespeckle.runtime.slicewise.pad_to_multiple`): ``pad // 2`` before,
    the rest after. numpy's ``reflect`` repeats the reflection for pads wider than the image, so any
    slice of at least ``MIN_SLICE_SIZE`` (8) pixels a side works. The image's affine is left as it is:
    the prediction is cropped back by the inverse before it is saved.

    Args:
        keys: keys of channel-first images.
        k: the divisor per spatial dimension (an int for all); 1 leaves a dimension alone (the slice
            axis of a volume).
        allow_missing_keys: do not raise for missing keys.

    Raises:
        ValueError: (when called) a padded side is under 8 pixels.
    """

    def __init__(
        self, keys: KeysCollection, k: int | Sequence[int], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.k = k

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            spatial = tuple(image.shape[1:])
            divisors = ensure_tuple_rep(self.k, len(spatial))
            small = [s for s, k in zip(spatial, divisors, strict=True) if k > 1 and s < MIN_SLICE_SIZE]
            if small:
                raise ValueError(
                    f"{_name(image)}: slices are {spatial} pixels; each in-plane side needs at least "
                    f"{MIN_SLICE_SIZE} (choose another slice_axis)"
                )
            pads = [(0, 0)] + [
                ((-s % k) // 2, (-s % k) - (-s % k) // 2) for s, k in zip(spatial, divisors, strict=True)
            ]
            padded = np.pad(convert_to_numpy(image), pads, mode="reflect")
            d[key] = convert_to_dst_type(padded, image)[0]
            self.push_transform(d, key, extra_info={"pads": pads})
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pads = self.pop_transform(d, key)["extra_info"]["pads"]
            crop = tuple(
                slice(before, size - after) for (before, after), size in zip(pads, d[key].shape, strict=True)
            )
            d[key] = d[key][crop]
        return d


def _name(image: Any) -> str:
    """The image's file name for messages, if MONAI recorded one."""
    if isinstance(image, MetaTensor):
        return str(image.meta.get("filename_or_obj", "image"))
    return "image"
