"""Click benchmark: Dice of the interactive (spatial-prompt) model after 0..N simulated corrective clicks.

For every held-out case and every structure the case contains, the model first segments from the text alone
(0 clicks); then, N times, a simulated annotator clicks on the current error (:func:`textseg.spatial.next_corrective_click`:
a positive click deep inside the largest missed region, or a negative click deep inside the largest false
positive), the clicks accumulate in that structure's guidance (:func:`textseg.spatial.encode_spatial_prompts`) and
the model segments again. Everything happens on the network's grid (the bundle's preprocessing: RAS, the
configs' ``pixdim``), where the Dice is measured too.

Two inference modes:

- ``sliding_window``: the bundle's sliding window over the whole volume, every structure (with its own clicks)
  answered in the same pass (:class:`textseg.spatial.GuidedSlidingWindowInferer`);
- ``zoom``: zoom-out-zoom-in (:func:`textseg.spatial.zoom_out_zoom_in`), one structure at a time: the whole
  volume resized to the patch size finds the region, which is segmented again at full resolution; the region
  always contains the positive clicks.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from textseg.bundle import bundle_parser, load_bundle_network
from textseg.files import atomic_path
from textseg.metrics import binary_dice
from textseg.spatial import GuidedSlidingWindowInferer, constrain_to_clicks, encode_spatial_prompts, next_corrective_click, zoom_out_zoom_in

__all__ = [
    "INTERACTIVE_CONFIGS",
    "MODES",
    "load_interactive_network",
    "make_click_cases",
    "click_curves",
    "run_click_benchmark",
    "summarize_clicks",
    "is_monotonic",
    "markdown_table",
    "write_report",
]

INTERACTIVE_CONFIGS = ("inference.json", "tiny.json", "interactive.json")
"""The bundle configs of the tiny interactive model."""

MODES = ("sliding_window", "zoom")
"""Inference modes: the bundle's sliding window, or zoom-out-zoom-in."""


def load_interactive_network(
    checkpoint: str | os.PathLike,
    bundle_dir: str | os.PathLike,
    configs: Sequence[str] = INTERACTIVE_CONFIGS,
    device: str | torch.device = "cpu",
):
    """The bundle's network (``spatial_prompts=True``) with the checkpoint's weights, in eval mode, and the parsed config.

    Raises:
        FileNotFoundError: no checkpoint.
        ValueError: the configs build a network without spatial prompts, or the checkpoint does not fit it.
    """
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}: train the interactive model first (scripts/bench_clicks.py does).")
    parser = bundle_parser(bundle_dir, configs)
    if not parser.get("network_def#spatial_prompts", False):
        raise ValueError(f"configs {list(configs)} build a network without spatial prompts: add interactive.json.")
    return load_bundle_network(checkpoint, bundle_dir, configs, device)


def make_click_cases(
    out_dir: str | os.PathLike,
    seeds: Sequence[int] = (1001, 1002),
    spacing: Sequence[float] = (4.0, 4.0, 4.0),
    shape: Sequence[int] | None = None,
) -> list[dict]:
    """Held-out phantoms (seeds outside the demo's training seeds 0-25) as NIfTI; returns ``{"image", "label"}`` dicts."""
    from textseg.phantom import make_phantom

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = []
    for seed in seeds:
        image, label = out_dir / f"phantom{seed}.nii.gz", out_dir / f"phantom{seed}_label.nii.gz"
        if not (image.exists() and label.exists()):
            make_phantom(seed, shape=shape, spacing=spacing).save(image, label)
        cases.append({"image": str(image), "label": str(label)})
    return cases


def click_curves(
    network: torch.nn.Module,
    image: torch.Tensor,
    targets: Mapping[str, np.ndarray],
    embeddings: torch.Tensor,
    roi_size: Sequence[int],
    num_clicks: int = 5,
    mode: str = "sliding_window",
    sw_batch_size: int = 4,
    threshold: float = 0.5,
    sigma: float = 2.0,
    click_radius: float = 0.0,
    progress=None,
) -> dict[str, list[dict]]:
    """Dice of each structure after 0..``num_clicks`` corrective clicks on one image.

    Args:
        network: :class:`textseg.networks.TextSwinUNETR` with ``spatial_prompts=True``, eval mode.
        image: preprocessed image [1, *S] (the network's grid).
        targets: structure -> binary reference [*S].
        embeddings: prompt embeddings [K, D], in the order of ``targets``.
        roi_size: the network's patch size.
        num_clicks: corrective clicks per structure.
        mode: ``"sliding_window"`` or ``"zoom"`` (see the module docstring).
        sw_batch_size: windows per forward pass (sliding window).
        threshold: probability of foreground.
        sigma: Gaussian radius of a click, in voxels.
        click_radius: when positive, clicks are also hard constraints (:func:`textseg.spatial.constrain_to_clicks`):
            the ball of this radius (voxels) around a positive click is foreground, around a negative click background;
            0 measures what the network makes of the guidance alone.
        progress: optional tqdm bar, advanced once per inference round.

    Returns:
        structure -> one entry per click count ``{"clicks", "dice", "positive", "negative"}`` (clicks made so far).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}.")
    names = list(targets)
    if embeddings.shape[0] != len(names):
        raise ValueError(f"{embeddings.shape[0]} prompt embeddings for {len(names)} structures.")
    device = next(network.parameters()).device
    spatial = tuple(image.shape[1:])
    x = torch.as_tensor(image, dtype=torch.float32)[None].to(device)
    text = torch.as_tensor(embeddings, dtype=torch.float32).to(device)
    inferer = GuidedSlidingWindowInferer(roi_size=tuple(roi_size), sw_batch_size=sw_batch_size, overlap=0.25, mode="gaussian")
    clicks = {n: {"positive": [], "negative": []} for n in names}
    curves: dict[str, list[dict]] = {n: [] for n in names}

    def guidance_of(name: str) -> torch.Tensor:
        return encode_spatial_prompts(spatial, clicks[name]["positive"], clicks[name]["negative"], sigma=sigma)

    def predict() -> np.ndarray:
        with torch.no_grad():
            if mode == "sliding_window":
                guidance = torch.stack([guidance_of(n) for n in names])[None].to(device)
                probs = torch.sigmoid(inferer(x, network, text_embedding=text, guidance=guidance))[0]
            else:
                probs = []
                for k, name in enumerate(names):
                    stacked = torch.cat([x, guidance_of(name)[None].to(device)], dim=1)  # [1, 1 + 3, *S]

                    def predictor(window, k=k):
                        return torch.sigmoid(network(window[:, :1], text[k : k + 1], guidance=window[:, 1:][:, None]))

                    probs.append(
                        zoom_out_zoom_in(stacked, predictor, roi_size, threshold=threshold, include_points=clicks[name]["positive"])[0, 0]
                    )
                probs = torch.stack(probs)
        if click_radius > 0:
            probs = torch.stack(
                [constrain_to_clicks(probs[k], clicks[n]["positive"], clicks[n]["negative"], click_radius) for k, n in enumerate(names)]
            )
        if progress is not None:
            progress.update(1)
        return (probs >= threshold).cpu().numpy()

    prediction = None  # the answer to the previous step's clicks
    for step in range(num_clicks + 1):
        if step:
            for k, name in enumerate(names):
                click = next_corrective_click(prediction[k], targets[name])
                if click is not None:
                    clicks[name]["positive" if click[1] else "negative"].append(click[0])
        prediction = predict()
        for k, name in enumerate(names):
            curves[name].append(
                {
                    "clicks": step,
                    "dice": binary_dice(prediction[k], np.asarray(targets[name]) > 0),
                    "positive": len(clicks[name]["positive"]),
                    "negative": len(clicks[name]["negative"]),
                }
            )
    return curves


def run_click_benchmark(
    checkpoint: str | os.PathLike,
    cases: Sequence[Mapping],
    bundle_dir: str | os.PathLike = "bundles/text_prompted_ct_segmentation",
    configs: Sequence[str] = INTERACTIVE_CONFIGS,
    num_clicks: int = 5,
    modes: Sequence[str] = MODES,
    label_map: Mapping[int, str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    click_radius: float = 0.0,
) -> dict:
    """Click curves of the interactive model on labelled cases.

    Args:
        checkpoint: trained weights for ``configs`` (with ``interactive.json``).
        cases: dicts with ``image`` and ``label`` (NIfTI paths; label ids of ``label_map``).
        bundle_dir, configs: the bundle and its configs (preprocessing, patch size, classes, network).
        num_clicks: corrective clicks per structure.
        modes: inference modes to run (:data:`MODES`).
        label_map: label id -> vocabulary name (default: the phantom's).
        device: default CUDA when available.
        progress: show a tqdm progress bar.
        click_radius: clicks also as hard constraints of this radius (voxels; see :func:`click_curves`), 0 for none.

    Returns:
        ``{"rows": [...], "summary": [...], "monotonic": {mode: bool}, "seconds", ...}``: one row per case, mode,
        structure and click count.
    """
    from monai.transforms import Compose
    from tqdm.auto import tqdm

    from textseg.phantom import PHANTOM_LABELS
    from textseg.transforms import ct_transforms

    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose among {MODES}.")
    if num_clicks < 1:
        raise ValueError(f"num_clicks must be at least 1, got {num_clicks}.")
    if not cases:
        raise ValueError("no cases to benchmark.")
    started = time.time()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    network, parser = load_interactive_network(checkpoint, bundle_dir, configs, device)
    class_names = list(parser["class_names"])
    all_embeddings = parser.get_parsed_content("class_embeddings")
    roi_size = [int(s) for s in parser["roi_size"]]
    sw_batch_size = int(parser["sw_batch_size"])
    threshold = float(parser["threshold"])
    label_map = dict(label_map or PHANTOM_LABELS)
    preprocess = Compose(ct_transforms(["image"], label_key="label", pixdim=parser["pixdim"], hu_range=parser["hu_range"]))
    rows, seconds = [], {}
    bar = tqdm(total=len(cases) * len(modes) * (num_clicks + 1), desc="click benchmark", disable=not progress)
    try:
        for mode in modes:
            tick = time.time()
            for case in cases:
                data = preprocess({"image": case["image"], "label": case["label"]})
                label = np.asarray(torch.as_tensor(data["label"])[0])
                targets = {name: label == i for i, name in sorted(label_map.items()) if name in class_names and (label == i).any()}
                if not targets:
                    raise ValueError(f"{case['label']}: none of the model's structures is labelled.")
                embeddings = all_embeddings[[class_names.index(n) for n in targets]]
                curves = click_curves(
                    network,
                    torch.as_tensor(data["image"]),
                    targets,
                    embeddings,
                    roi_size,
                    num_clicks,
                    mode,
                    sw_batch_size,
                    threshold,
                    click_radius=click_radius,
                    progress=bar,
                )
                for name, curve in curves.items():
                    for point in curve:
                        rows.append({"case": Path(case["image"]).name, "mode": mode, "structure": name, **point})
            seconds[mode] = round(time.time() - tick, 1)
    finally:
        bar.close()
    summary = summarize_clicks(rows)
    return {
        "rows": rows,
        "summary": summary,
        "monotonic": {m: is_monotonic(summary, m) for m in modes},
        "seconds": round(time.time() - started, 1),
        "mode_seconds": seconds,
        "checkpoint": str(checkpoint),
        "configs": list(configs),
        "cases": [c["image"] for c in cases],
        "num_clicks": num_clicks,
        "click_radius": click_radius,
    }


def summarize_clicks(rows: Sequence[Mapping]) -> list[dict]:
    """Mean and standard deviation of the Dice over (case, structure) per mode and click count (NaN rows skipped)."""
    summary = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        for clicks in sorted({r["clicks"] for r in rows if r["mode"] == mode}):
            values = [r["dice"] for r in rows if r["mode"] == mode and r["clicks"] == clicks and not math.isnan(r["dice"])]
            summary.append(
                {
                    "mode": mode,
                    "clicks": clicks,
                    "mean": float(np.mean(values)) if values else float("nan"),
                    "std": float(np.std(values)) if values else float("nan"),
                    "n": len(values),
                }
            )
    return summary


def is_monotonic(summary: Sequence[Mapping], mode: str, first: int = 1) -> bool:
    """Whether the mean Dice of ``mode`` rises at every click from ``first`` clicks to the last (the issue's goal: 1 -> 5)."""
    means = [s["mean"] for s in sorted((s for s in summary if s["mode"] == mode), key=lambda s: s["clicks"]) if s["clicks"] >= first]
    return len(means) >= 2 and all(b > a for a, b in zip(means, means[1:]))


def markdown_table(summary: Sequence[Mapping]) -> str:
    """Rows: click counts (0 = text only); columns: modes; cells: mean ± std Dice."""
    modes = list(dict.fromkeys(s["mode"] for s in summary))
    clicks = sorted({s["clicks"] for s in summary})
    cell = {(s["mode"], s["clicks"]): s for s in summary}
    lines = ["| clicks | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for c in clicks:
        label = f"{c} (text only)" if c == 0 else str(c)
        lines.append(
            f"| {label} | "
            + " | ".join(f"{cell[m, c]['mean']:.3f} ± {cell[m, c]['std']:.3f}" if (m, c) in cell else "" for m in modes)
            + " |"
        )
    return "\n".join(lines)


def write_report(result: Mapping, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``click_benchmark.json``, ``click_benchmark.md`` (table) and ``click_benchmark.png`` (curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from textseg.files import write_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "click_benchmark.json", "markdown": out_dir / "click_benchmark.md", "png": out_dir / "click_benchmark.png"}
    write_atomic(paths["json"], json.dumps(result, indent=2))
    verdicts = ", ".join(
        f"{m}: {'rises at every click' if ok else 'does NOT rise at every click'} 1→{result['num_clicks']}"
        for m, ok in result["monotonic"].items()
    )
    constraint = (
        f"clicks also hard constraints within {result.get('click_radius', 0):g} voxels"
        if result.get("click_radius")
        else "clicks through the network's guidance only"
    )
    note = (
        "Mean ± std Dice over (case, structure) after 0..N simulated corrective clicks (0 = text only), on the "
        f"network's grid; {constraint}. {verdicts}.\n"
    )
    write_atomic(paths["markdown"], note + "\n" + markdown_table(result["summary"]) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in dict.fromkeys(s["mode"] for s in result["summary"]):
        points = sorted((s for s in result["summary"] if s["mode"] == mode), key=lambda s: s["clicks"])
        x = np.array([p["clicks"] for p in points])
        mean, std = np.array([p["mean"] for p in points]), np.array([p["std"] for p in points])
        ax.plot(x, mean, marker="o", label=mode)
        ax.fill_between(x, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("corrective clicks per structure (0 = text only)")
    ax.set_ylabel("Dice (mean ± std)")
    ax.set_ylim(0, 1.05)
    ax.set_title("interactive model: Dice vs clicks")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(paths["png"]) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return paths
