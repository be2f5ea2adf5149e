"""Real B-mode frames from the clinical ultrasound DICOMs that the ``pydicom-data`` package ships.

Scanner exports carry more than the image: text, rulers, icons, calipers, a colour Doppler overlay
and black space around a fan or rectangle. :func:`extract_frames` keeps only the imaging field:

1. grey = mean of the RGB channels; a pixel whose channels differ by more than
   :data:`COLOUR_THRESHOLD` grey levels (of 255) is colour (Doppler, coloured icons) and is masked;
2. the field is found from the image itself: the pixels above :data:`FIELD_THRESHOLD` in the
   maximum over all frames, closed (speckle holes), opened with a disk wider than any text stroke
   or ruler (text and thin lines vanish), the large connected components kept (one per pane), holes
   filled after a closing that also fills dark areas reaching the pane's edge, and eroded by
   :data:`FIELD_MARGIN` pixels (JPEG ringing at the edge);
3. inside the field, straight bright lines (a region-of-interest box, a depth ruler) are masked:
   pixels brighter than their 7x7 median by :data:`LINE_CONTRAST` that form runs of at least
   :data:`LINE_LENGTH` pixels along a row or a column.

Each pane (component) becomes one image, cropped to its bounding box at native resolution, with a
valid-pixel mask. Splits are by scan, and inside the cardiac cine by contiguous blocks of frames
with gaps between them (:data:`CINE_BLOCKS`), since neighbouring frames are nearly identical.
Regions for gCNR, CNR and ENL are chosen once per image by :func:`choose_regions`
(the gCNR pair by :func:`contrast_boxes`, which the benchmark also applies to each frame it reads).

The scans and their splits are :data:`REAL_SCANS`; nothing is downloaded (the DICOMs are installed
with ``pip install pydicom-data``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import disk

from usdespeckle.data.sources import package_file
from usdespeckle.runtime.bundle_utils import sha256_file

__all__ = [
    "CINE_BLOCKS",
    "CINE_FILE",
    "REAL_SCANS",
    "RealFrame",
    "RealScan",
    "choose_regions",
    "contrast_boxes",
    "dicom_path",
    "extract_frames",
    "field_masks",
    "frame_split",
    "real_bmode_items",
]

COLOUR_THRESHOLD = 12.0  # grey levels (of 255): max - min of RGB above this is colour, not B-mode
FIELD_THRESHOLD = 10.0  # grey levels: brighter pixels (in the maximum over frames) are field candidates
FIELD_OPEN_RADIUS = 7  # pixels: the opening removes text strokes and rulers narrower than 15 px
FIELD_CLOSE_RADIUS = 2  # pixels: the closing fills small dark speckle holes before the opening
FIELD_FILL_RADIUS = 20  # pixels: the closing of each pane that fills dark areas reaching its edge
FIELD_MIN_FRACTION = 0.2  # a component at least this fraction of the largest one is a pane of its own
FIELD_MARGIN = 3  # pixels eroded off the field's edge
LINE_CONTRAST = 50.0  # grey levels above the 7x7 median that mark a drawn bright line
LINE_LENGTH = 25  # pixels: the shortest straight run counted as a drawn line
REGION_SIZE = 24  # pixels: side of the square regions chosen for gCNR, CNR and ENL
REGION_STRIDE = 8  # pixels between candidate regions
HOMOGENEOUS_REGIONS = 3  # homogeneous regions chosen per image (for ENL)

CINE_FILE = "color3d_jpeg_baseline.dcm"
# Frame blocks of the 120-frame cardiac cine, half-open [start, stop), with 8-frame gaps between
# them: frames 8 apart correlate at most 0.91 pixel by pixel (neighbours 0.95-1.0; the loop repeats
# some frames exactly). Later cardiac cycles still resemble earlier ones at the same phase.
CINE_BLOCKS = {"training": (0, 72), "validation": (80, 92), "test": (100, 120)}


@dataclass(frozen=True)
class RealScan:
    """One clinical ultrasound DICOM of ``pydicom-data`` and the split its frames go to.

    Args:
        file: file name under ``data_store/data/``.
        split: "training", "validation" or "test"; "blocks" splits the frames by :data:`CINE_BLOCKS`.
        description: what the scan shows.
    """

    file: str
    split: str
    description: str


REAL_SCANS = (
    RealScan(CINE_FILE, "blocks", "cardiac cine, parasternal long axis, 120 frames, YBR JPEG"),
    RealScan("gdcm-US-ALOKA-16.dcm", "training", "pelvis, two panes side by side, 16-bit RGB"),
    RealScan("OBXXXX1A_2frame.dcm", "validation", "obstetric curved sector, 2 frames"),
    RealScan("US1_UNCR.dcm", "test", "lymph node, linear probe, colour power Doppler overlay"),
)
# OBXXXX1A.dcm is frame 0 of OBXXXX1A_2frame.dcm (identical pixels); only the 2-frame file is used.


@dataclass
class RealFrame:
    """One real B-mode image: the imaging field of one pane of one frame.

    Attributes:
        image: (H, W) float32 in [0, 1], 0 outside the field.
        mask: (H, W) bool, True on valid imaging-field pixels.
        file: DICOM file name.
        frame: frame index in the file.
        pane: pane index (0 unless the export shows several panes side by side).
        box: (r0, c0, r1, c1) of the crop in the exported frame, pixels.
    """

    image: np.ndarray
    mask: np.ndarray
    file: str
    frame: int
    pane: int
    box: tuple[int, int, int, int]

    @property
    def stem(self) -> str:
        """A file stem naming scan, frame and pane."""
        name = Path(self.file).stem.replace(".", "_")
        return f"{name}_f{self.frame:03d}" + (f"_p{self.pane}" if self.pane else "")


def dicom_path(file: str) -> Path:
    """Path of an ultrasound DICOM installed by ``pydicom-data``.

    Raises:
        FileNotFoundError: the package or the file is not installed.
    """
    return package_file("data_store", f"data/{file}", "pydicom-data")  # data_store: pydicom-data's package


def _read_rgb(path: Path) -> np.ndarray:
    """(frames, H, W, 3) float64 in 0-255 grey levels (16-bit exports rescaled)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    if image.GetNumberOfComponentsPerPixel() == 1:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim == 3:  # a single frame
        array = array[None]
    if array.max() > 255.0:  # 16 bits per channel
        array = array / 257.0
    return array


def _colour(rgb: np.ndarray) -> np.ndarray:
    """True where the RGB channels differ: a colour overlay, not B-mode grey."""
    return (rgb.max(axis=-1) - rgb.min(axis=-1)) > COLOUR_THRESHOLD


def field_masks(grey_max: np.ndarray) -> list[np.ndarray]:
    """The imaging field(s) of an export, one bool mask per pane, left to right.

    Args:
        grey_max: (H, W) maximum over frames of the grey image with colour pixels set to 0.

    Returns:
        list of (H, W) bool masks, one per pane (eroded by :data:`FIELD_MARGIN`).

    Raises:
        ValueError: no imaging field is found.
    """
    candidates = grey_max > FIELD_THRESHOLD
    candidates = ndi.binary_closing(candidates, structure=disk(FIELD_CLOSE_RADIUS))
    candidates = ndi.binary_opening(candidates, structure=disk(FIELD_OPEN_RADIUS))
    labels, count = ndi.label(candidates)
    if count == 0:
        raise ValueError("no imaging field found: the image is dark everywhere.")
    areas = ndi.sum(candidates, labels, index=np.arange(1, count + 1))
    keep = [k + 1 for k in np.argsort(areas)[::-1] if areas[k] >= FIELD_MIN_FRACTION * areas.max()]
    masks = []
    for label in keep:
        pad = FIELD_FILL_RADIUS + 1
        component = np.pad(labels == label, pad)
        component = ndi.binary_closing(component, structure=disk(FIELD_FILL_RADIUS))[pad:-pad, pad:-pad]
        component = ndi.binary_fill_holes(component)
        masks.append(ndi.binary_erosion(component, iterations=FIELD_MARGIN))
    masks.sort(key=lambda m: int(np.nonzero(m.any(axis=0))[0][0]))
    return masks


def _drawn_lines(grey: np.ndarray) -> np.ndarray:
    """True on straight bright drawn lines (ROI boxes, rulers), dilated by 2 pixels."""
    bright = (grey - ndi.median_filter(grey, size=7)) > LINE_CONTRAST
    lines = ndi.binary_opening(bright, structure=np.ones((1, LINE_LENGTH), bool))
    lines |= ndi.binary_opening(bright, structure=np.ones((LINE_LENGTH, 1), bool))
    return ndi.binary_dilation(lines, iterations=2)


@functools.lru_cache(maxsize=4)
def _scan(file: str) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """(grey frames, colour masks, pane fields) of one DICOM, cached: decoding a cine takes seconds."""
    rgb = _read_rgb(dicom_path(file))
    grey = rgb.mean(axis=-1)
    colour = _colour(rgb)
    panes = field_masks(np.where(colour, 0.0, grey).max(axis=0))
    return grey, colour, tuple(panes)


def extract_frames(file: str, frames: range | None = None) -> list[RealFrame]:
    """The imaging field of every pane of the chosen frames of a ``pydicom-data`` ultrasound DICOM.

    Args:
        file: DICOM file name (see :data:`REAL_SCANS`).
        frames: frame indices; None for all. The field is found from all frames of the file.

    Returns:
        one :class:`RealFrame` per frame and pane, in frame order.

    Raises:
        FileNotFoundError: pydicom-data or the file is not installed.
        ValueError: a frame index out of range, or no imaging field.
    """
    grey, colour, panes = _scan(file)
    chosen = range(len(grey)) if frames is None else frames
    if len(chosen) and (min(chosen) < 0 or max(chosen) >= len(grey)):
        raise ValueError(f"{file} has {len(grey)} frames; frames {chosen} are out of range.")
    out = []
    for index in chosen:
        invalid = ndi.binary_dilation(colour[index], iterations=2) | _drawn_lines(grey[index])
        for pane, field in enumerate(panes):
            rows, cols = np.nonzero(field)
            r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            mask = (field & ~invalid)[r0:r1, c0:c1]
            image = np.where(mask, grey[index, r0:r1, c0:c1] / 255.0, 0.0).astype(np.float32)
            out.append(RealFrame(image, mask, file, int(index), pane, (int(r0), int(c0), int(r1), int(c1))))
    return out


def frame_split(scan: RealScan, frame: int) -> str | None:
    """The split of one frame of a scan (None for frames in the gaps between cine blocks)."""
    if scan.split != "blocks":
        return scan.split
    for split, (start, stop) in CINE_BLOCKS.items():
        if start <= frame < stop:
            return split
    return None


CONTRAST_TARGET_GCNR = 0.5  # the input's gCNR the dark/bright pair is chosen for: room to rise and fall
CONTRAST_MIN_LOWPASS_GCNR = 0.9  # the pair's gCNR after the 4-pixel low-pass: a real echogenicity step
TISSUE_PERCENTILES = (40.0, 97.0)  # candidate means (low-passed) counted as tissue, not cavity or wall
CONTRAST_SHORTLIST = 12  # pairs scored exactly, chosen by the Gaussian approximation
_CNR_AT_TARGET = 0.954  # CNR of two equal-variance Gaussians whose gCNR is 0.5: 2 Phi(CNR / sqrt 2) - 1


def _candidate_corners(mask: np.ndarray, size: int) -> np.ndarray:
    """Top-left corners (N, 2) of the ``size`` squares lying wholly in ``mask``, every :data:`REGION_STRIDE` px."""
    inside = ndi.minimum_filter(mask.astype(np.uint8), size=size, origin=-(size // 2)) > 0
    h, w = mask.shape
    corners = [
        (r, c)
        for r in range(0, h - size + 1, REGION_STRIDE)
        for c in range(0, w - size + 1, REGION_STRIDE)
        if inside[r, c]
    ]
    if len(corners) < 2:
        raise ValueError(
            f"the imaging field ({int(mask.sum())} pixels) is too small for {size}-pixel regions."
        )
    return np.asarray(corners, dtype=np.int64)


def _box(corner: np.ndarray | tuple[int, int], size: int) -> list[int]:
    return [int(corner[0]), int(corner[1]), int(corner[0] + size), int(corner[1] + size)]


def contrast_boxes(image: np.ndarray, mask: np.ndarray) -> dict[str, list[int]]:
    """The ``dark`` and ``bright`` boxes whose gCNR a despeckler should raise: two tissues, not tissue and void.

    The darkest and brightest boxes of a frame (a cardiac cavity against the myocardium, an
    anechoic gap against a bright wall) are separable already in the speckled input, so their gCNR
    is 1.000 for every method and measures nothing. This rule picks two boxes of similar but
    different echogenicity, where speckle hides a real step and smoothing can reveal it:

    1. candidates are :data:`REGION_SIZE` squares wholly inside the field (every
       :data:`REGION_STRIDE` px) whose mean on the image low-passed at 4 px lies between the
       :data:`TISSUE_PERCENTILES` of all candidates' means (tissue: no cavity, no brightest wall),
       and of those the more homogeneous half (least low-passed spread relative to the mean);
    2. of the non-overlapping pairs, those whose low-passed gCNR is at least
       :data:`CONTRAST_MIN_LOWPASS_GCNR` (the two echogenicities differ once speckle is averaged
       out; if no pair reaches it, the most separable pairs) compete, and the pair whose gCNR on
       the input is closest to :data:`CONTRAST_TARGET_GCNR` wins (the :data:`CONTRAST_SHORTLIST`
       pairs nearest by the Gaussian approximation are scored exactly). ``dark`` is the one of lower
       mean.

    The rule reads the input only, so every method is scored on the same boxes; on the held-out
    frames the input's gCNR is about 0.5 and a smoothing filter raises it to 0.6-0.95.

    Args:
        image: (H, W) grey image in [0, 1].
        mask: (H, W) bool valid-pixel mask.

    Returns:
        ``{"dark": [r0, c0, r1, c1], "bright": [...]}``, half-open boxes.

    Raises:
        ValueError: the field is too small to hold two regions.
    """
    from usdespeckle.metrics import gcnr

    size = REGION_SIZE
    img = np.asarray(image, dtype=np.float64)
    smooth = ndi.gaussian_filter(img, 4.0)
    corners = _candidate_corners(np.asarray(mask, dtype=bool), size)

    def block_stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        blocks = np.stack([a[r : r + size, c : c + size] for r, c in corners])
        return blocks.mean(axis=(1, 2)), blocks.var(axis=(1, 2))

    mean, var = block_stats(img)
    low_mean, low_var = block_stats(smooth)
    low, high = np.percentile(low_mean, TISSUE_PERCENTILES)
    tissue = np.flatnonzero((low_mean >= low) & (low_mean <= high))
    if len(tissue) < 2:
        tissue = np.arange(len(corners))
    relative_spread = np.sqrt(low_var[tissue]) / np.maximum(low_mean[tissue], 1e-6)
    kept = tissue[np.argsort(relative_spread, kind="stable")[: max(2, len(tissue) // 2)]]
    first, second = np.triu_indices(len(kept), 1)
    first, second = kept[first], kept[second]
    apart = (np.abs(corners[first, 0] - corners[second, 0]) >= size) | (
        np.abs(corners[first, 1] - corners[second, 1]) >= size
    )
    if not apart.any():  # a narrow field: allow overlapping boxes rather than fail
        apart[:] = True
    first, second = first[apart], second[apart]
    cnr_input = np.abs(mean[first] - mean[second]) / np.sqrt(var[first] + var[second] + 1e-12)
    cnr_low = np.abs(low_mean[first] - low_mean[second]) / np.sqrt(low_var[first] + low_var[second] + 1e-12)
    # CNR 2.0 of two Gaussians is gCNR 0.84; the exact low-passed gCNR decides below.
    separable = np.flatnonzero(cnr_low >= min(2.0, float(cnr_low.max())))
    shortlist = separable[np.argsort(np.abs(cnr_input[separable] - _CNR_AT_TARGET), kind="stable")]
    best_key, best_pair = None, (first[0], second[0])
    for k in shortlist[:CONTRAST_SHORTLIST]:
        masks = []
        for j in (first[k], second[k]):
            box_mask = np.zeros(img.shape, dtype=bool)
            r, c = corners[j]
            box_mask[r : r + size, c : c + size] = True
            masks.append(box_mask)
        key = (
            gcnr(smooth, *masks) < CONTRAST_MIN_LOWPASS_GCNR,
            abs(gcnr(img, *masks) - CONTRAST_TARGET_GCNR),
        )
        if best_key is None or key < best_key:
            best_key, best_pair = key, (first[k], second[k])
    dark, bright = sorted(best_pair, key=lambda j: mean[j])
    return {"dark": _box(corners[dark], size), "bright": _box(corners[bright], size)}


def choose_regions(image: np.ndarray, mask: np.ndarray) -> dict[str, list]:
    """Regions for gCNR, CNR and ENL, chosen by a rule on the input image.

    ``dark`` and ``bright`` are two tissue boxes of similar but different echogenicity
    (:func:`contrast_boxes`). ``homogeneous`` are the :data:`HOMOGENEOUS_REGIONS` non-overlapping
    candidate squares (:data:`REGION_SIZE` pixels wholly inside the mask, every
    :data:`REGION_STRIDE` pixels) of mid grey level (between the 25th and 90th percentile of the
    candidates' means on the image low-passed at 4 pixels) whose low-passed image varies least
    relative to its mean: areas of uniform tissue, where speckle is the only texture.

    Args:
        image: (H, W) grey image in [0, 1].
        mask: (H, W) bool valid-pixel mask.

    Returns:
        {"dark": [r0, c0, r1, c1], "bright": [...], "homogeneous": [[...], ...]}; half-open boxes.

    Raises:
        ValueError: the field is too small to hold two regions.
    """
    size = REGION_SIZE
    smooth = ndi.gaussian_filter(image.astype(np.float64), 4.0)
    corners = _candidate_corners(np.asarray(mask, dtype=bool), size)
    means = np.array([smooth[r : r + size, c : c + size].mean() for r, c in corners])
    spread = np.array([smooth[r : r + size, c : c + size].std() for r, c in corners])
    low, high = np.percentile(means, [25, 90])
    order = [k for k in np.argsort(spread / np.maximum(means, 1e-6)) if low <= means[k] <= high]
    homogeneous: list[tuple[int, int]] = []
    for k in order:
        r, c = corners[k]
        if all(abs(r - r2) >= size or abs(c - c2) >= size for r2, c2 in homogeneous):
            homogeneous.append((r, c))
        if len(homogeneous) == HOMOGENEOUS_REGIONS:
            break
    return {**contrast_boxes(image, mask), "homogeneous": [_box(c, size) for c in homogeneous]}


def real_bmode_items(write_png, progress: bool = True) -> tuple[dict[str, list[dict]], list[dict]]:
    """Every real B-mode image of :data:`REAL_SCANS`, written and listed by split.

    Args:
        write_png: ``f(relative_path, image) -> relative_path`` that stores a [0, 1] grey image.
        progress: show a progress bar.

    Returns:
        (datalist {"training", "validation", "test", "cine_test"} of items with ``image``, ``mask``,
        ``source``, ``frame``, ``pane``, ``regions``; the manifest's list of scans with file, sha256,
        frame ranges per split).
    """
    from tqdm import tqdm

    datalist: dict[str, list[dict]] = {"training": [], "validation": [], "test": [], "cine_test": []}
    scans = []
    for scan in tqdm(REAL_SCANS, desc="real B-mode", disable=None if progress else True, leave=False):
        path = dicom_path(scan.file)
        frames = extract_frames(scan.file)
        used: dict[str, list[int]] = {}
        for frame in frames:
            split = frame_split(scan, frame.frame)
            if split is None:
                continue
            image_rel = write_png(f"real_bmode/{frame.stem}.png", frame.image)
            mask_rel = write_png(f"real_bmode/{frame.stem}_mask.png", frame.mask.astype(np.float32))
            item = {
                "image": image_rel,
                "mask": mask_rel,
                "source": f"pydicom-data:{scan.file}",
                "frame": frame.frame,
                "pane": frame.pane,
                "regions": choose_regions(frame.image, frame.mask),
            }
            datalist[split].append(item)
            if scan.file == CINE_FILE and split == "test":
                datalist["cine_test"].append(item)
            used.setdefault(split, []).append(frame.frame)
        scans.append(
            {
                "file": scan.file,
                "sha256": sha256_file(path),
                "description": scan.description,
                "frames": {s: [min(v), max(v) + 1] for s, v in used.items()},
                "panes": len({f.pane for f in frames}),
            }
        )
    return datalist, scans
