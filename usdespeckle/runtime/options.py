"""Every user-facing option of the library, declared once; the standard library only.

The front doors (the ``usdespeckle`` command, the Slicer module, the MONAI Label app, the bundle's
configs) and the library itself read their choices and defaults from here, so a new filter or
backend is added in one place. Nothing here imports numpy or torch: the Slicer module imports this
file before it knows which packages are installed.
"""

from __future__ import annotations

__all__ = [
    "AXES",
    "BACKENDS",
    "BACKEND_NAMES",
    "CLASSICAL_METHODS",
    "DEFAULT_AXIS",
    "DEFAULT_BACKEND",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_DEVICE",
    "DEFAULT_METHOD",
    "DEFAULT_PASSES",
    "DEFAULT_STRENGTH",
    "DEVICES",
    "MAX_BATCH_SIZE",
    "MAX_VOXELS",
    "METHODS",
    "MIRRORINGS",
    "MODEL_BACKENDS",
    "MODEL_FILES",
    "PASSES",
    "PERCENTILES",
]

#: Classical despecklers, each a ``despeckle_<name>`` function of ``usdespeckle.runtime.filters`` (its
#: ``FILTERS`` registry is built from this list, in this order).
CLASSICAL_METHODS: tuple[str, ...] = (
    "median",
    "lee",
    "frost",
    "kuan",
    "srad",
    "obnlm",
    "bm3d",
    "mulog",
    "nlm",
    "tv",
)
#: Every method a front door accepts: the shipped denoiser first, then the classical filters.
METHODS: tuple[str, ...] = ("denoiser", *CLASSICAL_METHODS)
DEFAULT_METHOD = "denoiser"

#: Numbers of mirrorings of each slice the denoiser may average (a self-ensemble): the first n of
#: :data:`MIRRORINGS`. 1 is the shipped setting; time grows linearly with passes.
PASSES: tuple[int, ...] = (1, 2, 4, 8)
DEFAULT_PASSES = 1
#: The 8 mirrorings of a 2D slice, as (transpose the last two axes first?, axes to flip): identity,
#: left-right, up-down, both, then the same four of the transposed slice.
MIRRORINGS: tuple[tuple[bool, tuple[int, ...]], ...] = tuple(
    (transpose, flips) for transpose in (False, True) for flips in ((), (-1,), (-2,), (-2, -1))
)

#: Runtimes that run the exported denoiser, and its file inside the bundle for each.
MODEL_BACKENDS: tuple[str, ...] = ("torch", "onnx")
MODEL_FILES: dict[str, str] = {"torch": "models/model.ts", "onnx": "models/model.onnx"}
#: What a user may ask for: ``auto`` is ONNX Runtime when installed and exported, else TorchScript.
BACKENDS: tuple[str, ...] = ("auto", *MODEL_BACKENDS)
DEFAULT_BACKEND = "auto"
#: Display names of the runtimes.
BACKEND_NAMES: dict[str, str] = {"torch": "TorchScript", "onnx": "ONNX Runtime"}

DEVICES: tuple[str, ...] = ("cpu", "cuda")
DEFAULT_DEVICE = "cpu"

#: Numpy axes of SimpleITK's ``GetArrayFromImage`` array, ordered ``(k, j, i)``, that a volume may be
#: sliced along; 0 gives the frames of a cine loop (axial slices of a usual volume).
AXES: tuple[int, ...] = (0, 1, 2)
DEFAULT_AXIS = 0
#: Slices per model call: memory grows with it (one batch of float32 slices), speed barely does.
DEFAULT_BATCH_SIZE = 8
#: Largest batch a server request may ask for.
MAX_BATCH_SIZE = 256
#: Blend in [0, 1] between the input (0) and the despeckled result (1).
DEFAULT_STRENGTH = 1.0

#: Low and high percentiles of the robust min-max mapping of intensities to [0, 1].
PERCENTILES: tuple[float, float] = (0.5, 99.5)

#: Largest input accepted, in values (voxels x colour components) declared by the file's header,
#: checked before reading: 2**28 is 1 GiB as float32. ``--max-voxels`` and the server's
#: ``max_voxels`` change it.
MAX_VOXELS = 2**28
