"""Tables and learning curves of the denoiser's training runs (training/train_denoiser.py).

    python training/denoiser2_report.py --out reports/ablation_denoiser2.md

Reads every ``runs/denoiser2/*/log.jsonl``; scores reference methods (the input, the shipped denoiser,
OBNLM and TV at their defaults) once on the same validation pairs and real validation frames
(cached in ``runs/denoiser2/reference_scores.json``); writes a Markdown table (last validation of
each run) and a figure of validation PSNR and real-frame fidelity against images seen.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from usdespeckle.data.pair_stream import SPECKLES
from usdespeckle.gan.denoiser_training import real_validation_frames, score, validation_pairs
from usdespeckle.runtime.atomic import atomic_write

REFERENCES = ("input", "denoiser 1.0.0", "obnlm", "tv")
COLUMNS = (
    [f"psnr_{s}" for s in SPECKLES] + ["psnr_mean"] + [f"psnr_aff_{s}" for s in SPECKLES] + ["real_fidelity"]
)


def _method(name: str):
    from usdespeckle.runtime.filters import FILTERS
    from usdespeckle.runtime.inference import despeckle_array

    if name == "input":
        return lambda image: image
    if name == "denoiser 1.0.0":
        return lambda image: np.clip(despeckle_array(image, backend="onnx"), 0.0, 1.0)
    return FILTERS[name]


def reference_scores(cache: Path) -> dict[str, dict[str, float]]:
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    pairs, real = validation_pairs(), real_validation_frames()
    result = {name: score(_method(name), pairs, real) for name in REFERENCES}
    atomic_write(cache, json.dumps(result, indent=2))
    return result


def read_logs(runs: Path) -> dict[str, list[dict]]:
    logs = {}
    for path in sorted(runs.glob("*/log.jsonl")):
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if lines:
            logs[path.parent.name] = lines
    return logs


def figure(logs: dict[str, list[dict]], references: dict[str, dict[str, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in (
        (axes[0], "psnr_mean", "validation PSNR, mean of 3 speckle kinds (dB)"),
        (axes[1], "real_fidelity", "echogenicity fidelity, real validation frames"),
    ):
        for name, lines in logs.items():
            ax.plot([li["images"] for li in lines], [li[key] for li in lines], marker="o", label=name)
        for i, (name, row) in enumerate(references.items()):
            ax.axhline(row[key], linestyle="--", color=f"C{i + 5}", label=name)
        ax.set_xlabel("training images seen")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=110))


def table(logs: dict[str, list[dict]], references: dict[str, dict[str, float]]) -> str:
    head = "| run | images | CPU min | " + " | ".join(COLUMNS) + " |"
    rows = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for name, row in references.items():
        rows.append(f"| {name} | - | - | " + " | ".join(f"{row[c]:.3f}" for c in COLUMNS) + " |")
    for name, lines in logs.items():
        last = lines[-1]
        rows.append(
            f"| {name} | {last['images']} | {last['cpu_min']:.1f} | "
            + " | ".join(f"{last[c]:.3f}" for c in COLUMNS)
            + " |"
        )
    return "\n".join(rows)


HEADER = """# Denoiser 2.0: equal-budget ablation and learning curves (validation data)

Made by `python training/denoiser2_report.py` from `runs/denoiser2/*/log.jsonl` (training:
`bash training/denoiser_ablation.sh`, then `training/train_denoiser.py`). Every run trains with L1
on endless on-the-fly 128-pixel crops (`usdespeckle.data.pair_stream`: photographs, MRI, dead
leaves and shapes through the acquisition chain, the Rayleigh model and Gamma speckle; batch 16,
Adam 5e-4, fp32: this machine's processor has no AVX-512 BF16, and bf16 autocast ran about 10x
slower than fp32). Budgets are CPU minutes of the training process, so runs are compared at equal
compute although other work shared the 2 cores.

Validation: 24 fixed pairs of the validation photographs and MRI slabs (PSNR against the target,
plain and after the affine fit, per speckle kind) and 3 real validation frames (cine frames 84 and
90, the obstetric scan: echogenicity fidelity). The reference rows run at their default settings.

Ablation (10 CPU minutes each, the same pairs): BasicUNet with 32 channels at the top
(`basicunet`, 1.85 M parameters) reached the best mean PSNR, ahead of the 16-channel BasicUNet
(`basicunet_small`, faster per step, 1.8 M) and the paper's pix2pix U-Net at ngf 32 (`pix2pix32`,
7.6 M); it was continued (`main_basicunet`). That run's validation swung by 3-4 dB between
validations while its training loss fell steadily, which points at batch-norm running statistics;
its target (the display of the mean echo level) also turned dim tissue black on real frames, so
the target became the expected display of the speckled image and the run went on from its weights
(`main2_basicunet`), scored against that target.

"""

#: The validation target each run was scored against (the pair stream's target changed between them:
#: first the display of the mean echo level, then the expected display of the speckled image).
TARGETS = {
    "mean_level": ("ablation_basicunet", "ablation_basicunet_small", "ablation_pix2pix32", "main_basicunet"),
    "expected_display": ("main2_basicunet",),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/denoiser2"))
    parser.add_argument("--out", type=Path, default=Path("reports/ablation_denoiser2.md"))
    parser.add_argument("--figures", type=Path, default=Path("reports/figures"))
    args = parser.parse_args()
    logs = read_logs(args.runs)
    sections = []
    for target, names in TARGETS.items():
        cache = args.runs / f"reference_scores_{target}.json"
        if target != "expected_display" and not cache.is_file():
            continue  # references of an earlier target can no longer be recomputed
        references = reference_scores(cache)
        group = {name: logs[name] for name in names if name in logs}
        figure_path = args.figures / f"denoiser2_learning_curve_{target}.png"
        figure(group, references, figure_path)
        sections.append(
            f"### Validation target: {target}\n\n"
            + table(group, references)
            + f"\n\n![learning curves](figures/{figure_path.name})\n"
        )
    text = HEADER + "\n".join(sections)
    print(text)
    atomic_write(args.out, text)


if __name__ == "__main__":
    main()
