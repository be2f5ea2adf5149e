"""Compare denoiser training runs at equal budget on validation data; writes a Markdown table.

Each run is a bundle folder whose ``models/model.pt`` was trained with ``configs/train.json`` and
the overrides given on the command line (the run's name). Everything here reads validation splits
only (the test splits stay for ``usdespeckle benchmark``):

- synthetic pairs with a reference: MRI through the simulator, photographs with the paper's Rayleigh
  speckle, with Gamma L=1 and L=4 speckle, and echogenicity maps through the randomised acquisition
  chain: PSNR and SSIM (one network pass);
- real B-mode validation frames (no reference): echogenicity fidelity
  (:func:`usdespeckle.metrics.echogenicity_fidelity` at ``FIDELITY_SIGMA_PX``, inside the field), gCNR between the stored dark and bright regions, and a checkerboard index: the output's
  spectral power at the period-2 frequencies relative to the input's (1 = as much as the input;
  transposed convolutions raise it).

    python training/ablation.py --data data --out reports/ablation.md RUN_DIR[=NAME] ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from usdespeckle import metrics
from usdespeckle.runtime.slicewise import pad_to_multiple
from usdespeckle.simulation.acquisition import simulate_acquisition
from usdespeckle.simulation.speckle import gamma_speckle, rayleigh_speckle

FIDELITY_SIGMA_PX = 4.0  # low-pass before the fidelity fit, pixels (a few speckle grains)
IMAGES_PER_SET = 16


def _grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0


def load_generator(run: Path, overrides: dict) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(run / "configs" / "train.json")
    for key, value in overrides.items():
        parser[key] = value
    parser["bundle_root"] = str(run)
    network = parser.get_parsed_content("network_def")
    state = torch.load(run / "models" / "model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(state.get("model", state))
    return network.eval()


@torch.no_grad()
def run_network(network: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    padded, crop = pad_to_multiple(image[None].astype(np.float32), network.divisor)
    return network(torch.from_numpy(padded[:, None])).numpy()[0, 0][crop]


def checkerboard(output: np.ndarray, image: np.ndarray, mask: np.ndarray) -> float:
    """Power at the period-2 frequencies (Nyquist rows/columns) of output over input's, in the field."""

    def nyquist_power(x: np.ndarray) -> float:
        x = np.where(mask, x - x[mask].mean(), 0.0)
        spectrum = np.abs(np.fft.fft2(x)) ** 2
        h, w = x.shape
        return float(spectrum[h // 2, :].sum() + spectrum[:, w // 2].sum())

    return nyquist_power(output) / max(nyquist_power(image), 1e-12)


def synthetic_sets(data: Path) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """(input, reference) pairs from the validation splits, seeded."""
    rng = np.random.default_rng(0)

    def labels(datalist: str, key: str = "label") -> list[np.ndarray]:
        items = json.loads((data / datalist).read_text(encoding="utf-8"))["validation"]
        step = max(1, len(items) // IMAGES_PER_SET)
        return [_grey(data / item[key]) for item in items[::step][:IMAGES_PER_SET]]

    sets: dict[str, list] = {}
    pairs = json.loads((data / "datalist_mri_pairs.json").read_text(encoding="utf-8"))["validation"]
    step = max(1, len(pairs) // IMAGES_PER_SET)
    sets["mri_sim"] = [
        (_grey(data / p["image"]), _grey(data / p["label"])) for p in pairs[::step][:IMAGES_PER_SET]
    ]
    photos = labels("datalist_natural.json")
    sets["rayleigh"] = [(rayleigh_speckle(x, rng), x) for x in photos]
    sets["gamma_L1"] = [(gamma_speckle(x, 1, rng), x) for x in photos]
    sets["gamma_L4"] = [(gamma_speckle(x, 4, rng), x) for x in photos]
    sets["acquisition"] = [
        simulate_acquisition(x, rng) for x in labels("datalist_simulator.json", "echogenicity")
    ]
    return sets


def evaluate(network: torch.nn.Module, data: Path, sets: dict, real: list[dict]) -> dict[str, float]:
    scores: dict[str, float] = {}
    for name, pairs in sets.items():
        outputs = [run_network(network, x) for x, _ in pairs]
        scores[f"{name} PSNR"] = float(
            np.mean([metrics.psnr(o, r) for o, (_, r) in zip(outputs, pairs, strict=True)])
        )
        scores[f"{name} SSIM"] = float(
            np.mean([metrics.ssim(o, r) for o, (_, r) in zip(outputs, pairs, strict=True)])
        )
    fid, gc, cb = [], [], []
    for item in real:
        image, mask = _grey(data / item["image"]), _grey(data / item["mask"]) > 0.5
        output = run_network(network, image)
        fid.append(metrics.echogenicity_fidelity(output, image, mask, sigma=FIDELITY_SIGMA_PX).correlation)
        dark = metrics.box_mask(mask.shape, item["regions"]["dark"])
        bright = metrics.box_mask(mask.shape, item["regions"]["bright"])
        gc.append(metrics.gcnr(output, dark, bright))
        cb.append(checkerboard(output, image, mask))
    scores["real fidelity"] = float(np.mean(fid))
    scores["real gCNR"] = float(np.mean(gc))
    scores["real checkerboard"] = float(np.mean(cb))
    return scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="Markdown file to write")
    ap.add_argument(
        "--overrides", default="{}", help="JSON dict of train.json keys per run: {name: {key: value}}"
    )
    ap.add_argument("--figure", type=Path, help="PNG grid: real validation frames, input then each run")
    ap.add_argument("runs", nargs="+", help="RUN_DIR=NAME")
    args = ap.parse_args(argv)
    overrides = json.loads(args.overrides)
    real = json.loads((args.data / "datalist_real_bmode.json").read_text(encoding="utf-8"))["validation"]
    sets = synthetic_sets(args.data)
    rows = {}
    shown = [real[0], real[len(real) // 2], real[-1]]
    tiles = [[_grey(args.data / item["image"]) for item in shown]]
    for spec in args.runs:
        folder, _, name = spec.partition("=")
        name = name or Path(folder).name
        network = load_generator(Path(folder), overrides.get(name, {}))
        rows[name] = evaluate(network, args.data, sets, real)
        tiles.append([run_network(network, image) for image in tiles[0]])
        print(name, json.dumps({k: round(v, 4) for k, v in rows[name].items()}), flush=True)
    if args.figure:  # one row per frame: input, then the runs in order
        strips = [np.concatenate([t[k] for t in tiles], axis=1) for k in range(len(shown))]
        width = max(strip.shape[1] for strip in strips)
        grid = np.concatenate([np.pad(s, ((0, 4), (0, width - s.shape[1]))) for s in strips], axis=0)
        Image.fromarray(np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)).save(args.figure)
    columns = list(next(iter(rows.values())))
    lines = [
        "# Denoiser ablation at equal budget (validation data)",
        "",
        f"{IMAGES_PER_SET} validation images per synthetic set (one network pass); real: the {len(real)} real "
        "B-mode validation frames (fidelity: correlation after a 4-pixel low-pass and an isotonic fit; "
        "checkerboard: period-2 spectral power over the input's).",
        "",
        "| run | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    lines += [
        f"| {name} | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |" for name, row in rows.items()
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (args.out.with_suffix(".json")).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
