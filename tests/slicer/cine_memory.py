"""Peak memory of despeckling a long colour cine through the module's Logic; prints one JSON line.

Usage: python cine_memory.py PROJECT_PYTHON FRAMES [METHOD] [--eight-bit]

Builds a sequence of FRAMES colour (480, 640, 3) uint8 frames of speckle in a fresh scene, resets
this process's peak resident size (Linux ``/proc/self/clear_refs``), despeckles the sequence with the
module's Logic (``usdespeckle run`` in PROJECT_PYTHON, block by block) and reports:
the module's peak above the scene it started from, the largest ``usdespeckle run`` process's peak
(its ``VmHWM`` sampled every 50 ms while it runs: the children's ``ru_maxrss`` would count the
pages a forked child shares with this process before it execs),
the input's and output's bytes and the number of blocks. Run by tests/slicer/test_sequences.py;
its numbers are quoted in SlicerDespeckle/README.md.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "SlicerDespeckle"))

import slicer
import slicer.util
from SlicerDespeckleLib.logic import DespeckleLogic
from SlicerDespeckleLib.sequences import frame_blocks, read_source


def _status_kib(field: str, pid: int | str = "self") -> int:
    """A ``/proc/<pid>/status`` field in KiB (0 once the process is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def main() -> None:
    python, frames = sys.argv[1], int(sys.argv[2])
    method = sys.argv[3] if len(sys.argv) > 3 and not sys.argv[3].startswith("--") else "median"
    eight_bit = "--eight-bit" in sys.argv
    scene = slicer.mrmlScene = slicer.vtkMRMLScene()
    sequences_logic = slicer.vtkSlicerSequencesLogic()
    sequences_logic.SetMRMLScene(scene)
    rng = np.random.default_rng(0)
    base = (rng.rayleigh(40.0, (4, 480, 640, 1)) * [1.0, 0.8, 0.6]).clip(0, 255).astype(np.uint8)
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "long cine")
    frame = slicer.vtkMRMLVectorVolumeNode()
    for item in range(frames):
        pixels = np.roll(base[item % 4], item, axis=1)[np.newaxis]  # (1, 480, 640, 3), colour
        slicer.util.updateVolumeFromArray(frame, np.ascontiguousarray(pixels))
        sequence.SetDataNodeAtValue(frame, str(item))
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "long cine browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    sequences_logic.UpdateProxyNodesFromSequences(browser)
    del base, pixels
    gc.collect()
    blocks = len(frame_blocks(read_source(sequence, scene, 0)))
    Path("/proc/self/clear_refs").write_text("5")  # peak resident size := current
    start_kib = _status_kib("VmRSS")
    started = time.monotonic()
    logic = DespeckleLogic(python, sequences_logic=sequences_logic)
    job = logic.start(sequence, method=method, eight_bit=eight_bit)
    process_peak_kib = 0
    while not job.poll():  # what DespeckleLogic.process does, sampling each block process's peak
        if job.current is not None:
            process_peak_kib = max(process_peak_kib, _status_kib("VmHWM", job.current.process.pid))
        time.sleep(0.05)
    output = logic.finish(job)
    seconds = time.monotonic() - started
    peak_kib = _status_kib("VmHWM")
    assert output.GetNumberOfDataNodes() == frames
    result = slicer.util.arrayFromVolume(output.GetNthDataNode(frames - 1))
    print(
        json.dumps(
            {
                "frames": frames,
                "method": method,
                "eight_bit": eight_bit,
                "blocks": blocks,
                "input_bytes": frames * 480 * 640 * 3,
                "output_bytes": frames * 480 * 640 * result.dtype.itemsize,
                "output_dtype": str(result.dtype),
                "module_peak_above_scene_bytes": (peak_kib - start_kib) * 1024,
                "process_peak_bytes": process_peak_kib * 1024,
                "seconds": round(seconds, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
