#!/usr/bin/env python
"""Click benchmark: Dice of the interactive model after 0..5 simulated corrective clicks (table, JSON and curve).

Usage: python scripts/bench_clicks.py [--checkpoint bundles/text_prompted_ct_segmentation/models/model_interactive.pt]
       [--seeds 1001 1002] [--clicks 5] [--modes sliding_window zoom] [--out outputs/clicks]

Held-out phantoms (seeds outside the demo's training seeds 0-25) are segmented by the tiny interactive bundle
(``inference.json`` + ``tiny.json`` + ``interactive.json``) from the text alone, then after each of 1..N corrective
clicks per structure (positive in the largest missed region, negative in the largest false positive), with the
bundle's sliding window and with zoom-out-zoom-in; clicks act through the network's guidance and, unless
``--click-radius 0``, also as hard constraints within ``--click-radius`` voxels (as in the app).
Writes ``click_benchmark.{md,json,png}`` under ``--out`` and
prints whether the mean Dice rises at every click from 1 to N (the goal). Without a checkpoint, or with one that
no longer fits the bundle (other network or prompt embeddings), the interactive model is trained first on the
demo's phantoms (``train.json`` + ``tiny.json`` + ``interactive.json``), unless ``--no-train``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = ("tiny.json", "interactive.json")


def main(argv: list[str] | None = None) -> int:
    from textseg.experiments.click_benchmark import MODES, make_click_cases, markdown_table, run_click_benchmark, write_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "bundles" / "text_prompted_ct_segmentation")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: <bundle>/models/model_interactive.pt")
    parser.add_argument("--no-train", action="store_true", help="fail instead of training when the checkpoint is missing or stale")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs when the model is (re)trained")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1001, 1002], help="held-out phantom seeds")
    parser.add_argument("--clicks", type=int, default=5, help="corrective clicks per structure")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--spacing", type=float, default=4.0, help="phantom voxel size in mm")
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="phantom grid (default: the whole phantom field of view)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "data" / "click_bench")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "clicks")
    parser.add_argument(
        "--click-radius",
        type=float,
        default=3.0,
        help="clicks also as hard constraints: ball radius in voxels (0: the network's guidance only)",
    )
    parser.add_argument("--strict", action="store_true", help="exit status 1 when the Dice does not rise at every click")
    args = parser.parse_args(argv)

    checkpoint = args.checkpoint or args.bundle / "models" / "model_interactive.pt"
    stale = False
    if checkpoint.is_file():
        from textseg.checkpoints import checkpoint_matches

        stale = not checkpoint_matches(checkpoint, args.bundle, OVERLAYS)
    if not checkpoint.is_file() or stale:
        why = "no checkpoint" if not stale else "a checkpoint for another network or other prompt embeddings"
        if args.no_train:
            print(f"{why} at {checkpoint}; run without --no-train to train the interactive model.")
            return 2
        from textseg.demo import train_bundle
        from textseg.phantom import make_phantom_dataset

        print(f"{why} at {checkpoint}: training the tiny interactive model for {args.epochs} epochs on the demo's phantoms first")
        make_phantom_dataset(REPO / "data" / "phantom", num_train=24, num_test=2, seed=0)
        train_bundle(
            args.bundle,
            REPO / "data" / "phantom",
            epochs=args.epochs,
            val_interval=5,
            overlays=OVERLAYS,
            ckpt_dir=str(checkpoint.parent.resolve()),
            ckpt_name=checkpoint.name,
        )
    cases = make_click_cases(args.work_dir, args.seeds, spacing=(args.spacing,) * 3, shape=args.shape)
    result = run_click_benchmark(
        checkpoint,
        cases,
        bundle_dir=args.bundle,
        configs=("inference.json", *OVERLAYS),
        num_clicks=args.clicks,
        modes=args.modes,
        click_radius=args.click_radius,
    )
    paths = write_report(result, args.out)
    print(markdown_table(result["summary"]))
    met = all(result["monotonic"].values())
    for mode, ok in result["monotonic"].items():
        means = [s["mean"] for s in result["summary"] if s["mode"] == mode]
        print(
            f"goal ({mode}: mean Dice rises at every click 1 -> {args.clicks}): {'met' if ok else 'MISSED'} "
            f"({' -> '.join(f'{m:.3f}' for m in means)}; {result['mode_seconds'][mode]:.0f} s)"
        )
    print(f"wrote {paths['markdown']}, {paths['json']}, {paths['png']} ({result['seconds']:.0f} s)")
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
