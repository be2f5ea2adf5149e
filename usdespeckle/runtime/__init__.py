"""What a slim install and the 3D Slicer extension run, the lowest layer.

Options, errors, atomic writes, image I/O and its checks, the slice-wise runner, the denoiser's
loader and self-ensemble, the classical filters, the bundle's files and the MONAI Label client.
numpy, SimpleITK, nibabel and onnxruntime at import (SciPy, scikit-image and bm3d for the
filters); torch only inside the functions that run TorchScript. The Slicer extension copies
this folder whole (SlicerDespeckle/CMake/DespeckleRuntime.cmake). Imports nothing above it.
"""
