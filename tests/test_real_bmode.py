"""Real B-mode from pydicom-data's clinical scans: imaging field, masks, splits and regions."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from usdespeckle.data import real_bmode
from usdespeckle.data.real_bmode import (
    CINE_BLOCKS,
    CINE_FILE,
    REAL_SCANS,
    choose_regions,
    extract_frames,
    frame_split,
)

pytestmark = pytest.mark.slow  # decoding the 120-frame cine takes 10-30 s

# Pixel-by-pixel correlation above which two frames count as near-duplicates: neighbouring cine
# frames correlate 0.91-1.0, frames 8 or more apart at most about 0.91 (measured on this cine).
NEAR_DUPLICATE = 0.93


@pytest.fixture(scope="module")
def cine_frames():
    return extract_frames(CINE_FILE)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_no_test_frame_has_a_near_duplicate_in_training(cine_frames):
    by_split: dict[str, list[np.ndarray]] = {}
    scan = next(s for s in REAL_SCANS if s.file == CINE_FILE)
    for frame in cine_frames:
        split = frame_split(scan, frame.frame)
        if split is not None:
            by_split.setdefault(split, []).append(frame.image)
    assert len(by_split["test"]) == CINE_BLOCKS["test"][1] - CINE_BLOCKS["test"][0]
    worst = max(_correlation(t, r) for t in by_split["test"] for r in by_split["training"])
    neighbours = np.median([_correlation(a.image, b.image) for a, b in itertools.pairwise(cine_frames)])
    assert neighbours > NEAR_DUPLICATE  # the rule does detect neighbouring frames as near-duplicates
    assert worst < NEAR_DUPLICATE, f"a test frame correlates {worst:.3f} with a training frame"


def test_field_mask_excludes_colour_text_and_outside(cine_frames):
    # the lymph-node export has a colour Doppler overlay and text; none of it may be valid
    rgb = real_bmode._read_rgb(real_bmode.dicom_path("US1_UNCR.dcm"))[0]
    colour = (rgb.max(axis=-1) - rgb.min(axis=-1)) > real_bmode.COLOUR_THRESHOLD
    (frame,) = extract_frames("US1_UNCR.dcm")
    r0, c0, r1, c1 = frame.box
    assert colour[r0:r1, c0:c1].sum() > 1000  # the overlay lies inside the field...
    assert not (frame.mask & colour[r0:r1, c0:c1]).any()  # ...and is masked out
    assert frame.box[0] > 20  # the header text above the image is outside the field
    assert (frame.image[~frame.mask] == 0).all()
    # the cardiac fan: a large valid field, black outside, far smaller than the exported frame
    first = cine_frames[0]
    assert 0.4 < first.mask.mean() < 0.95
    assert first.image.shape[0] < 480
    assert first.image.shape[1] < 640


def test_two_panes_become_two_images():
    frames = extract_frames("gdcm-US-ALOKA-16.dcm")
    assert [f.pane for f in frames] == [0, 1]
    left, right = frames
    assert left.box[3] <= right.box[1] + 2  # side by side, no overlap


def test_regions_pick_two_tissues_not_the_cyst_and_the_wall():
    # Left half tissue of echogenicity 0.45, right half 0.55, both under strong speckle; an anechoic
    # cyst and a bright wall would make a pair any method separates (gCNR 1), so the rule avoids them.
    rng = np.random.default_rng(0)
    image = np.where(np.arange(192)[None, :] < 96, 0.45, 0.55) * np.ones((144, 1))
    rows, cols = np.mgrid[0:144, 0:192]
    image[(rows - 36) ** 2 + (cols - 40) ** 2 < 18**2] = 0.02  # a cyst
    image[(rows - 110) ** 2 + (cols - 150) ** 2 < 18**2] = 0.98  # a bright wall
    image = np.clip(image + rng.normal(0, 0.08, image.shape), 0, 1).astype(np.float32)
    regions = choose_regions(image, np.ones(image.shape, bool))
    for key, level in (("dark", 0.45), ("bright", 0.55)):
        r0, c0, r1, c1 = regions[key]
        assert abs(float(image[r0:r1, c0:c1].mean()) - level) < 0.03, (key, regions[key])
    from usdespeckle import metrics

    def region_gcnr(img: np.ndarray) -> float:
        return metrics.region_contrast(img, regions)["gcnr"]

    assert region_gcnr(image) < 0.9  # speckle hides the step in the input
    from scipy import ndimage

    assert region_gcnr(ndimage.uniform_filter(image, 7)) > region_gcnr(image) + 0.2  # smoothing reveals it
    assert len(regions["homogeneous"]) == real_bmode.HOMOGENEOUS_REGIONS
    with pytest.raises(ValueError, match="too small"):
        choose_regions(image, np.zeros(image.shape, bool))


def test_contrast_boxes_leave_room_on_real_validation_frames():
    """On the real validation frames the input's gCNR is well below 1 and a smoothing filter raises it."""
    from usdespeckle import metrics
    from usdespeckle.runtime import filters

    scans = [s for s in REAL_SCANS if s.split in ("validation", "blocks")]
    frames = []
    for scan in scans:
        start, stop = CINE_BLOCKS["validation"] if scan.split == "blocks" else (0, None)
        frames += [
            f
            for f in extract_frames(scan.file, None if stop is None else range(start, stop, 4))
            if frame_split(scan, f.frame) == "validation"
        ]
    assert len(frames) >= 4
    gains = []
    for frame in frames:
        boxes = real_bmode.contrast_boxes(frame.image, frame.mask)
        for r0, c0, r1, c1 in boxes.values():
            assert frame.mask[r0:r1, c0:c1].all()
        before = metrics.region_contrast(frame.image, boxes, frame.mask)["gcnr"]
        after = metrics.region_contrast(filters.despeckle(frame.image, "tv"), boxes, frame.mask)["gcnr"]
        assert before < 0.95, (frame.stem, before)
        gains.append(after - before)
    assert all(g > 0 for g in gains), gains
    assert float(np.mean(gains)) > 0.1, gains


def test_datalist_and_manifest(tmp_path):
    written: dict[str, np.ndarray] = {}

    def save(rel: str, image: np.ndarray) -> str:
        written[rel] = image
        return rel

    datalist, scans = real_bmode.real_bmode_items(save, progress=False)
    assert set(datalist) == {"training", "validation", "test", "cine_test"}
    frames = [item["frame"] for item in datalist["cine_test"]]
    assert frames == list(range(*CINE_BLOCKS["test"]))
    sources = {split: {item["source"] for item in items} for split, items in datalist.items()}
    for a in ("training", "validation", "test"):  # whole scans never straddle splits (but the cine)
        for b in ("training", "validation", "test"):
            if a != b:
                assert sources[a] & sources[b] <= {f"pydicom-data:{CINE_FILE}"}
    for item in datalist["test"]:
        mask = written[item["mask"]] > 0
        for r0, c0, r1, c1 in [item["regions"]["dark"], item["regions"]["bright"]]:
            assert mask[r0:r1, c0:c1].all()
    by_file = {scan["file"]: scan for scan in scans}
    assert by_file[CINE_FILE]["frames"] == {s: list(b) for s, b in CINE_BLOCKS.items()}
    assert all(len(scan["sha256"]) == 64 for scan in scans)
    json.dumps(datalist)  # plain JSON types only
