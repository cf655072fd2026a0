"""Threshold sweep of a real-CT model: every labelled structure's Dice at several probability thresholds, on each real
patient; see textseg.experiments.label_competition."""

import argparse

from textseg.experiments.label_competition import THRESHOLDS, run_threshold_sweep

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="outputs/threshold_sweep")
    parser.add_argument("--checkpoint", default=None, help="the model (default: the shipped models/model.pt)")
    parser.add_argument("--patients", nargs="+", default=["totalseg_example", "ccth_a01"], help="datasets.yaml entries")
    parser.add_argument("--thresholds", nargs="+", type=float, default=list(THRESHOLDS), help="default: %(default)s")
    args = parser.parse_args()
    run_threshold_sweep(args.output, args.checkpoint, args.patients, args.thresholds)
