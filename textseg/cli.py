"""``textseg`` command line: verb-object commands, each a thin wrapper over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

__all__ = ["main", "build_parser"]


@contextlib.contextmanager
def _logs_to_stderr():
    """Send log records and stray prints to stderr (MONAI's loggers write to stdout)."""
    import logging

    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
    moved = [h for lg in loggers for h in getattr(lg, "handlers", []) if isinstance(h, logging.StreamHandler) and h.stream is sys.stdout]
    for handler in moved:
        handler.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler in moved:
            handler.setStream(sys.stdout)


def _resolve(args) -> int:
    from textseg.prompts import resolve
    from textseg.vocabulary import load_vocabulary

    resolution = resolve(args.prompt)
    report = resolution.to_dict()
    report["labels"] = load_vocabulary().label_table(resolution.structures)
    print(json.dumps(report, indent=2))
    return 0


def _make_phantom(args) -> int:
    from textseg.phantom import make_phantom_dataset

    path = make_phantom_dataset(
        args.out,
        num_train=args.num_train,
        num_test=args.num_test,
        seed=args.seed,
        drop_fraction=args.drop_fraction,
        max_rotation_deg=args.max_rotation,
    )
    print(f"wrote {path}")
    return 0


def _build_embeddings(args) -> int:
    from textseg.text import DEFAULT_TEMPLATE, vocabulary_embedding_table

    table = vocabulary_embedding_table(args.encoder, args.template or DEFAULT_TEMPLATE, cache_dir=args.cache_dir)
    print(f"{len(table.names)} structures x {table.dim} ({table.encoder}, template {table.template!r})")
    return 0


def _train(args) -> int:
    from textseg.demo import train_bundle

    overlays = ["tiny.json"] if args.tiny else []
    train_bundle(args.bundle, args.dataset_dir, args.dataset, epochs=args.epochs, val_interval=args.val_interval, overlays=overlays)
    return 0


def _segment(args) -> int:
    from textseg.bundle import SHIPPED_CONFIGS

    configs = ["inference.json", "tiny.json"] if args.tiny else list(SHIPPED_CONFIGS)
    with _logs_to_stderr():  # stdout carries the JSON answer only
        from textseg.segment import segment

        result = segment(args.image, args.prompt, args.output, args.bundle, configs, allow_non_ct=args.allow_non_ct)
    print(
        json.dumps(
            {
                "label_map": str(result.label_map),
                "masks": {k: str(v) for k, v in result.masks.items()},
                "overlay": str(result.overlay),
                "labels": result.labels,
            },
            indent=2,
        )
    )
    return 0


def _demo(args) -> int:
    from textseg.demo import PHANTOM_PROMPT, run_demo, run_phantom_demo

    if args.phantom:
        report = run_phantom_demo(
            args.image, args.prompt or PHANTOM_PROMPT, args.output, args.bundle, args.data_dir, epochs=args.epochs, retrain=args.retrain
        )
    else:
        kwargs = {"prompt": args.prompt} if args.prompt else {}
        report = run_demo(args.image, output_dir=args.output, bundle_dir=args.bundle, allow_non_ct=args.allow_non_ct, **kwargs)
    if args.min_dice is not None and report.get("mean_dice", 1.0) < args.min_dice:
        print(f"mean Dice {report['mean_dice']:.3f} is below --min-dice {args.min_dice}", file=sys.stderr)
        return 1
    return 0


def _export_bundle(args) -> int:
    from textseg.bundle_zip import export_bundle

    print(export_bundle(args.output, args.bundle))
    return 0


def _check_bundle(args) -> int:
    from pathlib import Path

    from textseg.bundle_zip import check_bundle

    checkpoint = args.checkpoint
    shipped = Path(args.path) / "models" / "model.pt"
    if checkpoint is None and shipped.is_file():
        checkpoint = shipped
    path = check_bundle(args.path, checkpoint=checkpoint)
    print(f"{path}: ok")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from textseg.bundle import DEFAULT_BUNDLE
    from textseg.demo import DEMO_PROMPT, PHANTOM_PROMPT  # no torch: `textseg resolve` starts in a second

    parser = argparse.ArgumentParser(prog="textseg", description="Text-prompted 3D CT segmentation (MONAI bundles).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("resolve", help="print the structures a prompt names, as JSON")
    p.add_argument("prompt")
    p.set_defaults(func=_resolve)

    p = sub.add_parser("make-phantom", help="generate the synthetic CT dataset (MSD layout)")
    p.add_argument("--out", default="data/phantom")
    p.add_argument("--num-train", type=int, default=24)
    p.add_argument("--num-test", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drop-fraction", type=float, default=0.0, help="probability of dropping each class per training case")
    p.add_argument("--max-rotation", type=float, default=0.0, help="random rotation about z, degrees")
    p.set_defaults(func=_make_phantom)

    p = sub.add_parser("build-embeddings", help="precompute the vocabulary's text embeddings (cached file)")
    p.add_argument("--encoder", default="minilm", help="'minilm', 'clip:<dir>', 'bert:<dir>' or a local model directory")
    p.add_argument("--template", default=None, help="prompt template (default 'A computerized tomography of a {}')")
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=_build_embeddings)

    for name, func, helptext in (("train", _train, "train a bundle"), ("segment", _segment, "segment an image from a prompt")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
        p.add_argument(
            "--tiny",
            action="store_true",
            help="use the phantom-trained tiny model (configs/tiny.json) instead of the shipped real-CT model",
        )
        p.set_defaults(func=func)
        if name == "train":
            p.add_argument("--dataset", default="phantom", help="datasets.yaml entry")
            p.add_argument("--dataset-dir", default="data/phantom")
            p.add_argument("--epochs", type=int, default=40)
            p.add_argument("--val-interval", type=int, default=10)
        else:
            p.add_argument("--image", required=True, help="NIfTI file or DICOM folder")
            p.add_argument("--prompt", required=True)
            p.add_argument("--output", default="outputs")
            p.add_argument("--allow-non-ct", action="store_true", help="segment an image that does not look like CT (MR, PET...)")

    p = sub.add_parser("export-bundle", help="write the bundle as a model-zoo zip carrying its own code: dist/<name>_v<version>.zip")
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    p.add_argument("--output", default="dist", help="folder of the zip")
    p.set_defaults(func=_export_bundle)

    p = sub.add_parser("check-bundle", help="check a bundle zip or an extracted bundle (layout, version, large-file hashes)")
    p.add_argument("path", help="the zip, or the extracted folder (.../text_prompted_ct_segmentation)")
    p.add_argument("--checkpoint", default=None, help="also check that this checkpoint fits the configs' class embeddings")
    p.set_defaults(func=_check_bundle)

    p = sub.add_parser("demo", help="segment the shipped real CT (or --image) from a prompt with the shipped model: Dice, masks, overlay")
    p.add_argument("--image", default=None, help="segment this NIfTI/DICOM folder instead of the shipped example CT")
    p.add_argument("--prompt", default=None, help=f"default {DEMO_PROMPT!r} ({PHANTOM_PROMPT!r} with --phantom)")
    p.add_argument("--phantom", action="store_true", help="the phantom demo: make phantoms, train the tiny bundle on CPU, segment them")
    p.add_argument("--allow-non-ct", action="store_true", help="segment an image that does not look like CT")
    p.add_argument("--output", default="outputs")
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    p.add_argument("--data-dir", default="data/phantom", help="--phantom: where the phantoms are made")
    p.add_argument("--epochs", type=int, default=40, help="--phantom: training epochs")
    p.add_argument("--retrain", action="store_true", help="--phantom: train again even if the tiny checkpoint exists")
    p.add_argument("--min-dice", type=float, default=None, help="exit 1 if the mean phantom Dice is lower")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as error:
        e = error
        while not isinstance(e, (ValueError, KeyError, FileNotFoundError)) and e.__cause__ is not None:
            e = e.__cause__  # MONAI wraps a transform's error (e.g. a non-CT image) in RuntimeErrors
        if not isinstance(e, (ValueError, KeyError, FileNotFoundError)):
            raise
        message = e.args[0] if type(e) is KeyError and e.args else e  # KeyError quotes its message
        print(f"textseg {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
