#!/usr/bin/env python
"""Network benchmark: cost of many prompts and of text conditioning, measured side by side in one run.

Usage: python scripts/bench_network.py [--size 96] [--feature-size 48] [--repeats 3] [--device cpu|cuda]
                                       [--fusions film concat cross_attention]

Prints, on one patch of size^3, for every fusion:
- time(13 prompts) / time(1 prompt) of TextSwinUNETR (goal <= 1.3: the image encoder runs once);
- time(TextSwinUNETR, 1 prompt) / time(MONAI SwinUNETR, same feature size) (goal <= 1.15).
Each ratio compares medians of interleaved runs, so machine load affects both sides alike. On a GPU
it also prints the peak GPU memory of each forward. Exit status 1 when a goal is missed.
"""

import argparse
import statistics
import sys
import time

import torch
from monai.networks.nets import SwinUNETR

from textseg.networks import FUSIONS, TextSwinUNETR
from textseg.text import LATERALITY_FEATURES

MINILM_DIM = 384
TEXT_DIM = MINILM_DIM + len(LATERALITY_FEATURES)  # prompt features as in the bundle


def _timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--feature-size", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fusions", nargs="+", default=sorted(FUSIONS), choices=sorted(FUSIONS))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    plain_net = SwinUNETR(in_channels=1, out_channels=1, feature_size=args.feature_size).to(device).eval()
    image = torch.rand(1, 1, args.size, args.size, args.size, device=device)
    prompts = torch.randn(13, TEXT_DIM, device=device)
    runs = {"plain SwinUNETR": lambda: plain_net(image)}
    for fusion in args.fusions:
        net = TextSwinUNETR(num_classes=13, text_dim=TEXT_DIM, fusion=fusion, feature_size=args.feature_size).to(device).eval()
        runs[f"{fusion}, 13 prompts"] = lambda net=net: net(image, prompts)
        runs[f"{fusion}, 1 prompt"] = lambda net=net: net(image, prompts[:1])
    times = {k: [] for k in runs}
    peak_gib = {}
    with torch.no_grad():
        for name, fn in runs.items():  # warm-up, and peak memory on a GPU
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            fn()
            if device.type == "cuda":
                peak_gib[name] = torch.cuda.max_memory_allocated(device) / 2**30
        for _ in range(args.repeats):
            for name, fn in runs.items():
                times[name].append(_timed(fn, device))
    median = {k: statistics.median(v) for k, v in times.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, patch {args.size}^3, feature size {args.feature_size}, {args.repeats} interleaved repeats")
    for run, value in median.items():
        memory = f", peak GPU memory {peak_gib[run]:.2f} GiB" if run in peak_gib else ""
        print(f"  {run:32s} median {value:8.3f} s{memory}")
    met = True
    print(f"{'fusion':16s} {'13 prompts / 1 prompt':>22s} {'text net / plain':>18s}   (goals <= 1.3, <= 1.15)")
    for fusion in args.fusions:
        prompts_ratio = median[f"{fusion}, 13 prompts"] / median[f"{fusion}, 1 prompt"]
        text_ratio = median[f"{fusion}, 1 prompt"] / median["plain SwinUNETR"]
        met &= prompts_ratio <= 1.3 and text_ratio <= 1.15
        print(f"{fusion:16s} {prompts_ratio:22.3f} {text_ratio:18.3f}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
