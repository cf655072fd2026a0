"""Whole-CT CPU inference of the shipped model: time per stage and peak memory, and the post-processing choice.

For each image (the shipped example CT, and the same CT resampled to 512 x 512 in-plane with ~N slices, like a
clinical series), a fresh process runs the bundle's own pipeline (``inference.json`` + ``real_ct.json``) stage
by stage and reports seconds for loading+preprocessing, the network (sliding window), post-processing, and the
process's peak RSS after each stage (the peak is cumulative: the stage where it jumps is the one that costs).
Post-processing is measured three ways on the same network output:

- ``label map`` (what the bundle does): argmax/threshold on the network grid, then ``InvertLabelMapd`` gathers
  the label map back to the input grid (nearest neighbour, three 1-D index vectors);
- ``label map, Invertd``: the same with MONAI's ``Invertd`` (a dense sampling grid of the input's size);
- ``probabilities``: invert the K probability channels (trilinear) to the input grid, then argmax.

    python scripts/bench_inference.py                      # example CT + a 512x512x300 version
    python scripts/bench_inference.py --slices 800         # the 512x512x800 case
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "segment the liver, spleen and kidneys"


MODES = ("label map", "label map, Invertd", "probabilities")


def _peak_gib() -> float:
    """This process's own peak resident memory (``VmHWM``; ``ru_maxrss`` would include the RSS of the process it was
    forked from, since Linux keeps it across ``execve``)."""
    with open("/proc/self/status", encoding="utf-8") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) / 2**20


def _child(image: str, prompt: str, mode: str) -> dict:
    import torch
    from monai.transforms import Compose, Invertd

    from textseg.bundle import DEFAULT_BUNDLE, SHIPPED_CONFIGS, load_bundle_network
    from textseg.transforms import InvertLabelMapd, ProbabilitiesToLabelMapd

    torch.set_grad_enabled(False)
    network, parser = load_bundle_network(Path(DEFAULT_BUNDLE) / "models" / "model.pt", DEFAULT_BUNDLE, SHIPPED_CONFIGS)
    network.to(parser.get_parsed_content("device"))  # where the bundle's inferer runs it
    preprocessing, inferer = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer")
    times = {}
    start = time.perf_counter()
    data = preprocessing({"image": image, "prompt": prompt})
    times["load_and_preprocess_s"] = time.perf_counter() - start
    times["peak_after_preprocess_gib"] = _peak_gib()
    start = time.perf_counter()
    logits = inferer(data["image"][None], network, text_embedding=torch.as_tensor(data["text_embedding"])[None])[0]
    times["network_s"] = time.perf_counter() - start
    times["peak_after_network_gib"] = _peak_gib()
    data["pred"] = torch.sigmoid(logits)
    data["pred"].applied_operations = data["image"].applied_operations
    to_labels = ProbabilitiesToLabelMapd(keys="pred", label_ids=data["target_ids"], threshold=0.5)
    if mode == "probabilities":
        post = Compose([Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False), to_labels])
    elif mode == "label map, Invertd":
        post = Compose([to_labels, Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=True)])
    else:
        post = Compose([to_labels, InvertLabelMapd(keys="pred", transform=preprocessing)])
    start = time.perf_counter()
    out = post(data)["pred"]
    times["postprocess_s"] = time.perf_counter() - start
    return {
        **times,
        "network_grid": list(data["image"].shape[1:]),
        "output_shape": list(out.shape[1:]),
        "peak_rss_gib": _peak_gib(),
        "torch_threads": torch.get_num_threads(),
    }


def _resampled(source: Path, size: int, slices: int, folder: Path) -> Path:
    """The example CT resampled (trilinear) to size x size x slices, same field of view: a clinical-sized series."""
    import nibabel as nib
    import numpy as np
    import torch
    import torch.nn.functional as F

    img = nib.load(str(source))
    array = torch.as_tensor(np.asarray(img.dataobj, dtype=np.float32))[None, None]
    big = F.interpolate(array, size=(size, size, slices), mode="trilinear", align_corners=False)[0, 0]
    scale = np.array(img.shape[:3], dtype=float) / np.array([size, size, slices])
    affine = img.affine.copy()
    affine[:3, :3] = img.affine[:3, :3] * scale  # voxel edges of the field of view are kept
    affine[:3, 3] = img.affine[:3, 3] + img.affine[:3, :3] @ ((scale - 1) / 2)
    path = folder / f"example_ct_{size}x{size}x{slices}.nii"
    nib.save(nib.Nifti1Image(big.round().numpy().astype(np.int16), affine), str(path))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300, help="slices of the 512x512 version (0: skip it)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="post-processing choices to measure")
    parser.add_argument("--output", default="outputs/bench_inference.json")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, default=MODES[0], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(*args.child, mode=args.mode)))
        return 0
    from textseg.demo import EXAMPLE_CT

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        images = [EXAMPLE_CT] + ([_resampled(EXAMPLE_CT, 512, args.slices, Path(tmp))] if args.slices else [])
        for image in images:
            for mode in args.modes:
                command = [sys.executable, __file__, "--child", str(image), PROMPT, "--mode", mode]
                result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
                if result.returncode != 0:
                    print(result.stderr[-3000:], file=sys.stderr)
                    return 1
                row = {
                    "image": image.name,
                    "postprocessing": mode,
                    **json.loads(result.stdout.strip().splitlines()[-1]),
                }
                rows.append(row)
                print(
                    f"{row['image']:<28} {row['postprocessing']:<18} preprocess {row['load_and_preprocess_s']:6.1f} s  "
                    f"network {row['network_s']:6.1f} s  post {row['postprocess_s']:6.1f} s  peak RSS after preprocessing "
                    f"{row['peak_after_preprocess_gib']:.2f}, network {row['peak_after_network_gib']:.2f}, "
                    f"post-processing {row['peak_rss_gib']:.2f} GiB",
                    flush=True,
                )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
