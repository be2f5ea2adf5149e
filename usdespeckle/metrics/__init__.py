"""Image-quality metrics: with a reference (reference.py) and for real scans without one (real.py).
Every metric is importable from here (``from usdespeckle import metrics``). Imports the layers
below only.
"""

from __future__ import annotations

from usdespeckle.metrics.real import (
    Fidelity,
    RatioImageQuality,
    box_mask,
    echogenicity_fidelity,
    ratio_image_quality,
    temporal_flicker,
)
from usdespeckle.metrics.reference import (
    affine_fit,
    cnr,
    edge_preservation_index,
    enl,
    gcnr,
    psnr,
    psnr_affine,
    region_contrast,
    speckle_snr,
    ssim,
    ssim_affine,
)

__all__ = [
    "Fidelity",
    "RatioImageQuality",
    "affine_fit",
    "box_mask",
    "cnr",
    "echogenicity_fidelity",
    "edge_preservation_index",
    "enl",
    "gcnr",
    "psnr",
    "psnr_affine",
    "ratio_image_quality",
    "region_contrast",
    "speckle_snr",
    "ssim",
    "ssim_affine",
    "temporal_flicker",
]
