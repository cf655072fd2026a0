#!/usr/bin/env python
"""Active-learning simulation on the phantom (or a datasets.yaml entry): learning curves, AUBC, plot.

    .venv/bin/python scripts/simulate_active_learning.py                      # the README experiment
    .venv/bin/python scripts/simulate_active_learning.py --quick              # a 1-2 minute smoke run
    .venv/bin/python scripts/simulate_active_learning.py --strategies random clasp_pe --seeds 0 1 2 3

Interrupt it at any time: run the same command again and it resumes where it stopped (labels already
queried are kept). Results: ``<output-dir>/results.json`` and ``<output-dir>/learning_curves.png``.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from textseg.active_learning.strategies import STRATEGIES  # noqa: E402
from textseg.experiments.active_learning_simulation import SimulationConfig, default_network, report_finished, run_simulation  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    d = SimulationConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default=d.output_dir)
    p.add_argument("--strategies", nargs="+", default=list(d.strategies), help=f"any of: {', '.join(STRATEGIES)}")
    p.add_argument("--seeds", nargs="+", type=int, default=list(d.seeds))
    p.add_argument("--dataset", default=d.dataset, help="'phantom' or a datasets.yaml entry (needs --dataset-root)")
    p.add_argument("--dataset-root", default=None)
    p.add_argument("--classes", nargs="+", default=None, help="vocabulary names to prompt (default: the dataset's labels)")
    p.add_argument("--pool-size", type=int, default=d.pool_size)
    p.add_argument("--test-size", type=int, default=d.test_size)
    p.add_argument("--patch-size", type=int, nargs=3, default=list(d.patch_size))
    p.add_argument("--whole-images", action="store_true", help="query whole images instead of patches")
    p.add_argument("--start-budget", type=int, default=d.start_budget, help="patches of the shared starting set")
    p.add_argument("--budget", type=int, default=d.budget, help="patches per round")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--start-iterations", type=int, default=d.start_iterations)
    p.add_argument("--iterations", type=int, default=d.iterations, help="fine-tuning steps per round")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--mc-samples", type=int, default=d.mc_samples)
    p.add_argument("--text-encoder", default=d.text_encoder)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (2 pool images, 2 rounds, 2 steps)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report-only", action="store_true", help="write results.json and the plot from the finished runs, train nothing")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    config = SimulationConfig(
        output_dir=args.output_dir,
        strategies=tuple(args.strategies),
        seeds=tuple(args.seeds),
        dataset=args.dataset,
        dataset_root=args.dataset_root,
        class_names=tuple(args.classes) if args.classes else None,
        pool_size=args.pool_size,
        test_size=args.test_size,
        patch_size=None if args.whole_images else tuple(args.patch_size),
        start_budget=args.start_budget,
        budget=args.budget,
        rounds=args.rounds,
        start_iterations=args.start_iterations,
        iterations=args.iterations,
        learning_rate=args.learning_rate,
        mc_samples=args.mc_samples,
        text_encoder=args.text_encoder,
        network=default_network(),
        threads=args.threads,
    )
    if args.quick:
        config.output_dir = args.output_dir if args.output_dir != SimulationConfig().output_dir else "outputs/active_learning_quick"
        config.seeds = tuple(args.seeds[:1])
        config.pool_size, config.test_size = 2, 1
        config.start_budget, config.budget, config.rounds = 10, 3, 2
        config.start_iterations, config.iterations, config.mc_samples = 2, 2, 2
    return config


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        config = config_from_args(args)
        if args.report_only:
            report_finished(config)
        else:
            run_simulation(config, progress=not args.no_progress)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
