#!/usr/bin/env python
"""Generate the synthetic CT phantom dataset (MSD layout): a thin command line over
:func:`textseg.phantom.make_phantom_dataset`.

Example::

    python scripts/make_phantom.py --out data/phantom --num-train 24 --num-test 4 --seed 0 --drop-fraction 0.3
"""

from __future__ import annotations

import argparse
import sys

from textseg.phantom import make_phantom_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add = parser.add_argument
    add("--out", default="data/phantom", help="dataset folder")
    add("--num-train", type=int, default=24, help="training cases")
    add("--num-test", type=int, default=4, help="held-out cases (labels kept in labelsTs/)")
    add("--seed", type=int, default=0, help="base random seed")
    add("--drop-fraction", type=float, default=0.0, help="probability of dropping each structure per training case")
    add("--max-rotation", type=float, default=0.0, help="random rotation about z in [-max, max] degrees per case")
    add("--rotation", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"), help="fixed rotation, degrees")
    add("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"), help="voxel size, mm (default random)")
    add("--shape", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"), help="grid size (default: whole abdomen)")
    add("--noise-hu", type=float, default=20.0, help="image noise standard deviation, HU")
    add("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        manifest = make_phantom_dataset(
            args.out,
            num_train=args.num_train,
            num_test=args.num_test,
            seed=args.seed,
            drop_fraction=args.drop_fraction,
            rotation_deg=args.rotation,
            max_rotation_deg=args.max_rotation,
            progress=not args.no_progress,
            shape=args.shape,
            spacing=args.spacing,
            noise_hu=args.noise_hu,
        )
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    print(f"phantom dataset: {manifest} ({args.num_train} training, {args.num_test} test cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
