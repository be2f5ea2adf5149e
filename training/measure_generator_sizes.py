"""Measure the pix2pix generator's size and CPU speed for the bundle's choice of ngf and num_downs.

Writes ``reports/generator_sizes.md``: parameters and median ms per 256x256 slice in eval mode
(2 threads) for ngf 16/32/64 and num_downs 7/8, and seconds per training iteration (generator +
70x70 PatchGAN, Adam, the bundle's Pix2PixTrainer step) at crop 128 and 256.

Usage (from the repo root): ``python training/measure_generator_sizes.py [--out reports/generator_sizes.md]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from monai.networks.nets import PatchDiscriminator

from usdespeckle.gan.networks import Pix2PixUNetGenerator
from usdespeckle.gan.trainer import gan_loss


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def ms_per_slice(network: torch.nn.Module, size: int = 256, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time in ms of one eval forward pass on a (1, 1, size, size) input."""
    network.eval()
    x = torch.rand(1, 1, size, size)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            network(x)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def s_per_iteration(ngf: int, num_downs: int, crop: int, batch_size: int = 4, repeats: int = 4) -> float:
    """Median seconds of one pix2pix training iteration (the same steps as Pix2PixTrainer._iteration)."""
    generator = Pix2PixUNetGenerator(num_downs=num_downs, ngf=ngf).train()
    discriminator = PatchDiscriminator(spatial_dims=2, channels=64, in_channels=2, num_layers_d=3).train()
    g_opt = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    image, label = torch.rand(batch_size, 1, crop, crop), torch.rand(batch_size, 1, crop, crop)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        pred = generator(image)
        d_opt.zero_grad()
        d_loss = 0.5 * (
            gan_loss(discriminator(torch.cat([image, label], 1))[-1], True, "vanilla")
            + gan_loss(discriminator(torch.cat([image, pred.detach()], 1))[-1], False, "vanilla")
        )
        d_loss.backward()
        d_opt.step()
        for p in discriminator.parameters():
            p.requires_grad_(False)
        g_opt.zero_grad()
        g_loss = gan_loss(discriminator(torch.cat([image, pred], 1))[-1], True, "vanilla")
        g_loss = g_loss + 100.0 * torch.nn.functional.l1_loss(pred, label)
        g_loss.backward()
        g_opt.step()
        for p in discriminator.parameters():
            p.requires_grad_(True)
        if i > 0:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/generator_sizes.md"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-training", action="store_true", help="only the inference table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    lines = [
        "# pix2pix generator sizes and CPU speed",
        "",
        f"Measured by `training/measure_generator_sizes.py` with torch {torch.__version__}, "
        f"{args.threads} threads, {platform.processor() or platform.machine()}; the machine was shared with "
        "other jobs, so take the times as rough (median of repeats).",
        "",
        "## Inference: one 256x256 slice, eval mode",
        "",
        "| ngf | num_downs | bottleneck at 256 | parameters | ms / slice |",
        "|---:|---:|---:|---:|---:|",
    ]
    for num_downs in (7, 8):
        for ngf in (16, 32, 64):
            net = Pix2PixUNetGenerator(num_downs=num_downs, ngf=ngf)
            ms = ms_per_slice(net)
            lines.append(
                f"| {ngf} | {num_downs} | {256 // 2**num_downs}x{256 // 2**num_downs} | "
                f"{count_parameters(net):,} | {ms:.1f} |"
            )
            print(lines[-1], flush=True)
    disc = PatchDiscriminator(spatial_dims=2, channels=64, in_channels=2, num_layers_d=3)
    lines += [
        "",
        f"Discriminator (70x70 PatchGAN, ndf=64, 2 input channels): {count_parameters(disc):,} parameters.",
    ]

    if not args.skip_training:
        lines += [
            "",
            "## Training: one iteration (discriminator step + generator step, Adam, batch 4)",
            "",
            "| ngf | num_downs | crop | s / iteration |",
            "|---:|---:|---:|---:|",
        ]
        for ngf, num_downs, crop in ((32, 7, 128), (32, 8, 256), (64, 7, 128), (64, 8, 256)):
            lines.append(f"| {ngf} | {num_downs} | {crop} | {s_per_iteration(ngf, num_downs, crop):.2f} |")
            print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
