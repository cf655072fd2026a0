#!/usr/bin/env python
"""Network benchmark: cost of many prompts and of text conditioning, measured side by side in one run.

Usage: python scripts/bench_network.py [--size 96] [--feature-size 48] [--repeats 3] [--device cpu]

Prints, on one patch of size^3:
- time(13 prompts) / time(1 prompt) of TextSwinUNETR (goal <= 1.3: the image encoder runs once);
- time(TextSwinUNETR, 1 prompt) / time(MONAI SwinUNETR, same feature size) (goal <= 1.15).
Each ratio compares medians of interleaved runs, so machine load affects both sides alike.
"""

import argparse
import statistics
import sys
import time

import torch
from monai.networks.nets import SwinUNETR

from textseg.networks import TextSwinUNETR
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
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    text_net = TextSwinUNETR(num_classes=13, text_dim=TEXT_DIM, feature_size=args.feature_size).to(device).eval()
    plain_net = SwinUNETR(in_channels=1, out_channels=1, feature_size=args.feature_size).to(device).eval()
    image = torch.rand(1, 1, args.size, args.size, args.size, device=device)
    prompts = torch.randn(13, TEXT_DIM, device=device)
    runs = {"13 prompts": lambda: text_net(image, prompts), "1 prompt": lambda: text_net(image, prompts[:1]), "plain": lambda: plain_net(image)}
    times = {k: [] for k in runs}
    with torch.no_grad():
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in runs.items():
                times[name].append(_timed(fn, device))
    median = {k: statistics.median(v) for k, v in times.items()}
    prompts_ratio = median["13 prompts"] / median["1 prompt"]
    text_ratio = median["1 prompt"] / median["plain"]
    print(f"device {device}, patch {args.size}^3, feature size {args.feature_size}, {args.repeats} interleaved repeats")
    for name, value in median.items():
        print(f"  {name:11s} median {value:8.3f} s")
    print(f"time(13 prompts) / time(1 prompt)         = {prompts_ratio:.3f}  (goal <= 1.3)")
    print(f"time(text FiLM, 1 prompt) / time(plain)   = {text_ratio:.3f}  (goal <= 1.15)")
    return 0 if prompts_ratio <= 1.3 and text_ratio <= 1.15 else 1


if __name__ == "__main__":
    sys.exit(main())
