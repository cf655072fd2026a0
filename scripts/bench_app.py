#!/usr/bin/env python
"""Benchmark the MONAI Label app: /infer round trip vs direct bundle inference on a 64^3 phantom, and a
bounded load test of 20 concurrent /infer requests.

    .venv/bin/python scripts/bench_app.py [--checkpoint PATH] [--repeats 5] [--concurrent 20]

Direct inference parses the bundle config once, loads the checkpoint once and times the bundle's own
preprocessing -> sliding-window inferer -> postprocessing (writing the NIfTI label map), as the app does
per request. The app side times ``MONAILabelClient.infer`` (HTTP upload of the request, inference, NIfTI
writing, download of the result). Measurements alternate between the two so machine load affects both.
Without a checkpoint (``make demo`` writes one) a 1-epoch tiny model is trained first (timings do not
depend on the weights). Writes ``data/bench_app/report.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "text_prompted_ct_segmentation"
APP = REPO / "apps" / "textseg_app"
WORK = REPO / "data" / "bench_app"
PROMPT = "segment the liver and kidneys"


def ensure_checkpoint(path: Path | None) -> Path:
    """The given checkpoint, the demo's, or a 1-epoch tiny model trained now under data/bench_app."""
    for candidate in (path, BUNDLE / "models" / "model_tiny.pt", WORK / "models" / "model_tiny.pt"):
        if candidate and candidate.exists():
            return candidate
    from textseg.demo import train_bundle
    from textseg.phantom import make_phantom_dataset

    print("no checkpoint: training a 1-epoch tiny model (timings do not depend on the weights)", flush=True)
    make_phantom_dataset(WORK / "phantom", num_train=3, num_test=1, seed=7, progress=False)
    train_bundle(
        BUNDLE,
        WORK / "phantom",
        epochs=1,
        val_interval=1,
        ckpt_dir=str(WORK / "models"),
        num_val=1,
        crops_per_image=1,
        num_workers=0,
        output_dir=str(WORK / "models" / "eval"),
    )
    return WORK / "models" / "model_tiny.pt"


def make_volume() -> Path:
    from textseg.phantom import make_phantom

    studies = WORK / "studies"
    path = studies / "bench_64.nii.gz"
    if not path.exists():
        make_phantom(41, shape=(64, 64, 64), spacing=(5.3, 4.4, 5.6)).save(path, WORK / "bench_64_label.nii.gz")
    return path


class DirectBundle:
    """The bundle's inference config parsed once: network and checkpoint loaded once, transforms per call."""

    def __init__(self, checkpoint: Path, out_dir: Path):
        import torch
        from monai.bundle import ConfigParser

        from textseg.bundle import bundle_config_files

        self.parser = ConfigParser()
        self.parser.read_config(bundle_config_files(BUNDLE, ["inference.json", "tiny.json"]))
        self.parser["bundle_root"] = str(BUNDLE)
        self.parser["output_dir"] = str(out_dir)
        self.network = self.parser.get_parsed_content("network")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        self.network.load_state_dict(state.get("model", state) if isinstance(state, dict) and "model" in state else state)
        self.network.eval()
        self.pre = self.parser.get_parsed_content("preprocessing")
        self.inferer = self.parser.get_parsed_content("inferer")
        self.post = self.parser.get_parsed_content("postprocessing")

    def __call__(self, image: Path) -> None:
        import torch

        data = self.pre({"image": str(image), "prompt": PROMPT})
        with torch.no_grad():
            data["pred"] = self.inferer(data["image"][None], self.network, text_embedding=data["text_embedding"])[0]
        self.post(data)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=20)
    args = parser.parse_args(argv)

    import nibabel as nib
    from monailabel.client import MONAILabelClient

    from textseg.serve import MonaiLabelServer

    checkpoint = ensure_checkpoint(args.checkpoint)
    image = make_volume()
    shape = nib.load(str(image)).shape
    WORK.mkdir(parents=True, exist_ok=True)
    direct = DirectBundle(checkpoint, Path(tempfile.mkdtemp(prefix="direct-", dir=WORK)))
    conf = {"models": "text_prompt", "bundle_overlay": "tiny", "checkpoint": str(checkpoint)}
    with MonaiLabelServer(
        APP,
        image.parent,
        conf,
        log=WORK / "server.log",
        env={"MONAI_LABEL_DATASTORE_CACHE_PATH": str(WORK / "cache"), "MONAI_LABEL_SESSION_PATH": str(WORK / "sessions")},
    ) as server:
        client = MONAILabelClient(server.url, tmpdir=tempfile.mkdtemp(prefix="client-", dir=WORK))
        image_id = image.name.replace(".nii.gz", "")
        direct(image)  # warm-up both sides (first network load, thread pools)
        client.infer("text_prompt", image_id, {"prompt": PROMPT})
        t_direct, t_app = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            direct(image)
            t_direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            path, params = client.infer("text_prompt", image_id, {"prompt": PROMPT})
            t_app.append(time.perf_counter() - t)
            assert params["label_names"] == {"liver": 5, "kidney_right": 2, "kidney_left": 3}, params["label_names"]
            os.unlink(path)
        ratio = statistics.median(t_app) / statistics.median(t_direct)
        print(f"direct bundle inference (64^3): median {statistics.median(t_direct):.3f} s  {['%.2f' % t for t in t_direct]}")
        print(f"/infer round trip (64^3):       median {statistics.median(t_app):.3f} s  {['%.2f' % t for t in t_app]}")
        print(f"ratio /infer / direct = {ratio:.3f}  (goal <= 1.2: {'met' if ratio <= 1.2 else 'NOT met'})", flush=True)

        prompts = [
            ("liver", {"liver": 5}),
            ("left kidney", {"kidney_left": 3}),
            ("spleen and aorta", {"spleen": 1, "aorta": 52}),
            ("segment the liver and kidneys", {"liver": 5, "kidney_right": 2, "kidney_left": 3}),
        ]
        results: list = [None] * args.concurrent
        barrier = threading.Barrier(args.concurrent)

        def request(i):
            prompt, expected = prompts[i % len(prompts)]
            c = MONAILabelClient(server.url, tmpdir=tempfile.mkdtemp(prefix=f"c{i}-", dir=WORK))
            barrier.wait()
            try:
                path, params = c.infer("text_prompt", image_id, {"prompt": prompt})
                ok = params["label_names"] == expected and nib.load(path).shape == shape
                os.unlink(path)
                results[i] = "ok" if ok else f"wrong answer for {prompt!r}: {params['label_names']}"
            except Exception as e:  # noqa: BLE001 - reported, the benchmark counts failures
                results[i] = f"error: {e}"

        threads = [threading.Thread(target=request, args=(i,)) for i in range(args.concurrent)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        correct = sum(r == "ok" for r in results)
        print(f"{args.concurrent} concurrent /infer requests: {correct}/{args.concurrent} correct in {wall:.1f} s")
        for r in results:
            if r != "ok":
                print("  ", r)
        alive = bool(client.info()["models"])
    report = {
        "volume_shape": list(shape),
        "direct_s": t_direct,
        "app_s": t_app,
        "ratio": ratio,
        "ratio_goal": 1.2,
        "concurrent": args.concurrent,
        "concurrent_correct": correct,
        "concurrent_wall_s": wall,
        "server_alive_after": alive,
        "checkpoint": str(checkpoint),
        "cpu_count": os.cpu_count(),
    }
    (WORK / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"report: {WORK / 'report.json'}")
    return 0 if correct == args.concurrent else 1


if __name__ == "__main__":
    sys.exit(main())
