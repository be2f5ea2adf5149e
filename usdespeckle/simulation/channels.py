"""A 2D function on each channel of a channel-first image: the core of simulation/'s MONAI dict transforms."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
from monai.utils import convert_to_dst_type, convert_to_numpy


def map_channels(img: Any, fn: Callable[[np.ndarray], np.ndarray], key: Hashable, transform: str) -> Any:
    """``fn`` on each channel of ``img``, returned as float32 of ``img``'s type (numpy, torch, MetaTensor).

    Args:
        img: channel-first ``(C, H, W)`` image.
        fn: maps one ``(H, W)`` float32 channel to an array of the same shape.
        key: the data key, for the error message.
        transform: the transform's name, for the error message.

    Raises:
        ValueError: ``img`` is not channel-first 3D data (the message says to add EnsureChannelFirstd).
    """
    arr = convert_to_numpy(img, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(
            f"{transform} expects channel-first (C, H, W) data for key {key!r}; got shape {arr.shape}. "
            "Add EnsureChannelFirstd first."
        )
    out = np.stack([fn(channel) for channel in arr]).astype(np.float32)
    return convert_to_dst_type(out, dst=img, dtype=out.dtype)[0]
