"""Volume and sequence nodes in and out of the temporary files of a despeckling run.

Imports only numpy, vtk and MRML through ``slicer`` / ``slicer.util``, so it runs (and is tested)
with the ``slicer-core`` package, without the Slicer application, Qt or CTK.

A run despeckles one (k, j, i) array. A volume is that array. A sequence (a cine loop loaded from
multi-frame ultrasound DICOM, say) is the concatenation of its frames along the slice axis: the 2D
despeckler works on slices of constant k (or j, or i), so every slice belongs to one frame, the whole
loop goes through one process with progress over its slices, and one intensity mapping serves every
frame (no flicker). The result is split back into frames with their own geometry.

Colour (vector) volumes are written as they are; ``usdespeckle run`` reads them as grey
(``usdespeckle.runtime.io.to_grey``: the first channel when R = G = B, else BT.601 luminance), so the result
is a scalar volume.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import slicer.util

from SlicerDespeckleLib.process import library_module

#: Low and high percentiles of the window/level of results: the library's intensity mapping.
PERCENTILES: tuple[float, float] = library_module("options").PERCENTILES
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


def volume_array(volume_node) -> np.ndarray:
    """A copy of a volume's voxels: ``(k, j, i)`` for a scalar volume, ``(k, j, i, c)`` for a vector one.

    Raises:
        ValueError: no image data, or a shape that is neither.
    """
    if volume_node.GetImageData() is None:
        raise ValueError(f"volume {volume_node.GetName()!r} holds no image data; load or select another")
    array = np.array(slicer.util.arrayFromVolume(volume_node))  # a copy: the input is never changed
    vector = volume_node.IsA("vtkMRMLVectorVolumeNode")
    if array.ndim != (4 if vector else 3) or (vector and array.shape[-1] not in (1, 2, 3, 4)):
        raise ValueError(
            f"volume {volume_node.GetName()!r} has voxels of shape {array.shape}; expected a grey "
            "(k, j, i) or colour (k, j, i, 3) volume"
        )
    return array


def write_nrrd(array: np.ndarray, ijk_to_ras: np.ndarray, path: str | os.PathLike) -> None:
    """Write a (k, j, i) or (k, j, i, c) array with its IJK-to-RAS matrix as NRRD (MRML's writer).

    Raises:
        OSError: when the storage node cannot write ``path``.
    """
    node = slicer.vtkMRMLVectorVolumeNode() if array.ndim == 4 else slicer.vtkMRMLScalarVolumeNode()
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


@dataclass
class SourceFrames:
    """What a run reads: one volume, or every frame of a sequence, as one array.

    Attributes:
        node_id: the node chosen as input (a volume, a proxy volume or a sequence).
        name: the name results are named after.
        array: the voxels written for the process, (k, j, i) or (k, j, i, c).
        ijk_to_ras: geometry written with the array (the volume's, or the first frame's).
        sequence_id: the sequence whose frames these are; None for a single volume.
        browser_id: the browser playing that sequence, if any.
        index_values: the frames' index values (as the sequence stores them).
        frame_geometry: each frame's IJK-to-RAS.
        frame_sizes: each frame's number of slices along ``axis``.
        axis: the axis frames were concatenated along.
        transform_id: parent transform of the input (a proxy's or volume's), given to the result.
    """

    node_id: str
    name: str
    array: np.ndarray
    ijk_to_ras: np.ndarray
    axis: int
    sequence_id: str | None = None
    browser_id: str | None = None
    index_values: list[str] = field(default_factory=list)
    frame_geometry: list[np.ndarray] = field(default_factory=list)
    frame_sizes: list[int] = field(default_factory=list)
    transform_id: str | None = None

    @property
    def is_sequence(self) -> bool:
        return self.sequence_id is not None


def sequence_frames(sequence_node, axis: int) -> tuple[np.ndarray, list[str], list[np.ndarray], list[int]]:
    """Concatenate a sequence's volume frames along ``axis``.

    Returns:
        ``(array, index values, per-frame IJK-to-RAS, per-frame slices along axis)``.

    Raises:
        ValueError: an empty sequence, frames that are not volumes, or frames whose sizes across
            the slice axis differ (the message names the first frame that differs).
    """
    count = sequence_node.GetNumberOfDataNodes()
    if count == 0:
        raise ValueError(f"sequence {sequence_node.GetName()!r} has no frames")
    arrays, values, geometry, sizes = [], [], [], []
    for item in range(count):
        frame = sequence_node.GetNthDataNode(item)
        if not is_despecklable_volume(frame):
            kind = frame.GetClassName() if frame is not None else "nothing"
            raise ValueError(
                f"frame {item} of sequence {sequence_node.GetName()!r} is a {kind}; only sequences of "
                "grey or colour volumes can be despeckled"
            )
        array = volume_array(frame)
        if arrays:
            first, this = list(arrays[0].shape), list(array.shape)
            del first[axis], this[axis]
            if first != this:
                raise ValueError(
                    f"frame {item} of sequence {sequence_node.GetName()!r} has voxels {array.shape}, frame 0 "
                    f"{arrays[0].shape}; frames must match across the slice axis {AXIS_LABELS[axis]!r}"
                )
        arrays.append(array)
        values.append(sequence_node.GetNthIndexValue(item))
        geometry.append(ijk_to_ras_array(frame))
        sizes.append(int(array.shape[axis]))
    if axis != 0 and all(a.shape[0] == 1 for a in arrays):
        raise ValueError(
            f"the frames of {sequence_node.GetName()!r} are 2D images (one slice each); despeckle them "
            f"along {AXIS_LABELS[0]!r}"
        )
    return np.concatenate(arrays, axis=axis), values, geometry, sizes


def read_source(node, scene, axis: int, *, all_frames: bool = True) -> SourceFrames:
    """Gather what to despeckle from the node chosen as input.

    Args:
        node: a scalar or vector volume, a sequence browser's proxy volume, or a sequence of volumes.
        scene: the scene holding ``node`` (and its browsers).
        axis: numpy axis of the (k, j, i) array slices are taken along.
        all_frames: for a proxy volume, despeckle every frame of its sequence (True) or only the
            frame shown (False). A sequence node always gives every frame.

    Returns:
        The frames, their geometry and the browser to add results to.

    Raises:
        ValueError: no input, an input that is not a volume or a sequence of volumes, or frames that
            cannot be put together (see :func:`sequence_frames`).
    """
    if node is None:
        raise ValueError("select an input volume or sequence")
    if axis not in AXIS_LABELS:
        raise ValueError(f"axis must be 0 (K), 1 (J) or 2 (I), got {axis!r}")
    browser = browser_for(node, scene)
    if node.IsA("vtkMRMLSequenceNode"):
        sequence = node
        transform_id = None
        if browser is not None:
            proxy = browser.GetProxyNode(sequence)
            transform_id = proxy.GetTransformNodeID() if proxy is not None else None
    elif is_despecklable_volume(node):
        sequence = browser.GetSequenceNode(node) if (browser is not None and all_frames) else None
        transform_id = node.GetTransformNodeID()
        if sequence is None:
            array = volume_array(node)
            return SourceFrames(
                node_id=node.GetID(),
                name=node.GetName(),
                array=array,
                ijk_to_ras=ijk_to_ras_array(node),
                axis=axis,
                transform_id=transform_id,
            )
    else:
        raise ValueError(
            f"input {node.GetName()!r} is a {node.GetClassName()}; select a grey or colour volume, or a "
            "sequence of them (label maps cannot be despeckled)"
        )
    array, values, geometry, sizes = sequence_frames(sequence, axis)
    return SourceFrames(
        node_id=node.GetID(),
        name=sequence.GetName() if node is sequence else node.GetName(),
        array=array,
        ijk_to_ras=geometry[0],
        axis=axis,
        sequence_id=sequence.GetID(),
        browser_id=browser.GetID() if browser is not None else None,
        index_values=values,
        frame_geometry=geometry,
        frame_sizes=sizes,
        transform_id=transform_id,
    )


def set_window_level(volume_node, array: np.ndarray) -> None:
    """Window/level from the :data:`PERCENTILES` (0.5 and 99.5) of ``array`` (a display node is made if none)."""
    if volume_node.GetDisplayNode() is None:
        volume_node.CreateDefaultDisplayNodes()
    display = volume_node.GetDisplayNode()
    if display is None:
        return
    low, high = (float(v) for v in np.percentile(array, PERCENTILES))
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(low, high if high > low else low + 1.0)


def store_volume(scene, output, name: str, array: np.ndarray, ijk_to_ras: np.ndarray, source: SourceFrames):
    """Put a result into a volume node (made now, uniquely named, when ``output`` is None).

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


def store_sequence(scene, name: str, array: np.ndarray, source: SourceFrames, sequences_logic=None):
    """Split a despeckled concatenation into frames and store them as a new sequence.

    The new sequence has the source's index name, unit, type and values and each frame's geometry.
    When a browser plays the source, the new sequence is added to it, so both play in sync;
    otherwise it gets a browser of its own. Its proxy volume gets the source's parent transform and
    a window/level.

    Args:
        scene: the scene to add the sequence to.
        name: base name; made unique in the scene.
        array: the despeckled (k, j, i) concatenation of the frames along ``source.axis``.
        source: what :func:`read_source` returned for the input.
        sequences_logic: Slicer's Sequences module logic, which makes the browser's proxy nodes
            (None: the browser makes them when it next updates).

    Returns:
        The new ``vtkMRMLSequenceNode``.
    """
    input_sequence = scene.GetNodeByID(source.sequence_id)
    bounds = np.cumsum([0, *source.frame_sizes])
    if bounds[-1] != array.shape[source.axis]:
        raise ValueError(
            f"the result has {array.shape[source.axis]} slices along axis {source.axis}, the frames "
            f"{bounds[-1]}; the despeckled file does not match the input"
        )
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", scene.GenerateUniqueName(name))
    if input_sequence is not None:
        sequence.SetIndexName(input_sequence.GetIndexName())
        sequence.SetIndexUnit(input_sequence.GetIndexUnit())
        sequence.SetIndexType(input_sequence.GetIndexType())
        sequence.SetNumericIndexValueTolerance(input_sequence.GetNumericIndexValueTolerance())
    frame = slicer.vtkMRMLScalarVolumeNode()  # a template, not in the scene: the sequence keeps copies
    for item, value in enumerate(source.index_values):
        part = np.take(array, np.arange(bounds[item], bounds[item + 1]), axis=source.axis)
        frame.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(source.frame_geometry[item]))
        slicer.util.updateVolumeFromArray(frame, np.ascontiguousarray(part))
        sequence.SetDataNodeAtValue(frame, value)
    sequence.SetAttribute(SOURCE_ATTRIBUTE, source.node_id)
    browser = scene.GetNodeByID(source.browser_id) if source.browser_id else None
    if browser is None and scene.IsNodeClassRegistered("vtkMRMLSequenceBrowserNode"):
        # a sequence that no browser plays: the result gets its own, so it can be viewed and played
        browser = scene.AddNewNodeByClass(
            "vtkMRMLSequenceBrowserNode", scene.GenerateUniqueName(f"{name} browser")
        )
        browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    elif browser is not None:
        browser.AddSynchronizedSequenceNodeID(sequence.GetID())
    if browser is not None:
        if sequences_logic is not None:
            sequences_logic.UpdateProxyNodesFromSequences(browser)
        proxy = browser.GetProxyNode(sequence)
        if proxy is not None:
            proxy.SetAndObserveTransformNodeID(source.transform_id)
            proxy.SetAttribute(SOURCE_ATTRIBUTE, source.node_id)
            set_window_level(proxy, array)
    return sequence
