#!/usr/bin/env python
"""Training-step benchmark: patch shapes and per-prompt heads of TextSwinUNETR side by side, in one run.

Usage: python scripts/bench_train_step.py [--prompts 16] [--steps 8] [--threads 2]

One training step of the shipped real-CT network (the ``network_def#`` keys of ``configs/real_ct.json``; two crops,
``--prompts`` prompts each, the recipe's PartialLabelDiceCELoss, AdamW) for three variants: the mlp head on 64^3
crops, the linear head on 64^3 crops, and the mlp head on the recipe's training patches (``train_patch_size`` of
``configs/real_ct_train.json``). The variants' steps are interleaved so that machine load affects them alike. Prints
each variant's median step, the median of its paired ratios to the first variant, and the loss alone at 64^3.
"""

import argparse
import statistics
import time

import torch

from textseg.bundle import DEFAULT_BUNDLE, network_overrides, read_config_value
from textseg.experiments.cross_patient import TRAIN_CONFIGS
from textseg.losses import PartialLabelDiceCELoss
from textseg.networks import TextSwinUNETR
from textseg.text import LATERALITY_FEATURES

TEXT_DIM = 384 + len(LATERALITY_FEATURES)  # MiniLM + laterality features, as in the bundle
CUBE = (64, 64, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant, after one warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    loss_function = PartialLabelDiceCELoss(pos_weight_cap=20.0)
    network = {k: v for k, v in network_overrides(DEFAULT_BUNDLE, "real_ct.json").items() if k != "head"}
    patch = tuple(read_config_value(DEFAULT_BUNDLE, TRAIN_CONFIGS, "train_patch_size"))
    variants = {}
    for head, size in (("mlp", CUBE), ("linear", CUBE), ("mlp", patch)):
        net = TextSwinUNETR(num_classes=63, text_dim=TEXT_DIM, head=head, **network)
        image, text = torch.rand(2, 1, *size), torch.randn(2, args.prompts, TEXT_DIM)
        target = (torch.rand(2, args.prompts, *size) > 0.9).float()
        variants[f"{head} head, {'x'.join(map(str, size))}"] = (net, torch.optim.AdamW(net.parameters(), 1e-3), image, text, target)
    times = {name: [] for name in variants}
    for step in range(args.steps + 1):
        for name, (net, optimizer, image, text, target) in variants.items():
            start = time.perf_counter()
            optimizer.zero_grad()
            loss_function(net(image, text), target).backward()
            optimizer.step()
            if step:  # the first step warms up
                times[name].append(time.perf_counter() - start)
    logits = torch.randn(2, args.prompts, *CUBE, requires_grad=True)
    target = (torch.rand(2, args.prompts, *CUBE) > 0.9).float()
    loss_times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss_function(logits, target).backward()
        loss_times.append(time.perf_counter() - start)
    print(f"{args.threads} threads, 2 crops, {args.prompts} prompts, {args.steps} interleaved steps per variant")
    reference = next(iter(times))
    for name, values in times.items():
        ratio = statistics.median(v / r for v, r in zip(values, times[reference]))
        spread = f"min {min(values):.2f}, max {max(values):.2f}"
        print(f"  {name:22s} median step {statistics.median(values):.2f} s ({spread}); / {reference}: {ratio:.2f}")
    print(f"  loss alone at 64^3 (forward + backward) median {statistics.median(loss_times):.2f} s")


if __name__ == "__main__":
    main()
