#!/usr/bin/env python
"""Training-step benchmark: the per-prompt heads of TextSwinUNETR side by side, in one run.

Usage: python scripts/bench_train_step.py [--prompts 16] [--steps 8] [--threads 2]

One training step of the shipped real-CT network (the ``network_def#`` keys of ``configs/real_ct.json``; two 64^3
crops, ``--prompts`` prompts each, the recipe's PartialLabelDiceCELoss, AdamW) for each head (``mlp``, ``linear``),
the heads' steps interleaved so that machine load affects both alike. Prints each head's median step, the median of
the paired ratios linear / mlp, and the loss alone (its share of a step).
"""

import argparse
import statistics
import time

import torch

from textseg.bundle import DEFAULT_BUNDLE, network_overrides
from textseg.losses import PartialLabelDiceCELoss
from textseg.networks import HEADS, TextSwinUNETR
from textseg.text import LATERALITY_FEATURES

TEXT_DIM = 384 + len(LATERALITY_FEATURES)  # MiniLM + laterality features, as in the bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per head, after one warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image = torch.rand(2, 1, 64, 64, 64)
    text = torch.randn(2, args.prompts, TEXT_DIM)
    target = (torch.rand(2, args.prompts, 64, 64, 64) > 0.9).float()
    loss_function = PartialLabelDiceCELoss(pos_weight_cap=20.0)
    network = {k: v for k, v in network_overrides(DEFAULT_BUNDLE, "real_ct.json").items() if k != "head"}
    runs = {}
    for head in HEADS:
        net = TextSwinUNETR(num_classes=63, text_dim=TEXT_DIM, head=head, **network)
        runs[head] = (net, torch.optim.AdamW(net.parameters(), 1e-3))
    times = {head: [] for head in runs}
    for step in range(args.steps + 1):
        for head, (net, optimizer) in runs.items():
            start = time.perf_counter()
            optimizer.zero_grad()
            loss_function(net(image, text), target).backward()
            optimizer.step()
            if step:  # the first step warms up
                times[head].append(time.perf_counter() - start)
    logits = torch.randn(2, args.prompts, 64, 64, 64, requires_grad=True)
    loss_times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss_function(logits, target).backward()
        loss_times.append(time.perf_counter() - start)
    print(f"{args.threads} threads, 2 crops of 64^3, {args.prompts} prompts, {args.steps} interleaved steps per head")
    for head, values in times.items():
        print(f"  head {head:7s} median step {statistics.median(values):.2f} s  (min {min(values):.2f}, max {max(values):.2f})")
    print(f"  loss alone (forward + backward) median {statistics.median(loss_times):.2f} s")
    ratios = [linear / mlp for linear, mlp in zip(times["linear"], times["mlp"])]
    print(f"linear / mlp, median of {len(ratios)} paired steps: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
