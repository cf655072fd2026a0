#!/usr/bin/env python
"""Fusion ablation on the phantom: FiLM vs concatenation vs cross-attention, same data, seed and epochs.

Usage: python scripts/ablate_fusion.py [--epochs 30] [--num-train 16] [--num-test 4] [--output outputs/ablation]
                                      [--cheap]

--cheap trains a shallower network (one Swin block per stage, heads at 1/4 and 1/8 resolution, about
5x cheaper per step) so that every fusion gets enough steps on a CPU.

Writes outputs/ablation/{ablation.json, ablation.md, ablation.png}; ablation.md is the table in the
bundle's model card (docs/README.md).
"""

import argparse
import sys

from textseg.experiments.ablation import run_fusion_ablation
from textseg.networks import FUSIONS

CHEAP_NETWORK = {"network_def#depths": [1, 1, 1, 1], "network_def#conditioned_stages": [2, 3]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fusions", nargs="+", default=list(FUSIONS), choices=list(FUSIONS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--num-train", type=int, default=16)
    parser.add_argument("--num-test", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default="data/phantom_ablation")
    parser.add_argument("--output", default="outputs/ablation")
    parser.add_argument("--overlays", nargs="*", default=["tiny.json"], help="size overlays (default: the CPU-sized tiny.json)")
    parser.add_argument("--cheap", action="store_true", help="shallower network: more steps for the same CPU time")
    args = parser.parse_args()
    run_fusion_ablation(
        args.output,
        args.fusions,
        args.data_dir,
        args.num_train,
        args.num_test,
        args.epochs,
        args.seed,
        size_overlays=args.overlays,
        overrides=CHEAP_NETWORK if args.cheap else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
