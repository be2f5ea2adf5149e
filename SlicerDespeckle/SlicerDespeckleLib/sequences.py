"""What a run reads (a volume, or the frames of a sequence) and how a sequence's result is stored.

Imports only numpy, vtk and MRML through ``slicer`` / ``slicer.util``, so it runs (and is tested)
with the ``slicer-core`` package, without the Slicer application, Qt or CTK.

A sequence is never gathered into one array: its frames are checked from their image headers, read
(as grey) a block at a time (:func:`frame_blocks`, :func:`read_frames`), and each block's result is
split into frames of a sequence that is not in the scene yet (:class:`SequenceBuilder`); the scene
gets it only when every block succeeded. The module's peak memory is then the output sequence plus
a few copies of one block (at most :data:`~SlicerDespeckleLib.volumes.BLOCK_VALUES` voxels), not
a few copies of the whole loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import slicer
import slicer.util

from SlicerDespeckleLib.volumes import (
    AXIS_LABELS,
    BLOCK_VALUES,
    PERCENTILE_SAMPLE,
    PERCENTILES,
    SOURCE_ATTRIBUTE,
    browser_for,
    ijk_to_ras_array,
    is_despecklable_volume,
    set_window,
    volume_array,
    volume_shape,
)


@dataclass
class SourceFrames:
    """What a run reads: one volume, or the frames of a sequence.

    Attributes:
        node_id: the node chosen as input (a volume, a proxy volume or a sequence).
        name: the name results are named after.
        array: a volume's grey voxels, (k, j, i); None for a sequence (read a block at a time
            with :func:`read_frames`).
        ijk_to_ras: geometry of the volume (of the first frame for a sequence).
        axis: the axis slices are taken along (and frames are concatenated along).
        sequence_id: the sequence whose frames these are; None for a single volume.
        browser_id: the browser playing that sequence, if any.
        index_values: the frames' index values (as the sequence stores them).
        frame_geometry: each frame's IJK-to-RAS.
        frame_sizes: each frame's number of slices along ``axis``.
        frame_shape: the grey (k, j, i) shape of the first frame.
        transform_id: parent transform of the input (a proxy's or volume's), given to the result.
        is_8bit: every voxel read is (or, for colour, comes from) an unsigned 8-bit value.
    """

    node_id: str
    name: str
    array: np.ndarray | None
    ijk_to_ras: np.ndarray
    axis: int
    sequence_id: str | None = None
    browser_id: str | None = None
    index_values: list[str] = field(default_factory=list)
    frame_geometry: list[np.ndarray] = field(default_factory=list)
    frame_sizes: list[int] = field(default_factory=list)
    frame_shape: tuple[int, int, int] = (0, 0, 0)
    transform_id: str | None = None
    is_8bit: bool = False

    @property
    def is_sequence(self) -> bool:
        return self.sequence_id is not None

    @property
    def slices(self) -> int:
        """Slices along ``axis`` over every frame."""
        return int(sum(self.frame_sizes)) if self.is_sequence else int(self.array.shape[self.axis])


def _is_8bit(volume_node) -> bool:
    image = volume_node.GetImageData()
    return image is not None and image.GetScalarType() == 3  # VTK_UNSIGNED_CHAR


def sequence_layout(sequence_node, axis: int) -> tuple[list[str], list[np.ndarray], list[int], bool]:
    """Check a sequence's frames from their headers (no voxel is read) and describe them.

    Returns:
        ``(index values, per-frame IJK-to-RAS, per-frame slices along axis, every frame 8-bit)``.

    Raises:
        ValueError: an empty sequence, frames that are not volumes, or frames whose sizes across
            the slice axis differ (the message names the first frame that differs).
    """
    count = sequence_node.GetNumberOfDataNodes()
    if count == 0:
        raise ValueError(f"sequence {sequence_node.GetName()!r} has no frames")
    values, geometry, sizes, shapes, eight_bit = [], [], [], [], True
    for item in range(count):
        frame = sequence_node.GetNthDataNode(item)
        if not is_despecklable_volume(frame):
            kind = frame.GetClassName() if frame is not None else "nothing"
            raise ValueError(
                f"frame {item} of sequence {sequence_node.GetName()!r} is a {kind}; only sequences of "
                "grey or colour volumes can be despeckled"
            )
        shape = volume_shape(frame)
        if shapes:
            first, this = list(shapes[0]), list(shape)
            del first[axis], this[axis]
            if first != this:
                raise ValueError(
                    f"frame {item} of sequence {sequence_node.GetName()!r} has voxels {shape}, frame 0 "
                    f"{shapes[0]}; frames must match across the slice axis {AXIS_LABELS[axis]!r}"
                )
        shapes.append(shape)
        values.append(sequence_node.GetNthIndexValue(item))
        geometry.append(ijk_to_ras_array(frame))
        sizes.append(int(shape[axis]))
        eight_bit = eight_bit and _is_8bit(frame)
    if axis != 0 and all(s[0] == 1 for s in shapes):
        raise ValueError(
            f"the frames of {sequence_node.GetName()!r} are 2D images (one slice each); despeckle them "
            f"along {AXIS_LABELS[0]!r}"
        )
    return values, geometry, sizes, eight_bit


def read_source(node, scene, axis: int, *, all_frames: bool = True) -> SourceFrames:
    """Gather what to despeckle from the node chosen as input (a sequence's frames are only checked).

    Args:
        node: a scalar or vector volume, a sequence browser's proxy volume, or a sequence of volumes.
        scene: the scene holding ``node`` (and its browsers).
        axis: numpy axis of the (k, j, i) array slices are taken along.
        all_frames: for a proxy volume, despeckle every frame of its sequence (True) or only the
            frame shown (False). A sequence node always gives every frame.

    Returns:
        The volume's grey voxels, or the sequence's frames' layout, with the browser to add results to.

    Raises:
        ValueError: no input, an input that is not a volume or a sequence of volumes, or frames that
            cannot be put together (see :func:`sequence_layout`).
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
            return SourceFrames(
                node_id=node.GetID(),
                name=node.GetName(),
                array=volume_array(node),
                ijk_to_ras=ijk_to_ras_array(node),
                axis=axis,
                frame_shape=volume_shape(node),
                transform_id=transform_id,
                is_8bit=_is_8bit(node),
            )
    else:
        raise ValueError(
            f"input {node.GetName()!r} is a {node.GetClassName()}; select a grey or colour volume, or a "
            "sequence of them (label maps cannot be despeckled)"
        )
    values, geometry, sizes, eight_bit = sequence_layout(sequence, axis)
    return SourceFrames(
        node_id=node.GetID(),
        name=sequence.GetName() if node is sequence else node.GetName(),
        array=None,
        ijk_to_ras=geometry[0],
        axis=axis,
        sequence_id=sequence.GetID(),
        browser_id=browser.GetID() if browser is not None else None,
        index_values=values,
        frame_geometry=geometry,
        frame_sizes=sizes,
        frame_shape=volume_shape(sequence.GetNthDataNode(0)),
        transform_id=transform_id,
        is_8bit=eight_bit,
    )


def frame_blocks(source: SourceFrames, block_values: int = BLOCK_VALUES) -> list[tuple[int, int]]:
    """Split a sequence's frames into consecutive ``(start, stop)`` blocks of at most ``block_values`` voxels.

    A frame larger than ``block_values`` is a block of its own.
    """
    if block_values < 1:
        raise ValueError(f"block_values must be >= 1, got {block_values}")
    per_slice = int(np.prod(source.frame_shape)) // max(1, source.frame_shape[source.axis])
    blocks, start, voxels = [], 0, 0
    for item, size in enumerate(source.frame_sizes):
        frame_voxels = per_slice * size
        if item > start and voxels + frame_voxels > block_values:
            blocks.append((start, item))
            start, voxels = item, 0
        voxels += frame_voxels
    blocks.append((start, len(source.frame_sizes)))
    return blocks


def read_frames(scene, source: SourceFrames, start: int, stop: int) -> np.ndarray:
    """Frames ``start``..``stop - 1`` of the source sequence, grey, concatenated along its axis (a new array)."""
    sequence = scene.GetNodeByID(source.sequence_id)
    if sequence is None:
        raise ValueError(f"the input sequence {source.name!r} was removed from the scene while it was read")
    frames = [volume_array(sequence.GetNthDataNode(item)) for item in range(start, stop)]
    return frames[0] if len(frames) == 1 else np.concatenate(frames, axis=source.axis)


def sequence_intensity_range(scene, source: SourceFrames) -> tuple[float, float]:
    """The library's robust intensity range (``slicewise.robust_range``) of every grey frame, read one at a time.

    Along axis 0 it samples exactly the values ``robust_range`` samples from the concatenated frames
    (every n-th value in C order), so one block gives what a whole-loop run gives.

    Returns:
        ``(low, high)``, the :data:`PERCENTILES` of the frames; their min and max when those coincide.
    """
    total = int(np.prod(source.frame_shape)) // max(1, source.frame_shape[source.axis])
    total *= int(sum(source.frame_sizes))
    stride = max(1, total // PERCENTILE_SAMPLE)
    sequence = scene.GetNodeByID(source.sequence_id)
    samples, offset, low, high = [], 0, np.inf, -np.inf
    for item in range(len(source.frame_sizes)):
        grey = volume_array(sequence.GetNthDataNode(item))
        flat = grey.reshape(-1)
        first = (-offset) % stride
        samples.append(np.asarray(flat[first::stride], np.float64))
        offset += flat.size
        low, high = min(low, float(flat.min())), max(high, float(flat.max()))
    lo, hi = (float(v) for v in np.percentile(np.concatenate(samples), PERCENTILES))
    return (lo, hi) if hi > lo else (low, high)


class SequenceBuilder:
    """A new sequence filled block by block, outside the scene until :meth:`add_to_scene`.

    Args:
        source: what the frames come from (index values, per-frame geometry and sizes).
        dtype: the voxel type stored (float32, or uint8 for an 8-bit result; values are rounded
            and clipped to 0..255).
    """

    def __init__(self, source: SourceFrames, dtype=np.float32):
        self.source = source
        self.dtype = np.dtype(dtype)
        self.sequence = slicer.vtkMRMLSequenceNode()
        self.frames_stored = 0
        self._frame = slicer.vtkMRMLScalarVolumeNode()  # a template: the sequence keeps copies
        self._samples: list[np.ndarray] = []

    def add(self, array: np.ndarray, start: int, stop: int) -> None:
        """Store the result of frames ``start``..``stop - 1``, concatenated along the source's axis.

        Raises:
            ValueError: the array's size along the axis is not those frames' (a bad result file).
        """
        source = self.source
        bounds = np.cumsum([0, *source.frame_sizes[start:stop]])
        if start != self.frames_stored or bounds[-1] != array.shape[source.axis]:
            raise ValueError(
                f"the result of frames {start}-{stop - 1} has {array.shape[source.axis]} slices along axis "
                f"{source.axis}, the frames {bounds[-1]}; the despeckled file does not match the input"
            )
        for offset, item in enumerate(range(start, stop)):
            part = np.take(array, np.arange(bounds[offset], bounds[offset + 1]), axis=source.axis)
            part = cast_result(part, self.dtype)
            self._frame.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(source.frame_geometry[item]))
            slicer.util.updateVolumeFromArray(self._frame, np.ascontiguousarray(part))
            self.sequence.SetDataNodeAtValue(self._frame, source.index_values[item])
            flat = part.reshape(-1)
            self._samples.append(flat[:: max(1, flat.size // 10_000)].astype(np.float32))
        self.frames_stored = stop

    def add_to_scene(self, scene, name: str, sequences_logic=None):
        """Add the finished sequence to the scene, in the source's browser (or a new one).

        The new sequence has the source's index name, unit, type and values and each frame's
        geometry. When a browser plays the source, the new sequence is added to it, so both play in
        sync; otherwise it gets a browser of its own. Its proxy volume gets the source's parent
        transform and a window/level from the result's percentiles.

        Args:
            scene: the scene to add the sequence to.
            name: base name; made unique in the scene.
            sequences_logic: Slicer's Sequences module logic, which makes the browser's proxy nodes
                (None: the browser makes them when it next updates).

        Returns:
            The new ``vtkMRMLSequenceNode``.

        Raises:
            ValueError: not every frame was stored.
        """
        source = self.source
        if self.frames_stored != len(source.index_values):
            raise ValueError(
                f"only {self.frames_stored} of {len(source.index_values)} frames were despeckled; nothing was added"
            )
        sequence = self.sequence
        sequence.SetName(scene.GenerateUniqueName(name))
        input_sequence = scene.GetNodeByID(source.sequence_id)
        if input_sequence is not None:
            sequence.SetIndexName(input_sequence.GetIndexName())
            sequence.SetIndexUnit(input_sequence.GetIndexUnit())
            sequence.SetIndexType(input_sequence.GetIndexType())
            sequence.SetNumericIndexValueTolerance(input_sequence.GetNumericIndexValueTolerance())
        sequence.SetAttribute(SOURCE_ATTRIBUTE, source.node_id)
        scene.AddNode(sequence)
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
                low, high = (float(v) for v in np.percentile(np.concatenate(self._samples), PERCENTILES))
                set_window(proxy, low, high)
        return sequence


def cast_result(array: np.ndarray, dtype) -> np.ndarray:
    """A result in the stored type: float32 as it is, uint8 rounded and clipped to 0..255."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return array.astype(dtype, copy=False)
