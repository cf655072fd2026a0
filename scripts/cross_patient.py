"""Cross-patient table of the real-CT recipe (``make cross-patient``); see textseg.experiments.cross_patient."""

import argparse

from textseg.experiments.cross_patient import PATIENTS, run_cross_patient

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="outputs/cross_patient")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each single-patient model")
    parser.add_argument("--checkpoint", default=None, help="the model trained on both patients (default: the shipped models/model.pt)")
    parser.add_argument("--retrain", action="store_true", help="train every model again")
    parser.add_argument("--models", nargs="+", default=[*PATIENTS, "both"], choices=[*PATIENTS, "both"], help="rows to measure")
    parser.add_argument("--overlays", nargs="+", default=[], help="configs on top of the recipe for every model, e.g. head_linear.json")
    args = parser.parse_args()
    run_cross_patient(
        args.output, args.epochs, shipped_checkpoint=args.checkpoint, retrain=args.retrain, models=args.models, overlays=args.overlays
    )
