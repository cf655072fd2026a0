#!/usr/bin/env python
"""Peak memory of the bundle's sliding-window inference on a real CT, on the CPU.

Usage: python scripts/bench_memory.py [--image ../shared/data/ct/example_ct.nii.gz] [--overlays ...] [--fusion film]

Runs ``python -m monai.bundle run`` with ``inference.json`` (real size by default: 96^3 windows, feature
size 48, 1.5 x 1.5 x 2 mm) in a child process, prompting every class the bundle knows, and prints the
child's peak resident memory (``ru_maxrss``) next to the goal (<= 4 GiB). The weights are random: memory
does not depend on their values. Exit status 1 when the goal is missed.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from textseg.bundle import DEFAULT_BUNDLE, bundle_config_files

GOAL_GIB = 4.0
DEFAULT_IMAGE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct" / "example_ct.nii.gz"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--overlays", nargs="*", default=[], help="bundle overlays, e.g. tiny.json")
    parser.add_argument("--fusion", default="film")
    parser.add_argument("--sw-batch-size", type=int, default=None, help="override the config's sw_batch_size")
    args = parser.parse_args()
    if not args.image.is_file():
        print(f"image not found: {args.image} (pass --image; the real CT lives in ../shared/data/ct)", file=sys.stderr)
        return 2
    configs = bundle_config_files(args.bundle, ["inference.json", *args.overlays])
    config = ConfigParser()
    config.read_config(configs)
    config["fusion"] = args.fusion
    class_names = config["class_names"]
    network = config.get_parsed_content("network_def")
    network.set_class_embeddings(config.get_parsed_content("class_embeddings"))
    with tempfile.TemporaryDirectory() as work:
        checkpoint = Path(work) / "random.pt"
        torch.save(network.state_dict(), checkpoint)
        del network
        command = [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "[" + ",".join(repr(c) for c in configs) + "]",
            "--meta_file",
            str(args.bundle / "configs" / "metadata.json"),
            "--bundle_root",
            str(args.bundle),
            "--ckpt_path",
            str(checkpoint),
            "--input_image",
            str(args.image.resolve()),
            "--fusion",
            args.fusion,
            "--prompt",
            " and ".join(class_names),
            "--output_dir",
            str(Path(work) / "out"),
            "--device",
            "$torch.device('cpu')",
        ]
        if args.sw_batch_size:
            command += ["--sw_batch_size", str(args.sw_batch_size)]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        print(result.stderr[-4000:], file=sys.stderr)
        return 2
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # kB on Linux
    roi, sw_batch = config["roi_size"], args.sw_batch_size or config["sw_batch_size"]
    print(
        f"{args.image.name}: sliding-window inference on the CPU, {len(class_names)} prompts, windows {roi} x {sw_batch}, "
        f"fusion {args.fusion}, overlays {args.overlays or 'none'}: {seconds:.0f} s"
    )
    print(f"peak resident memory {peak_gib:.2f} GiB  (goal <= {GOAL_GIB:.0f} GiB)  ratio {peak_gib / GOAL_GIB:.2f}")
    return 0 if peak_gib <= GOAL_GIB else 1


if __name__ == "__main__":
    sys.exit(main())
