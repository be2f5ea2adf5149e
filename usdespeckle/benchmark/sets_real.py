"""The benchmark's real test sets: held-out real B-mode frames and the held-out cine block.

No reference: each case carries its imaging-field mask, the regions (the stored homogeneous boxes, the gCNR pair chosen on the frame) and the speckle grain
measured on the input (which sets the fidelity's low-pass and the estimator M's offsets). Loaders
have the signature ``load(data_dir, limit, seed, size) -> LoadedSet``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from usdespeckle.benchmark.cases import (
    DEFAULT_SIGMA,
    GLCM_PER_GRAIN,
    SIGMA_PER_GRAIN,
    SIGMA_RANGE,
    Case,
    LoadedSet,
    datalist_split,
    read_grey,
    spread,
)
from usdespeckle.data.real_bmode import contrast_boxes

REAL_DATALIST = "datalist_real_bmode.json"
CINE_CROP = (256, 256)  # the cine is cut to at most this window (rows, columns) around the field's centre


def speckle_grain(
    image: np.ndarray, field: np.ndarray, regions: dict[str, Any]
) -> tuple[float, float] | None:
    """Speckle grain (axial, lateral autocorrelation FWHM, pixels) in the largest homogeneous box.

    Uses :func:`usdespeckle.simulation.psf.autocorrelation_fwhm` on the input inside the largest stored
    homogeneous box that lies wholly in the field and measures at least 8 x 8; None without one.
    """
    from usdespeckle.simulation.psf import autocorrelation_fwhm

    best = None
    for box in regions.get("homogeneous", []):
        r0, c0, r1, c1 = (int(v) for v in box)
        big_enough = r1 - r0 >= 8 and c1 - c0 >= 8 and field[r0:r1, c0:c1].all()
        if big_enough and (best is None or (r1 - r0) * (c1 - c0) > (best[2] - best[0]) * (best[3] - best[1])):
            best = (r0, c0, r1, c1)
    if best is None:
        return None
    try:
        axial, lateral = autocorrelation_fwhm(image[best[0] : best[2], best[1] : best[3]])
    except ValueError:  # a constant box
        return None
    return float(axial), float(lateral)


def _read_real(data_dir: Path, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    image = read_grey(Path(data_dir) / entry["image"])
    field_mask = read_grey(Path(data_dir) / entry["mask"]) > 0.5
    if field_mask.shape != image.shape:
        raise ValueError(
            f"mask {entry['mask']} has shape {field_mask.shape} but image {entry['image']} has "
            f"{image.shape}; rerun prepare-data."
        )
    return image, field_mask


def _by_source(entries: list[dict], limit: int | None) -> list[dict]:
    """``limit`` entries taken in turn from each source (scan), evenly spaced within each."""
    groups: dict[str, list[dict]] = {}
    for entry in entries:
        groups.setdefault(str(entry.get("source", "")), []).append(entry)
    if limit is None:
        return list(entries)
    counts = dict.fromkeys(groups, 0)
    for turn in range(int(limit)):
        open_groups = [g for g in groups if counts[g] < len(groups[g])]
        if not open_groups:
            break
        counts[open_groups[turn % len(open_groups)]] += 1
    return [entry for g, items in groups.items() for entry in spread(items, counts[g])]


def _missing_real(data_dir: Path | None) -> LoadedSet:
    where = "no --data given" if data_dir is None else f"no {REAL_DATALIST} in {data_dir}"
    return LoadedSet([], [f"SKIPPED: {where}; `usdespeckle prepare-data` makes the real_bmode dataset"])


def load_real(data_dir: Path | None, limit: int | None, seed: int, size: int) -> LoadedSet:
    entries = datalist_split(data_dir, REAL_DATALIST, "test")
    if entries is None:
        return _missing_real(data_dir)
    cases = []
    for entry in _by_source(entries, limit):
        image, field_mask = _read_real(Path(data_dir), entry)
        # The gCNR pair is chosen here from the frame (two tissues of similar echogenicity), not read
        # from the datalist, whose older darkest/brightest boxes were separable in every output.
        regions = {**entry["regions"], **contrast_boxes(image, field_mask)}
        grain = speckle_grain(image, field_mask, regions)
        cases.append(
            Case(Path(entry["image"]).stem, image, None, field=field_mask, regions=regions, grain_px=grain)
        )
    sources = sorted({str(e.get("source", "?")) for e in entries})
    grains = [c.grain_px for c in cases if c.grain_px is not None]
    if grains:
        axial, lateral = np.median(np.asarray(grains), axis=0)
        sigmas = ", ".join(f"{c.sigma:.1f}" for c in cases)
        measured = f"speckle grain (median) {axial:.1f} x {lateral:.1f} px axial x lateral; fidelity sigma {sigmas} px"
    else:
        measured = f"no homogeneous box to measure the grain: fidelity sigma {DEFAULT_SIGMA:g} px"
    notes = [
        f"held-out real frames: 'test' split of {Path(data_dir) / REAL_DATALIST} ({len(entries)} frames from "
        f"{', '.join(sources)}); {len(cases)} taken in turn from each scan, evenly spaced; native resolution",
        "no reference: every score is inside the imaging field; fidelity = echogenicity fidelity against "
        f"the input (Gaussian low-pass, sigma = {SIGMA_PER_GRAIN:g} x the speckle grain's FWHM measured in "
        f"the largest homogeneous box, {SIGMA_RANGE[0]:g}-{SIGMA_RANGE[1]:g} px; isotonic fit); gCNR and CNR "
        "of a dark against a bright tissue box chosen on the input by real_bmode.contrast_boxes (similar "
        "echogenicities, input gCNR near 0.5, so smoothing can raise it), ENL mean over the homogeneous boxes; M = ratio-image "
        "estimator on the residual input - output (0 = pure speckle removed; infinite for the input itself), "
        f"its co-occurrences {GLCM_PER_GRAIN:g} grains apart",
        measured,
    ]
    return LoadedSet(cases, notes)


def load_cine(data_dir: Path | None, limit: int | None, seed: int, size: int) -> LoadedSet:
    entries = datalist_split(data_dir, REAL_DATALIST, "cine_test")
    if entries is None:
        return _missing_real(data_dir)
    entries = sorted(entries, key=lambda e: int(e["frame"]))
    if limit is not None and limit < len(entries):  # a centred run of consecutive frames
        start = (len(entries) - int(limit)) // 2
        entries = entries[start : start + int(limit)]
    if len(entries) < 2:
        return LoadedSet([], [f"SKIPPED: the cine needs at least 2 frames; {len(entries)} selected"])
    frames, fields = zip(*(_read_real(Path(data_dir), e) for e in entries), strict=True)
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"cine_test frames have different shapes {sorted({f.shape for f in frames})}.")
    field_mask = np.logical_and.reduce(fields)
    grain = speckle_grain(frames[0], field_mask, dict(entries[0]["regions"]))
    # A window around the field's centre keeps the slow methods within the time budget.
    rows, cols = np.nonzero(field_mask)
    window = []
    for centre, extent, size_limit in zip(
        (rows.mean(), cols.mean()), field_mask.shape, CINE_CROP, strict=True
    ):
        length = min(extent, size_limit)
        start = int(np.clip(round(centre - length / 2), 0, extent - length))
        window.append(slice(start, start + length))
    stack = np.stack(frames)[:, window[0], window[1]].astype(np.float32)
    first, last = int(entries[0]["frame"]), int(entries[-1]["frame"])
    case = Case(
        f"frames_{first:03d}-{last:03d}", stack, None, field=field_mask[window[0], window[1]], grain_px=grain
    )
    notes = [
        f"held-out cine block: 'cine_test' of {Path(data_dir) / REAL_DATALIST} "
        f"({entries[0].get('source', '?')}), frames {first}-{last} ({len(entries)} consecutive frames), "
        "each despeckled on its own (no method here uses time); cut to rows "
        f"{window[0].start}-{window[0].stop - 1}, columns {window[1].start}-{window[1].stop - 1} (at most "
        f"{CINE_CROP[0]}x{CINE_CROP[1]} around the field's centre)",
        "flicker = mean |frame t+1 - frame t| of the output inside the field, relative to the input's "
        "(input 1; lower is calmer, but read it beside fidelity: flattening the image also lowers it); "
        "fidelity: per-frame mean",
    ]
    return LoadedSet([case], notes)
