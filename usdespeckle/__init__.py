"""usdespeckle: ultrasound despeckling with pix2pix GANs and cross-modality transfer learning.

The importable core of SlicerDespeckle: speckle models, low-level maps, physics-based B-mode
simulation, datasets, the pix2pix trainer, classical despecklers, metrics, volume I/O and slice-wise
inference. The MONAI bundle, the Slicer module, the MONAI Label app and the ``usdespeckle`` command
are thin front doors over it.
"""

from __future__ import annotations

__version__ = "1.0.0"
