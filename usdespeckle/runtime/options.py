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
    "BM3D_LICENCE",
    "CLASSICAL_METHODS",
    "DEFAULT_AXIS",
    "DEFAULT_BACKEND",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_DEVICE",
    "DEFAULT_METHOD",
    "DEFAULT_PASSES",
    "DEFAULT_STRENGTH",
    "DEVICES",
    "IGTL_DEVICE_NAME_BYTES",
    "MAX_BATCH_SIZE",
    "MAX_VOXELS",
    "METHODS",
    "METHOD_DESCRIPTIONS",
    "METHOD_EXTRAS",
    "METHOD_REFERENCES",
    "MIRRORINGS",
    "MODEL_BACKENDS",
    "MODEL_FILES",
    "PASSES",
    "PERCENTILES",
    "STREAM_BACKEND",
    "STREAM_DEVICE",
    "STREAM_MAX_MESSAGE_BYTES",
    "STREAM_OUTPUT_DEVICE",
    "STREAM_REPLAY_FPS",
    "STREAM_SERVE_PORT",
    "STREAM_SOURCE_PORT",
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
#: The licence of the ``bm3d`` package (and the ``bm4d`` it pulls), which BM3D and MuLoG need, in
#: one line: shown before it is installed and in the error when it is missing.
BM3D_LICENCE = (
    "bm3d (Tampere University) is licensed for non-commercial use only and may not be redistributed "
    "without the authors' consent"
)
#: Methods that need a pip extra beyond the core install (``pip install 'usdespeckle[<extra>]'``),
#: because its package's licence keeps it out of the core install.
METHOD_EXTRAS: dict[str, str] = {"bm3d": "bm3d", "mulog": "bm3d"}

#: Every method a front door accepts: the shipped denoiser first, then the classical filters.
METHODS: tuple[str, ...] = ("denoiser", *CLASSICAL_METHODS)
DEFAULT_METHOD = "denoiser"
#: One line per method saying what it does, shown beside the method choice (the Slicer panel).
METHOD_DESCRIPTIONS: dict[str, str] = {
    "denoiser": "pix2pix network trained on simulated and real speckle; keeps edges, fast with ONNX Runtime",
    "median": "median of a 5 x 5 window: the simple baseline; rounds corners",
    "lee": "Lee's local-statistics filter: smooths where the local variation is speckle-like",
    "frost": "Frost's filter: an exponential kernel that narrows at edges",
    "kuan": "Kuan's adaptive filter: Lee's filter without its first-order approximation",
    "srad": "speckle-reducing anisotropic diffusion: smooths along structures, not across",
    "obnlm": "Bayesian non-local means with the Pearson distance, made for ultrasound speckle",
    "bm3d": "BM3D on the log image with the speckle's spectrum; strong, slow (non-commercial licence)",
    "mulog": "MuLoG: BM3D inside an ADMM on the log image; slow (non-commercial licence)",
    "nlm": "scikit-image's non-local means (fast mode), its noise level estimated from the image",
    "tv": "total-variation denoising (Chambolle): flat regions, sharp edges, some cartoon look",
}
#: The paper each method comes from (shown as a tooltip).
METHOD_REFERENCES: dict[str, str] = {
    "denoiser": "Vieira, G. et al. (2024). Ultrasound despeckling with GANs and cross modality transfer "
    "learning. IEEE Access 12:45811-45823.",
    "median": "Huang, T. S., Yang, G. J., Tang, G. Y. (1979). A fast two-dimensional median filtering "
    "algorithm. IEEE TASSP 27(1):13-18. DOI:10.1109/TASSP.1979.1163188",
    "lee": "Lee, J.-S. (1980). Digital image enhancement and noise filtering by use of local statistics. "
    "IEEE TPAMI 2(2):165-168. DOI:10.1109/TPAMI.1980.4766994",
    "frost": "Frost, V. S. et al. (1982). A model for radar images and its application to adaptive digital "
    "filtering of multiplicative noise. IEEE TPAMI 4(2):157-166. DOI:10.1109/TPAMI.1982.4767223",
    "kuan": "Kuan, D. T. et al. (1985). Adaptive noise smoothing filter for images with signal-dependent "
    "noise. IEEE TPAMI 7(2):165-177. DOI:10.1109/TPAMI.1985.4767641",
    "srad": "Yu, Y., Acton, S. T. (2002). Speckle reducing anisotropic diffusion. IEEE TIP 11(11):1260-1270. "
    "DOI:10.1109/TIP.2002.804276",
    "obnlm": "Coupe, P. et al. (2009). Nonlocal means-based speckle filtering for ultrasound images. "
    "IEEE TIP 18(10):2221-2229. DOI:10.1109/TIP.2009.2024064",
    "bm3d": "Dabov, K. et al. (2007). Image denoising by sparse 3-D transform-domain collaborative "
    "filtering. IEEE TIP 16(8):2080-2095. DOI:10.1109/TIP.2007.901238",
    "mulog": "Deledalle, C.-A. et al. (2017). MuLoG, or how to apply Gaussian denoisers to multi-channel "
    "SAR speckle reduction? IEEE TIP 26(9):4389-4403. DOI:10.1109/TIP.2017.2713946",
    "nlm": "Buades, A., Coll, B., Morel, J.-M. (2005). A non-local algorithm for image denoising. CVPR, "
    "60-65. DOI:10.1109/CVPR.2005.38",
    "tv": "Chambolle, A. (2004). An algorithm for total variation minimization and applications. "
    "J. Math. Imaging Vis. 20:89-97. DOI:10.1023/B:JMIV.0000011325.36760.1e",
}

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

#: OpenIGTLink device names are at most this many bytes (UTF-8); a longer one arrives truncated.
IGTL_DEVICE_NAME_BYTES = 20
#: ``usdespeckle stream``: the image device it despeckles (PLUS names images ``<image>_<frame>``).
STREAM_DEVICE = "Image_Reference"
#: ... the device name its output is served under (within :data:`IGTL_DEVICE_NAME_BYTES`).
STREAM_OUTPUT_DEVICE = "Despeckled_Reference"
#: ... the port PLUS serves on by default (the source), and the port the output is served on.
STREAM_SOURCE_PORT = 18944
STREAM_SERVE_PORT = 18945
#: ... the denoiser's runtime: ONNX Runtime (no torch in the relay's process).
STREAM_BACKEND = "onnx"
#: ... largest OpenIGTLink message body accepted, bytes: 128 MiB (a 512x512x128 float32 volume is
#: 128 MiB); a bigger one is refused with one log line and the connection is opened again.
STREAM_MAX_MESSAGE_BYTES = 2**27
#: ... frames per second of ``--replay`` (a recorded file played as a source).
STREAM_REPLAY_FPS = 30.0
