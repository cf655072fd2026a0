#!/usr/bin/env python
"""Cost of active-learning scoring: scoring one 64^3 phantom with the tiny model vs one inference.

    .venv/bin/python scripts/bench_active_learning.py [--repeats 7] [--strategies entropy clasp_pe bald]

"One inference" = the tiny bundle network (configs/tiny.json sizes) on a 64^3 phantom for its 10 prompts,
plus the sigmoid. "Scoring" = :func:`textseg.active_learning.score_image` on the same volume: the forward
pass(es), the (K+1)-class uncertainty maps, patch aggregation and patch selection. Timings are medians of
interleaved repeats (one inference, then each strategy), so a busy CPU slows all of them alike.
Goal: deterministic strategies (entropy, ClaSP PE) <= 2x one inference. MC-dropout strategies
(BALD, PowerBALD) run one forward pass per sample, so expect about ``mc_samples`` x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from textseg.active_learning import score_image  # noqa: E402
from textseg.bundle import network_overrides  # noqa: E402
from textseg.experiments.active_learning_simulation import build_network, make_phantom_pool  # noqa: E402
from textseg.files import write_atomic  # noqa: E402
from textseg.phantom import PHANTOM_LABELS  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "bundles" / "text_prompted_ct_segmentation" / "configs" / "tiny.json"
GOAL = 2.0


def tiny_network_kwargs() -> dict:
    """The network sizes of the bundle's tiny overlay (``network_def#...`` keys of tiny.json)."""
    return network_overrides(TINY.parents[1], "tiny.json")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--strategies", nargs="+", default=["entropy", "clasp_pe", "bald"])
    p.add_argument("--mc-samples", type=int, default=4)
    p.add_argument("--patch-size", type=int, nargs=3, default=[16, 16, 16])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default="outputs/bench_active_learning.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    names = list(PHANTOM_LABELS.values())
    case = make_phantom_pool(1, names, (64, 64, 64), 7, "bench")[0]
    image = torch.from_numpy(case.image)[None, None]
    emb = torch.randn(len(names), 386, generator=torch.Generator().manual_seed(0))
    kwargs = tiny_network_kwargs()
    kwargs.setdefault("drop_rate", 0.1)  # MC dropout needs dropout layers; 0.1 does not change the cost
    torch.manual_seed(0)
    net = build_network(len(names), emb, kwargs).eval()

    @torch.no_grad()
    def inference():
        return torch.sigmoid(net(image, emb))

    def scoring(strategy):
        samples = args.mc_samples if strategy in ("bald", "power_bald") else None
        return score_image(net, image, emb, strategy=strategy, patch_size=tuple(args.patch_size), mc_samples=samples, rng=0, num_rounds=5)

    inference()  # warm-up
    for s in args.strategies:
        scoring(s)
    times = {"inference": []} | {s: [] for s in args.strategies}
    for _ in range(args.repeats):
        t = time.perf_counter()
        inference()
        times["inference"].append(time.perf_counter() - t)
        for s in args.strategies:
            t = time.perf_counter()
            scoring(s)
            times[s].append(time.perf_counter() - t)
    median = {k: statistics.median(v) for k, v in times.items()}
    report = {
        "network": kwargs,
        "image": [64, 64, 64],
        "prompts": len(names),
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "median_seconds": median,
        "ratio_to_inference": {s: median[s] / median["inference"] for s in args.strategies},
        "goal": GOAL,
    }
    print(f"tiny model {kwargs}, 64^3 phantom, {len(names)} prompts, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"  one inference: {median['inference'] * 1000:8.1f} ms")
    ok = True
    for s in args.strategies:
        ratio = report["ratio_to_inference"][s]
        mc = s in ("bald", "power_bald")
        verdict = f"({args.mc_samples} MC samples)" if mc else ("meets the goal <= 2" if ratio <= GOAL else "MISSES the goal <= 2")
        ok &= mc or ratio <= GOAL
        print(f"  score_image[{s}]: {median[s] * 1000:8.1f} ms  ratio {ratio:5.2f}  {verdict}")
    write_atomic(args.output, json.dumps(report, indent=2))
    print(f"report: {args.output}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
