"""Volume and sequence nodes in and out of the temporary files of a despeckling run.

Imports only numpy, vtk and MRML through ``slicer`` / ``slicer.util``, so it runs (and is tested)
with the ``slicer-core`` package, without the Slicer application, Qt or CTK.

A run despeckles (k, j, i) arrays. A volume is one array. A sequence (a cine loop loaded from
multi-frame ultrasound DICOM, say) is despeckled in blocks of frames, each block the concatenation
of its frames along the slice axis: the 2D despeckler works on slices of constant k (or j, or i), so
every slice belongs to one frame. A block holds at most :data:`BLOCK_VALUES` voxels, so memory stays
bounded whatever the length of the loop, and one intensity mapping (:func:`sequence_intensity_range`,
the library's robust range over every frame) serves every block (no flicker between blocks). The
results are split back into frames with their own geometry as they come (:class:`SequenceBuilder`).

Colour (vector) volumes are turned into grey here, before anything is written (:func:`to_grey`, the
rule of ``usdespeckle.runtime.io.to_grey``: the first channel when R = G = B, else BT.601 luminance), so a
colour voxel counts once, not three times, and the result is a scalar volume.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import slicer
import slicer.util

from SlicerDespeckleLib.process import library_module

#: Low and high percentiles of the window/level of results: the library's intensity mapping.
PERCENTILES: tuple[float, float] = library_module("options").PERCENTILES
#: Most voxels of one block of sequence frames sent to ``usdespeckle run``: 2**24 (64 MiB as
#: float32), 54 frames of 480 x 640. See the README of the module for the peak memory it gives.
BLOCK_VALUES = 2**24
#: BT.601 luminance weights of R, G, B (``usdespeckle.runtime.io.to_grey``).
LUMA: tuple[float, float, float] = (0.299, 0.587, 0.114)
#: Values sampled for a robust intensity range, as the library's ``slicewise.robust_range`` does.
PERCENTILE_SAMPLE = 1_000_000
#: Node attribute naming the node a despeckled result was made from (its ID).
SOURCE_ATTRIBUTE = "Despeckle.SourceNodeID"
#: numpy axis of arrayFromVolume's (k, j, i) array -> anatomy-free label shown in the panel.
AXIS_LABELS: dict[int, str] = {
    0: "K: slices of constant k (frames)",
    1: "J: slices of constant j",
    2: "I: slices of constant i",
}


def ijk_to_ras_array(volume_node) -> np.ndarray:
    """Return the node's 4x4 IJK-to-RAS matrix as a numpy array."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def slice_index_at_ras(volume_node, ras: Sequence[float], axis: int) -> int:
    """Index, along numpy ``axis`` of the (k, j, i) array, of the slice through a RAS point.

    Args:
        volume_node: a volume node with image data.
        ras: point in the volume's RAS coordinates (mm), e.g. the centre of a slice view.
        axis: 0 (K), 1 (J) or 2 (I).

    Returns:
        The nearest slice index, clipped into the volume.
    """
    if axis not in AXIS_LABELS:
        raise ValueError(f"axis must be 0 (K), 1 (J) or 2 (I), got {axis!r}")
    ijk = np.linalg.inv(ijk_to_ras_array(volume_node)) @ np.array([*ras[:3], 1.0])
    dims_ijk = volume_node.GetImageData().GetDimensions()
    component = 2 - axis  # numpy axis 0 is k, the third IJK component
    return int(np.clip(np.rint(ijk[component]), 0, dims_ijk[component] - 1))


def is_despecklable_volume(node) -> bool:
    """True for scalar and vector (colour) volume nodes; label maps and others are refused."""
    return (
        node is not None
        and node.IsA("vtkMRMLScalarVolumeNode")
        and not node.IsA("vtkMRMLLabelMapVolumeNode")
        and not node.IsA("vtkMRMLDiffusionTensorVolumeNode")
        and not node.IsA("vtkMRMLDiffusionWeightedVolumeNode")
    )


def to_grey(array: np.ndarray) -> np.ndarray:
    """A new grey ``(k, j, i)`` array from a colour ``(k, j, i, c)`` one, as ``usdespeckle.runtime.io.to_grey``.

    Grey + alpha (c = 2), one channel, or R = G = B: the first channel, in its own type. Otherwise
    the BT.601 luminance ``0.299 R + 0.587 G + 0.114 B`` as float32 (alpha ignored), computed one
    channel at a time (one float32 frame of extra memory, not three).
    """
    channels = array.shape[-1]
    first = array[..., 0]
    if channels <= 2 or all(np.array_equal(first, array[..., c]) for c in (1, 2)):
        return np.array(first, copy=True, order="C")
    grey = first.astype(np.float32) * np.float32(LUMA[0])
    for c in (1, 2):
        grey += array[..., c].astype(np.float32) * np.float32(LUMA[c])
    return grey


def volume_array(volume_node) -> np.ndarray:
    """A grey copy of a volume's voxels, ``(k, j, i)``; a colour volume is turned into grey (:func:`to_grey`).

    Raises:
        ValueError: no image data, or a shape that is neither grey (k, j, i) nor colour (k, j, i, c).
    """
    if volume_node.GetImageData() is None:
        raise ValueError(f"volume {volume_node.GetName()!r} holds no image data; load or select another")
    view = slicer.util.arrayFromVolume(volume_node)  # a view: copied below, the input is never changed
    vector = volume_node.IsA("vtkMRMLVectorVolumeNode")
    if view.ndim != (4 if vector else 3) or (vector and view.shape[-1] not in (1, 2, 3, 4)):
        raise ValueError(
            f"volume {volume_node.GetName()!r} has voxels of shape {view.shape}; expected a grey "
            "(k, j, i) or colour (k, j, i, 3) volume"
        )
    return to_grey(view) if vector else np.array(view, copy=True)


def volume_shape(volume_node) -> tuple[int, int, int]:
    """The grey ``(k, j, i)`` shape of a volume, from its image data (no voxel is copied).

    Raises:
        ValueError: no image data.
    """
    image = volume_node.GetImageData()
    if image is None:
        raise ValueError(f"volume {volume_node.GetName()!r} holds no image data; load or select another")
    i, j, k = image.GetDimensions()
    return (k, j, i)


def write_nrrd(array: np.ndarray, ijk_to_ras: np.ndarray, path: str | os.PathLike) -> None:
    """Write a (k, j, i) array with its IJK-to-RAS matrix as NRRD (MRML's writer).

    Raises:
        OSError: when the storage node cannot write ``path``.
    """
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(0)  # a temporary file: speed over size
    if not storage.WriteData(node):
        raise OSError(
            f"could not write the temporary volume {path}; check free disk space in {Path(path).parent}"
        )


def read_nrrd(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a volume file into ``(array in (k, j, i) order, 4x4 IJK-to-RAS)``.

    Raises:
        FileNotFoundError: the file is missing.
        OSError: MRML cannot read it.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"the despeckled volume {path} was not written")
    node = slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise OSError(f"could not read the despeckled volume {path}")
    return np.array(slicer.util.arrayFromVolume(node)), ijk_to_ras_array(node)


def browser_for(node, scene):
    """The first sequence browser that plays ``node`` (a proxy volume) or synchronises it (a sequence).

    Returns:
        A ``vtkMRMLSequenceBrowserNode``, or None.
    """
    if node is None or node.GetID() is None:
        return None
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
        browser = scene.GetNthNodeByClass(index, "vtkMRMLSequenceBrowserNode")
        if node.IsA("vtkMRMLSequenceNode"):
            if browser.IsSynchronizedSequenceNodeID(node.GetID(), True):  # the master too
                return browser
        elif browser.IsProxyNodeID(node.GetID()):
            return browser
    return None


def set_window_level(volume_node, array: np.ndarray) -> None:
    """Window/level from the :data:`PERCENTILES` (0.5 and 99.5) of ``array`` (a display node is made if none)."""
    low, high = (float(v) for v in np.percentile(array, PERCENTILES))
    set_window(volume_node, low, high)


def set_window(volume_node, low: float, high: float) -> None:
    """Show intensities ``low``..``high`` from black to white (a display node is made if none)."""
    if volume_node.GetDisplayNode() is None:
        volume_node.CreateDefaultDisplayNodes()
    display = volume_node.GetDisplayNode()
    if display is None:
        return
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(low, high if high > low else low + 1.0)


def store_volume(scene, output, name: str, array: np.ndarray, ijk_to_ras: np.ndarray, source):
    """Put a result into a volume node (made now, uniquely named, when ``output`` is None).

    Args:
        source: the :class:`~SlicerDespeckleLib.sequences.SourceFrames` the result was made from
            (its node ID and parent transform are given to the output).

    Returns:
        The output ``vtkMRMLScalarVolumeNode`` with the input's geometry, parent transform and a
        window/level from its percentiles.
    """
    if output is None:
        output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    output.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    output.SetAndObserveTransformNodeID(source.transform_id)
    slicer.util.updateVolumeFromArray(output, array)
    output.SetAttribute(SOURCE_ATTRIBUTE, source.node_id)
    set_window_level(output, array)
    return output
