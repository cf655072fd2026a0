"""Field-of-view table of a real-CT model (``make field-of-view``); see textseg.experiments.field_of_view."""

import argparse

from textseg.experiments.field_of_view import DEFAULT_BANDS, run_field_of_view


def band(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a band low:high, e.g. 0.5:1") from None
    return low, high


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="outputs/field_of_view")
    parser.add_argument("--checkpoint", default=None, help="the model (default: the shipped models/model.pt)")
    parser.add_argument("--patient", default="totalseg_example", help="a datasets.yaml entry")
    parser.add_argument(
        "--bands", nargs="+", type=band, default=DEFAULT_BANDS, help="bands of slices, low:high fractions (default: %(default)s)"
    )
    parser.add_argument(
        "--overlays", nargs="+", default=[], help="configs the checkpoint was trained with on top of the recipe, e.g. head_linear.json"
    )
    args = parser.parse_args()
    run_field_of_view(args.output, args.checkpoint, args.patient, args.bands, overlays=args.overlays)
