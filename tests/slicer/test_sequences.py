"""Sequences and colour volumes through the module's Logic (slicer-core MRML, real ``usdespeckle run``).

The cine is the first frames of pydicom-data's ``color3d_jpeg_baseline.dcm`` (a cardiac cine,
480 x 640 RGB frames, 33.333 ms apart), loaded as Slicer loads multi-frame ultrasound: a sequence of
colour volumes, played by a sequence browser whose proxy volume is what a user picks.
"""

from __future__ import annotations

import subprocess
import textwrap
import time

import numpy as np
import pytest
import slicer
import slicer.util
from SlicerDespeckleLib.logic import (
    OUTPUT_SUFFIX,
    SOURCE_ATTRIBUTE,
    DespeckleCancelled,
    DespeckleLogic,
    ijk_to_ras_array,
)

FRAME_MS = 33.333  # the cine's frame time, (0018,1063)

REFERENCE = textwrap.dedent(
    """
    import sys, numpy as np, SimpleITK as sitk
    from usdespeckle.runtime.io import to_grey
    from usdespeckle.runtime.inference import despeckle_array
    array = np.load(sys.argv[1])
    grey = sitk.GetArrayFromImage(to_grey(sitk.GetImageFromArray(array, isVector=array.ndim == 4)))
    np.save(sys.argv[2], despeckle_array(grey, sys.argv[3], axis=0))
    """
)


def _reference(python: str, array: np.ndarray, method: str, tmp_path) -> np.ndarray:
    """The library on the same voxels: colour to grey as ``usdespeckle run`` reads it, then despeckled."""
    src, dst = tmp_path / "reference_in.npy", tmp_path / "reference_out.npy"
    np.save(src, array)
    subprocess.run(
        [python, "-c", REFERENCE, str(src), str(dst), method], check=True, timeout=600, cwd=tmp_path
    )
    return np.load(dst)


def _frame_geometry(item: int) -> np.ndarray:
    """An oblique, anisotropic IJK-to-RAS that moves from frame to frame."""
    angle = 0.3 + 0.05 * item
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([0.21, 0.27, 1.0])
    matrix[:3, 3] = [10.0 + item, -4.0, 2.5 * item]
    return matrix


@pytest.fixture
def cine(scene, sequences_logic, cine_array):
    """(sequence, browser, proxy) of colour frames with per-frame geometry and ms index values."""
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
    sequence.SetIndexName("time")
    sequence.SetIndexUnit("ms")
    frame = slicer.vtkMRMLVectorVolumeNode()
    for item in range(len(cine_array)):
        slicer.util.updateVolumeFromArray(frame, cine_array[item][np.newaxis])  # (1, 480, 640, 3)
        frame.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(_frame_geometry(item)))
        sequence.SetDataNodeAtValue(frame, f"{item * FRAME_MS:.3f}")
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "cine browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    sequences_logic.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(sequence)
    assert proxy is not None
    assert proxy.IsA("vtkMRMLVectorVolumeNode")
    return sequence, browser, proxy


def _index_values(sequence) -> list[str]:
    return [sequence.GetNthIndexValue(i) for i in range(sequence.GetNumberOfDataNodes())]


def test_proxy_volume_gives_a_sequence_in_the_same_browser(
    scene, sequences_logic, cine, cine_array, project_python, tmp_path
):
    sequence, browser, proxy = cine
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "probe")
    proxy.SetAndObserveTransformNodeID(transform.GetID())
    logic = DespeckleLogic(project_python, sequences_logic=sequences_logic)
    seen: list[tuple[int, int]] = []
    output = logic.process(proxy, method="median", progress=lambda done, total: seen.append((done, total)))

    assert output.IsA("vtkMRMLSequenceNode")
    assert output.GetName() == "cine" + OUTPUT_SUFFIX
    assert (
        _index_values(output)
        == _index_values(sequence)
        == [f"{i * FRAME_MS:.3f}" for i in range(len(cine_array))]
    )
    assert (output.GetIndexName(), output.GetIndexUnit(), output.GetIndexType()) == (
        "time",
        "ms",
        sequence.GetIndexType(),
    )
    assert output.GetAttribute(SOURCE_ATTRIBUTE) == proxy.GetID()
    assert seen[0] == (0, len(cine_array))
    assert seen[-1] == (len(cine_array),) * 2
    reference = _reference(project_python, cine_array, "median", tmp_path)
    for item in range(len(cine_array)):
        frame = output.GetNthDataNode(item)
        assert frame.IsA("vtkMRMLScalarVolumeNode")
        assert not frame.IsA("vtkMRMLVectorVolumeNode")
        np.testing.assert_allclose(ijk_to_ras_array(frame), _frame_geometry(item), atol=1e-9)
        result = slicer.util.arrayFromVolume(frame)
        assert result.shape == (1, 480, 640)
        np.testing.assert_allclose(result[0], reference[item], rtol=1e-5, atol=1e-3)
    # it plays in sync with the input: same browser, a proxy under the input's transform
    assert browser.IsSynchronizedSequenceNodeID(output.GetID(), False)
    output_proxy = browser.GetProxyNode(output)
    assert output_proxy is not None
    assert output_proxy.GetTransformNodeID() == transform.GetID()
    browser.SetSelectedItemNumber(2)
    np.testing.assert_allclose(
        slicer.util.arrayFromVolume(output_proxy)[0], reference[2], rtol=1e-5, atol=1e-3
    )
    # the input is untouched
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(sequence.GetNthDataNode(1))[0], cine_array[1])


def test_sequence_node_as_input_and_a_second_run(scene, sequences_logic, cine, project_python):
    sequence, browser, _ = cine
    logic = DespeckleLogic(project_python, sequences_logic=sequences_logic)
    first = logic.process(sequence, method="median")
    second = logic.process(sequence, method="lee")
    assert first.GetID() != second.GetID()
    assert first.GetName() != second.GetName()
    for output in (first, second):
        assert _index_values(output) == _index_values(sequence)
        assert browser.IsSynchronizedSequenceNodeID(output.GetID(), False)
    assert not np.allclose(
        slicer.util.arrayFromVolume(first.GetNthDataNode(0)),
        slicer.util.arrayFromVolume(second.GetNthDataNode(0)),
    )


def test_proxy_as_one_frame_and_preview(scene, sequences_logic, cine, cine_array, project_python, tmp_path):
    _sequence, browser, proxy = cine
    browser.SetSelectedItemNumber(3)
    logic = DespeckleLogic(project_python, sequences_logic=sequences_logic)
    nodes_before = scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode")
    single = logic.process(proxy, method="median", all_frames=False)
    assert single.IsA("vtkMRMLScalarVolumeNode")
    assert slicer.util.arrayFromVolume(single).shape == (
        1,
        480,
        640,
    )
    np.testing.assert_allclose(ijk_to_ras_array(single), _frame_geometry(3), atol=1e-9)
    reference = _reference(project_python, cine_array[3:4], "median", tmp_path)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(single), reference, rtol=1e-5, atol=1e-3)
    preview = logic.process(proxy, method="median", slice_index=0)  # the frame shown, not the sequence
    assert preview.IsA("vtkMRMLScalarVolumeNode")
    assert slicer.util.arrayFromVolume(preview).shape == (
        1,
        480,
        640,
    )
    assert scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode") == nodes_before


def test_sequence_without_browser_gets_one(scene, sequences_logic, cine_array, project_python):
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "loose")
    frame = slicer.vtkMRMLScalarVolumeNode()
    for item in range(2):
        slicer.util.updateVolumeFromArray(frame, cine_array[item, np.newaxis, :, :, 0])
        sequence.SetDataNodeAtValue(frame, str(item))
    output = DespeckleLogic(project_python, sequences_logic=sequences_logic).process(
        sequence, method="median"
    )
    assert _index_values(output) == ["0", "1"]
    browsers = [
        scene.GetNthNodeByClass(i, "vtkMRMLSequenceBrowserNode")
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode"))
    ]
    assert [b.GetMasterSequenceNode().GetID() for b in browsers] == [output.GetID()]
    assert browsers[0].GetProxyNode(output) is not None


def test_colour_volume_is_despeckled_as_grey(scene, cine_array, project_python, tmp_path):
    volume = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour")
    slicer.util.updateVolumeFromArray(volume, np.ascontiguousarray(cine_array[:2]))  # (2, 480, 640, 3)
    volume.SetSpacing(0.2, 0.3, 2.0)
    output = DespeckleLogic(project_python).process(volume, method="median")
    assert output.IsA("vtkMRMLScalarVolumeNode")
    assert not output.IsA("vtkMRMLVectorVolumeNode")
    np.testing.assert_allclose(ijk_to_ras_array(output), ijk_to_ras_array(volume), atol=1e-9)
    reference = _reference(project_python, cine_array[:2], "median", tmp_path)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(output), reference, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), cine_array[:2])


def test_frames_that_do_not_match_are_refused(scene, sequences_logic, project_python):
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "mixed")
    frame = slicer.vtkMRMLScalarVolumeNode()
    for item, shape in enumerate(((1, 30, 40), (1, 30, 40), (1, 32, 40))):
        slicer.util.updateVolumeFromArray(frame, np.ones(shape, dtype=np.uint8) * item)
        sequence.SetDataNodeAtValue(frame, str(item))
    logic = DespeckleLogic(project_python, sequences_logic=sequences_logic)
    with pytest.raises(ValueError, match="frame 2 of sequence 'mixed'"):
        logic.start(sequence, method="median")
    with pytest.raises(ValueError, match="2D images"):
        logic.start(sequence, method="median", axis=1)
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    slicer.util.updateVolumeFromArray(label, np.ones((2, 30, 40), dtype=np.uint8))
    with pytest.raises(ValueError, match="label maps"):
        logic.start(label, method="median")


def test_blocks_of_frames_share_one_mapping(
    scene, sequences_logic, cine, cine_array, project_python, tmp_path
):
    """Frames in blocks (two frames each here) give what one run over the whole loop gives."""
    sequence, _browser, proxy = cine
    logic = DespeckleLogic(project_python, sequences_logic=sequences_logic)
    seen: list[tuple[int, int]] = []
    job_blocks = logic.start(proxy, method="lee", block_values=2 * 480 * 640)
    assert job_blocks.blocks == [(0, 2), (2, 4)]
    job_blocks.cancel()
    output = logic.process(
        proxy, method="lee", block_values=2 * 480 * 640, progress=lambda d, t: seen.append((d, t))
    )
    assert [total for _, total in seen] == [len(cine_array)] * len(seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert seen[-1] == (len(cine_array),) * 2
    reference = _reference(project_python, cine_array, "lee", tmp_path)  # one run, the whole loop
    for item in range(len(cine_array)):
        result = slicer.util.arrayFromVolume(output.GetNthDataNode(item))[0]
        np.testing.assert_allclose(result, reference[item], rtol=1e-5, atol=1e-3)
    assert output.GetNumberOfDataNodes() == sequence.GetNumberOfDataNodes()


def test_cancel_between_blocks_adds_nothing(scene, sequences_logic, cine, project_python):
    sequence, _browser, _proxy = cine
    logic = DespeckleLogic(project_python, sequences_logic=sequences_logic)
    nodes = scene.GetNumberOfNodes()
    job = logic.start(sequence, method="median", block_values=480 * 640)  # a frame per block
    deadline = time.monotonic() + 300
    while job.index < 1 and not job.poll():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job.done >= 1  # a block was done (and is dropped)
    job.cancel()
    with pytest.raises(DespeckleCancelled):
        logic.finish(job)
    assert scene.GetNumberOfNodes() == nodes
    assert job.current is None or not job.current.temp_dir.exists()


def test_eight_bit_output_of_an_8bit_cine(scene, sequences_logic, cine, project_python):
    sequence, _browser, _proxy = cine
    logic = DespeckleLogic(project_python, sequences_logic=sequences_logic)
    output = logic.process(sequence, method="median", eight_bit=True)
    floats = logic.process(sequence, method="median")
    for item in range(sequence.GetNumberOfDataNodes()):
        small = slicer.util.arrayFromVolume(output.GetNthDataNode(item))
        assert small.dtype == np.uint8
        full = slicer.util.arrayFromVolume(floats.GetNthDataNode(item))
        np.testing.assert_array_equal(small, np.clip(np.rint(full), 0, 255).astype(np.uint8))
    grey = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "float input")
    slicer.util.updateVolumeFromArray(grey, np.ones((2, 30, 40), np.float32))
    with pytest.raises(ValueError, match="not 8-bit"):
        logic.start(grey, method="median", eight_bit=True)


@pytest.mark.slow
def test_300_frame_colour_cine_in_bounded_memory(project_python):
    """A 10 s colour cine (300 frames, 480 x 640 x 3): accepted, in blocks, with bounded peak memory.

    3 x 92 M values would pass the 2**28 limit as colour; as grey, in blocks of BLOCK_VALUES voxels,
    the module holds the output sequence plus a few copies of one block.
    """
    import json
    import math
    import sys
    from pathlib import Path

    from SlicerDespeckleLib.volumes import BLOCK_VALUES

    script = Path(__file__).with_name("cine_memory.py")
    done = subprocess.run(
        [sys.executable, str(script), project_python, "300", "median"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    numbers = json.loads(done.stdout.strip().splitlines()[-1])
    print(numbers)
    assert 300 * 480 * 640 * 3 > 2**28  # refused as colour before
    assert numbers["blocks"] == math.ceil(300 / (BLOCK_VALUES // (480 * 640)))
    block_bytes = BLOCK_VALUES * 4
    assert numbers["module_peak_above_scene_bytes"] < numbers["output_bytes"] + 6 * block_bytes
    assert numbers["module_peak_above_scene_bytes"] < 2 * numbers["output_bytes"]  # the whole loop twice
    assert 0 < numbers["process_peak_bytes"] < 256 * 2**20 + 4 * block_bytes


@pytest.mark.slow
def test_uncertainty_of_a_sequence_in_blocks(scene, sequences_logic, cine, project_python):
    """The spread comes as a second sequence with the same frame times, in the same browser."""
    sequence, browser, proxy = cine
    logic = DespeckleLogic(project_python, sequences_logic=sequences_logic)
    job = logic.start(proxy, method="denoiser", backend="onnx", uncertainty=True, block_values=2 * 480 * 640)
    deadline = time.monotonic() + 900
    while not job.poll():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    output = logic.finish(job)
    spread = job.context.uncertainty_node
    assert spread.IsA("vtkMRMLSequenceNode")
    assert spread.GetName() == "cine uncertainty"
    assert _index_values(spread) == _index_values(output) == _index_values(sequence)
    assert browser.IsSynchronizedSequenceNodeID(spread.GetID(), False)
    for item in range(sequence.GetNumberOfDataNodes()):
        values = slicer.util.arrayFromVolume(spread.GetNthDataNode(item))
        assert values.shape == (1, 480, 640)
        assert (values >= 0).all()
        assert values.max() > 0
