"""Make the module's icon and its demo volume (run once; the outputs are committed).

The demo volume is a speckled phantom, not a patient image: a soft-tissue background with a few
anechoic and hyperechoic round inclusions, multiplied by fully developed speckle (a Rayleigh
envelope, Goodman's model) that is correlated over a few pixels like a real point-spread function,
then log-compressed to 8 bits as a B-mode scanner does. Everything here is hand-written with numpy
and SciPy because no installed package ships a small B-mode volume (see /work/shared/FACTS.md).

Usage (from the repository root, in the project's environment):
    python SlicerDespeckle/Resources/make_resources.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

HERE = Path(__file__).resolve().parent
DEMO_PATH = HERE / "Data" / "SlicerDespeckleDemo.nrrd"
ICON_PATH = HERE / "Icons" / "SlicerDespeckle.png"


def speckled_phantom(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Return a speckled phantom as uint8, in numpy (k, j, i) order.

    Args:
        shape: ``(slices, rows, columns)``, each >= 8.
        rng: random generator for the speckle.

    Returns:
        uint8 array of ``shape``: log-compressed envelope over a 60 dB dynamic range.
    """
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    echogenicity = np.ones(shape)
    # (centre j, centre i, radius in pixels, relative echogenicity): cysts and bright inclusions
    for cj, ci, radius, level in ((30, 30, 12, 0.02), (62, 66, 14, 4.0), (70, 24, 8, 0.3), (26, 70, 7, 2.0)):
        radius_k = radius * (
            1.0 - 0.5 * np.abs(k - shape[0] / 2) / shape[0]
        )  # shrinks away from the middle slice
        echogenicity[(j - cj) ** 2 + (i - ci) ** 2 <= radius_k**2] = level
    # complex Gaussian scattering, smoothed by an axial/lateral PSF, gives Rayleigh-distributed speckle
    scatter = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    psf_sigma = (0.7, 1.2, 0.8)  # pixels along (k, j, i): axially short, laterally longer
    field = ndimage.gaussian_filter(scatter.real, psf_sigma) + 1j * ndimage.gaussian_filter(
        scatter.imag, psf_sigma
    )
    envelope = np.abs(field) * np.sqrt(echogenicity)
    depth_gain = np.exp(-0.004 * j)  # mild attenuation with depth (rows)
    db = 20.0 * np.log10(envelope * depth_gain / np.percentile(envelope, 99.9) + 1e-6)
    return np.clip((db + 60.0) / 60.0 * 255.0, 0, 255).astype(np.uint8)


def main() -> None:
    """Write the demo volume (NRRD) and the 128x128 icon (PNG)."""
    rng = np.random.default_rng(20240311)
    volume = speckled_phantom((12, 96, 96), rng)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.2, 0.2, 1.0))  # mm: in-plane (i, j) 0.2 mm, 1 mm between frames
    image.SetOrigin((-9.6, -9.6, 0.0))
    DEMO_PATH.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(DEMO_PATH), useCompression=True)

    # icon: a speckled disc whose right half is smooth, the module's before/after in one picture
    size = 128
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 64) ** 2 + (xx - 64) ** 2 <= 58**2
    speckle = np.abs(rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size)))
    speckle = ndimage.gaussian_filter(speckle, 0.8)
    grey = np.where(xx < 64, 110 * speckle / speckle.mean(), 110.0)
    grey = np.where((yy - 64) ** 2 + (xx - 44) ** 2 <= 14**2, 15.0, grey)  # a cyst across the split
    grey = np.where((yy - 64) ** 2 + (xx - 84) ** 2 <= 14**2, 15.0, grey)
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[..., :3] = np.clip(grey, 0, 255).astype(np.uint8)[..., None]
    rgba[..., 3] = np.where(disc, 255, 0)
    rgba[disc & (np.abs(xx - 64) < 1), :3] = (240, 180, 40)  # the before/after divider
    Image.fromarray(rgba, "RGBA").save(ICON_PATH)
    print(f"wrote {DEMO_PATH} ({DEMO_PATH.stat().st_size} bytes) and {ICON_PATH}")


if __name__ == "__main__":
    main()
