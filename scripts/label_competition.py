"""Label competition of a real-CT model: the asked structures' Dice when their labels compete with the asked ones only or
with every class the model knows; see textseg.experiments.label_competition."""

import argparse

from textseg.experiments.label_competition import DEMO_STRUCTURES, run_label_competition

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="outputs/label_competition")
    parser.add_argument("--checkpoint", default=None, help="the model (default: the shipped models/model.pt)")
    parser.add_argument("--patient", default="totalseg_example", help="a datasets.yaml entry")
    parser.add_argument("--structures", nargs="+", default=list(DEMO_STRUCTURES), help="the asked structures (default: %(default)s)")
    args = parser.parse_args()
    run_label_competition(args.output, args.checkpoint, args.patient, args.structures)
