"""Training the denoiser on endless on-the-fly pairs (L1 loss), resumable, on a CPU-time budget.

The training step is plain L1 regression of the speckle-free target
(:class:`usdespeckle.data.pair_stream.PairStream`); the equal-budget ablation (``reports/ablation_denoiser2.md``)
chose the generator, and the adversarial term of the paper's recipe stays in ``train.json``.

A run lives in one folder (ignored by git): ``checkpoint.pt`` (network, optimizer and counters,
rewritten atomically every ``checkpoint_minutes`` of wall time) and ``log.jsonl`` (one line per
validation: images seen, CPU and wall minutes, training loss, validation PSNR per speckle kind,
echogenicity fidelity on real validation frames). Calling :func:`train` again on the same folder
resumes from the checkpoint; ``init_from`` starts a new run from another run's network.

The budget is CPU time of the process (``time.process_time``), so runs compared at equal budget are
compared fairly even when other work shares the machine. Validation pairs are a fixed, seeded set of
the validation photographs and MRI slabs; the real validation frames are pydicom-data's cardiac cine
frames 84 and 90 and the obstetric scan, none of them used for training.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from usdespeckle.data.pair_stream import SPECKLES, PairMix, PairStream
from usdespeckle.data.real_bmode import CINE_FILE, extract_frames
from usdespeckle.metrics import psnr, psnr_affine
from usdespeckle.metrics.real import echogenicity_fidelity
from usdespeckle.runtime.atomic import atomic_write
from usdespeckle.runtime.slicewise import pad_to_multiple

__all__ = [
    "TrainSettings",
    "real_validation_frames",
    "run_network",
    "score",
    "train",
    "validate",
    "validation_pairs",
]

REAL_VALIDATION = ((CINE_FILE, (84, 90)), ("OBXXXX1A_2frame.dcm", (0,)))


@dataclass(frozen=True)
class TrainSettings:
    """How long and how the denoiser trains.

    Args:
        run_dir: the run's folder (checkpoint, log, settings).
        cpu_minutes: stop when the process has used this much CPU time in all (resumes included).
        batch: crops per step.
        crop: crop side, pixels (a multiple of the network's divisor).
        lr: Adam learning rate (betas 0.9, 0.999).
        decay_from: from this CPU minute on, the learning rate decays to 0 along a half cosine that
            ends at ``cpu_minutes``; None keeps it constant (an open-ended run).
        threads: torch threads.
        seed: seed of the pair stream and of the network's initialisation.
        validate_minutes: CPU minutes between validations.
        checkpoint_minutes: wall minutes between checkpoints.
        init_from: a checkpoint whose network starts a new run (ignored when resuming).
    """

    run_dir: str
    cpu_minutes: float
    batch: int = 16
    crop: int = 128
    lr: float = 5e-4
    decay_from: float | None = None
    threads: int = 2
    seed: int = 0
    validate_minutes: float = 10.0
    checkpoint_minutes: float = 3.0
    init_from: str | None = None


def run_network(network: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W) in [0, 1], reflection-padded to the network's divisor and cropped back."""
    padded, (rows, cols) = pad_to_multiple(np.asarray(image, dtype=np.float32)[None], network.divisor)
    x = torch.from_numpy(np.ascontiguousarray(padded))[:, None]
    with torch.inference_mode():
        y = network(x.contiguous(memory_format=torch.channels_last))
    return np.clip(y[0, 0].numpy()[rows, cols], 0.0, 1.0)


def validation_pairs(
    size: int = 256, count: int = 24, seed: int = 1234
) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """A fixed set of (speckled, target, "content/speckle") validation pairs, the same for every run."""
    stream = PairStream(size=size, seed=seed, split="validation")
    rng = np.random.default_rng(seed)
    return [stream.draw(rng) for _ in range(count)]


def real_validation_frames() -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(image, field mask, name) of the real validation frames."""
    frames = []
    for file, indices in REAL_VALIDATION:
        for frame in extract_frames(file, range(min(indices), max(indices) + 1)):
            if frame.frame in indices:
                frames.append((frame.image, frame.mask, frame.stem))
    return frames


def score(despeckle: Callable[[np.ndarray], np.ndarray], pairs: list, real: list) -> dict[str, float]:
    """PSNR (plain and after the affine fit, dB) per speckle kind, and real-frame fidelity (correlation).

    Args:
        despeckle: (H, W) in [0, 1] -> (H, W) in [0, 1]: a network (:func:`run_network`) or a filter.
        pairs: :func:`validation_pairs`.
        real: :func:`real_validation_frames`.
    """
    scores: dict[str, list[float]] = {}
    for speckled, target, kind in pairs:
        out = np.asarray(despeckle(speckled), dtype=np.float64)
        speckle = kind.split("/")[1]
        scores.setdefault(f"psnr_{speckle}", []).append(psnr(out, target))
        scores.setdefault(f"psnr_aff_{speckle}", []).append(psnr_affine(out, target))
        scores.setdefault("psnr_input", []).append(psnr(speckled, target))
    for image, mask, _ in real:
        out = np.asarray(despeckle(image), dtype=np.float64)
        scores.setdefault("real_fidelity", []).append(echogenicity_fidelity(out, image, mask).correlation)
    result = {k: float(np.mean(v)) for k, v in scores.items()}
    result["psnr_mean"] = float(np.mean([result[f"psnr_{s}"] for s in SPECKLES if f"psnr_{s}" in result]))
    return result


def validate(network: torch.nn.Module, pairs: list, real: list) -> dict[str, float]:
    """:func:`score` of the network in eval mode (its training mode is restored after)."""
    was_training = network.training
    network.eval()
    try:
        return score(lambda image: run_network(network, image), pairs, real)
    finally:
        network.train(was_training)


class _Run:
    """The state of one run: network, optimizer, counters, and the files it writes."""

    def __init__(self, network: torch.nn.Module, settings: TrainSettings) -> None:
        self.settings = settings
        self.dir = Path(settings.run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint, self.log = self.dir / "checkpoint.pt", self.dir / "log.jsonl"
        self.network = network.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(network.parameters(), lr=settings.lr, betas=(0.9, 0.999))
        self.counters = {"iteration": 0, "images": 0, "cpu_s": 0.0, "wall_s": 0.0}
        self.loss_ema: float | None = None
        if self.checkpoint.exists():
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
            self.network.load_state_dict(state["network"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.counters.update({k: state["counters"][k] for k in self.counters})
            print(f"resumed {self.dir} at iteration {self.counters['iteration']}", flush=True)
        elif settings.init_from is not None:
            state = torch.load(settings.init_from, map_location="cpu", weights_only=True)
            self.network.load_state_dict(state["network"])
            print(f"initialised {self.dir} from {settings.init_from}", flush=True)
        self.start_clocks()

    def start_clocks(self) -> None:
        """Count CPU and wall time from now on (setup, such as loading the sources, is not counted)."""
        self.cpu_start = time.process_time() - self.counters["cpu_s"]
        self.wall_start = time.time() - self.counters["wall_s"]

    def tick(self) -> float:
        """Update the CPU and wall counters; returns the CPU minutes used."""
        self.counters["cpu_s"] = time.process_time() - self.cpu_start
        self.counters["wall_s"] = time.time() - self.wall_start
        return self.counters["cpu_s"] / 60.0

    def save(self) -> None:
        self.tick()
        state = {
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "counters": dict(self.counters),
        }
        atomic_write(self.checkpoint, lambda f: torch.save(state, f))

    def record(self, scores: dict[str, float]) -> None:
        self.tick()
        line = {
            "iteration": self.counters["iteration"],
            "images": self.counters["images"],
            "cpu_min": round(self.counters["cpu_s"] / 60, 2),
            "wall_min": round(self.counters["wall_s"] / 60, 2),
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss": self.loss_ema,
            **{k: round(v, 4) for k, v in scores.items()},
        }
        with self.log.open("a", encoding="utf-8") as log:
            log.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)

    def set_lr(self, cpu_min: float) -> None:
        s = self.settings
        if s.decay_from is None or cpu_min <= s.decay_from:
            return
        fraction = min((cpu_min - s.decay_from) / max(s.cpu_minutes - s.decay_from, 1e-9), 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = s.lr * 0.5 * (1.0 + math.cos(math.pi * fraction))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.l1_loss(self.network(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.counters["iteration"] += 1
        self.counters["images"] += x.shape[0]
        value = loss.item()
        self.loss_ema = value if self.loss_ema is None else 0.98 * self.loss_ema + 0.02 * value


def train(network: torch.nn.Module, settings: TrainSettings, mix: PairMix | None = None) -> dict[str, float]:
    """Train ``network`` (in place) until ``settings.cpu_minutes``; resumes from the run's checkpoint.

    Args:
        network: the denoiser, (B, 1, H, W) in [0, 1] -> same shape.
        settings: budget, batch, learning rate, where the run lives.
        mix: what the pair stream draws (defaults of :class:`PairMix`).

    Returns:
        The last validation scores.
    """
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    run = _Run(network, settings)
    atomic_write(run.dir / "settings.json", json.dumps(asdict(settings), indent=2))
    stream = PairStream(size=settings.crop, seed=settings.seed, mix=mix)
    # a new seed stream per resume, so that a resumed run does not replay the crops it has seen
    rng = np.random.default_rng([settings.seed, run.counters["iteration"]])
    pairs, real = validation_pairs(), real_validation_frames()
    run.start_clocks()
    last_save, last_validation = time.time(), run.counters["cpu_s"]
    run.network.train()
    while (cpu_min := run.tick()) < settings.cpu_minutes:
        run.set_lr(cpu_min)
        batch = [stream.draw(rng)[:2] for _ in range(settings.batch)]
        x = torch.from_numpy(np.stack([b[0] for b in batch])[:, None])
        y = torch.from_numpy(np.stack([b[1] for b in batch])[:, None])
        run.step(x.contiguous(memory_format=torch.channels_last), y)
        if run.counters["cpu_s"] - last_validation >= 60 * settings.validate_minutes:
            run.record(validate(run.network, pairs, real))
            last_validation = run.counters["cpu_s"]
        if time.time() - last_save >= 60 * settings.checkpoint_minutes:
            run.save()
            last_save = time.time()
    run.save()
    scores = validate(run.network, pairs, real)
    run.record(scores)
    return scores
