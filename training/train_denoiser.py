"""Train the denoiser on endless on-the-fly pairs (L1), resumable, on a CPU budget.

    python training/train_denoiser.py --name basicunet --network basicunet --cpu-minutes 60

Each run lives in ``runs/denoiser2/<name>/`` (ignored by git): ``checkpoint.pt`` (network,
optimizer, counters, rewritten atomically every ``--checkpoint-minutes``) and ``log.jsonl`` (one line
per validation: images seen, CPU and wall minutes, training loss, validation PSNR per speckle kind,
echogenicity fidelity on real validation frames). Starting again with the same name resumes from
the checkpoint; ``--init-from PATH`` starts a new run from another run's weights.

The budget is CPU time of this process (``time.process_time``), so runs compared at equal budget
are compared fairly even when other work shares the machine. Pairs come from
:class:`usdespeckle.data.pair_stream.PairStream` (content and speckle drawn per crop); validation pairs are
a fixed, seeded set drawn from the validation photographs and MRI slabs, and real validation frames
are pydicom-data's cardiac cine frames 84 and 90 and the obstetric scan (never used for training).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from usdespeckle.data.pair_stream import SPECKLES, PairStream
from usdespeckle.data.real_bmode import CINE_FILE, extract_frames
from usdespeckle.gan.networks import Pix2PixUNetGenerator, ResidualUNetDenoiser
from usdespeckle.metrics import psnr, psnr_affine
from usdespeckle.metrics.real import echogenicity_fidelity
from usdespeckle.runtime.atomic import atomic_write

NETWORKS = {
    "basicunet": lambda: ResidualUNetDenoiser(features=(32, 32, 64, 128, 256, 32)),
    "basicunet_small": lambda: ResidualUNetDenoiser(features=(16, 32, 64, 128, 256, 16)),
    "pix2pix32": lambda: Pix2PixUNetGenerator(
        num_downs=7, ngf=32, norm="batch", dropout=0.0, upsample="resize"
    ),
}
REAL_VALIDATION = ((CINE_FILE, (84, 90)), ("OBXXXX1A_2frame.dcm", (0,)))


def build_network(name: str) -> torch.nn.Module:
    """One of :data:`NETWORKS`, in channels_last memory layout (faster convolutions on the CPU)."""
    return NETWORKS[name]().to(memory_format=torch.channels_last)


def divisor_of(network: torch.nn.Module) -> int:
    return int(getattr(network, "divisor", 16))


def run_network(network: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W) in [0, 1], reflection-padded to the network's divisor."""
    d = divisor_of(network)
    h, w = image.shape
    ph, pw = (-h) % d, (-w) % d
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    with torch.inference_mode():
        y = network(x.contiguous(memory_format=torch.channels_last))
    return np.clip(y[0, 0, :h, :w].float().numpy(), 0.0, 1.0)


def validation_pairs(
    size: int = 256, count: int = 24, seed: int = 1234
) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """A fixed set of validation pairs, the same for every run (seeded)."""
    stream = PairStream(size=size, seed=seed, split="validation")
    rng = np.random.default_rng(seed)
    return [stream.draw(rng) for _ in range(count)]


def real_validation_frames() -> list[tuple[np.ndarray, np.ndarray, str]]:
    frames = []
    for file, indices in REAL_VALIDATION:
        for frame in extract_frames(file, range(min(indices), max(indices) + 1)):
            if frame.frame in indices:
                frames.append((frame.image, frame.mask, frame.stem))
    return frames


def validate(network: torch.nn.Module, pairs: list, real: list) -> dict[str, float]:
    """PSNR (plain and after the affine fit) per speckle kind, and real-frame fidelity."""
    network.eval()
    scores: dict[str, list[float]] = {}
    for speckled, target, kind in pairs:
        out = run_network(network, speckled)
        speckle = kind.split("/")[1]
        scores.setdefault(f"psnr_{speckle}", []).append(psnr(out, target))
        scores.setdefault(f"psnr_aff_{speckle}", []).append(psnr_affine(out, target))
        scores.setdefault("psnr_input", []).append(psnr(speckled, target))
    for image, mask, _ in real:
        out = run_network(network, image)
        scores.setdefault("real_fidelity", []).append(echogenicity_fidelity(out, image, mask).correlation)
    network.train()
    result = {k: float(np.mean(v)) for k, v in scores.items()}
    result["psnr_mean"] = float(np.mean([result[f"psnr_{s}"] for s in SPECKLES if f"psnr_{s}" in result]))
    return result


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="run name: runs/denoiser2/NAME")
    parser.add_argument("--network", choices=sorted(NETWORKS), required=True)
    parser.add_argument("--runs", type=Path, default=Path("runs/denoiser2"))
    parser.add_argument(
        "--cpu-minutes", type=float, required=True, help="stop after this much CPU time in all"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument(
        "--decay-from", type=float, default=None, help="cosine-decay the lr from this CPU minute on"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--validate-minutes", type=float, default=10.0, help="CPU minutes between validations"
    )
    parser.add_argument(
        "--checkpoint-minutes", type=float, default=3.0, help="wall minutes between checkpoints"
    )
    parser.add_argument("--init-from", type=Path, default=None, help="start from this checkpoint's network")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    run_dir = args.runs / args.name
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = run_dir / "checkpoint.pt", run_dir / "log.jsonl"
    network = build_network(args.network)
    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr, betas=(0.9, 0.999))
    counters = {"iteration": 0, "images": 0, "cpu_s": 0.0, "wall_s": 0.0, "rng_draws": 0}
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        counters.update(state["counters"])
        print(
            f"resumed {args.name} at iteration {counters['iteration']} ({counters['images']} images)",
            flush=True,
        )
    elif args.init_from is not None:
        state = torch.load(args.init_from, map_location="cpu", weights_only=True)
        network.load_state_dict(state["network"])
        print(f"initialised {args.name} from {args.init_from}", flush=True)
    (run_dir / "config.json").write_text(json.dumps(vars(args), default=str, indent=2), encoding="utf-8")

    stream = PairStream(size=args.crop, seed=args.seed)
    # a fresh seed stream per resume, so a resumed run does not replay the crops it has seen
    rng = np.random.default_rng([args.seed, counters["iteration"]])
    pairs, real = validation_pairs(), real_validation_frames()
    cpu_start, wall_start = time.process_time() - counters["cpu_s"], time.time() - counters["wall_s"]
    last_ckpt, last_val_cpu = time.time(), counters["cpu_s"]
    loss_ema = None
    network.train()

    def snapshot() -> dict:
        counters["cpu_s"], counters["wall_s"] = time.process_time() - cpu_start, time.time() - wall_start
        return {
            "network": network.state_dict(),
            "optimizer": optimizer.state_dict(),
            "counters": dict(counters),
        }

    def log_validation() -> None:
        scores = validate(network, pairs, real)
        line = {
            "iteration": counters["iteration"],
            "images": counters["images"],
            "cpu_min": round(counters["cpu_s"] / 60, 2),
            "wall_min": round(counters["wall_s"] / 60, 2),
            "lr": optimizer.param_groups[0]["lr"],
            "loss": loss_ema,
            **{k: round(v, 4) for k, v in scores.items()},
        }
        with log_path.open("a", encoding="utf-8") as log:
            log.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)

    while True:
        counters["cpu_s"] = time.process_time() - cpu_start
        cpu_min = counters["cpu_s"] / 60
        if cpu_min >= args.cpu_minutes:
            break
        if args.decay_from is not None and cpu_min > args.decay_from:
            fraction = (cpu_min - args.decay_from) / max(args.cpu_minutes - args.decay_from, 1e-9)
            for group in optimizer.param_groups:
                group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))
        batch = [stream.draw(rng)[:2] for _ in range(args.batch)]
        x = torch.from_numpy(np.stack([b[0] for b in batch])[:, None]).contiguous(
            memory_format=torch.channels_last
        )
        y = torch.from_numpy(np.stack([b[1] for b in batch])[:, None])
        loss = F.l1_loss(network(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        counters["iteration"] += 1
        counters["images"] += args.batch
        value = loss.item()
        loss_ema = value if loss_ema is None else 0.98 * loss_ema + 0.02 * value
        if counters["cpu_s"] - last_val_cpu >= 60 * args.validate_minutes:
            snapshot()
            log_validation()
            last_val_cpu = counters["cpu_s"]
        if time.time() - last_ckpt >= 60 * args.checkpoint_minutes:
            save_checkpoint(ckpt_path, snapshot())
            last_ckpt = time.time()
    save_checkpoint(ckpt_path, snapshot())
    log_validation()


if __name__ == "__main__":
    main()
