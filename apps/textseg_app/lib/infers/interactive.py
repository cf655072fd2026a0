"""MONAI Label infer task for the interactive model: clicks (and an optional box) with or without text."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.infers.text_prompt import TextPromptInferTask
from lib.settings import AppSettings
from textseg.geometry import bbox_to_grid
from textseg.prompts import Resolution, resolution_structures, resolve_structures
from textseg.spatial import (
    SpatialPromptError,
    check_box,
    check_point,
    constrain_to_clicks,
    encode_spatial_prompts,
    infer_with_guidance,
    points_to_grid,
)
from textseg.transforms import TARGET_IDS_KEY
from textseg.vocabulary import load_vocabulary

__all__ = ["InteractiveInferTask", "parse_points", "DEFAULT_CLICK_RADIUS"]

logger = logging.getLogger(__name__)

DEFAULT_CLICK_RADIUS = 3.0
"""Clicks are also hard constraints within this many voxels of the network's grid (``params.click_radius``; 0: off)."""


def parse_points(value: Any, what: str) -> list[list[float]]:
    """MONAI Label's click list ``[[x, y, z], ...]`` (voxel indices of the image as stored) -> list of points.

    Raises:
        SpatialPromptError: not a list of 3-number points.
    """
    if value in (None, "", []):
        return []
    if not isinstance(value, (list, tuple)) or any(not isinstance(p, (list, tuple)) for p in value):
        raise SpatialPromptError(f"{what} must be a list of [x, y, z] voxel coordinates, got {value!r}.")
    points = []
    for p in value:
        if len(p) != 3 or any(isinstance(c, bool) or not isinstance(c, (int, float)) for c in p):
            raise SpatialPromptError(f"{what} point {list(p)!r} must be 3 numbers [x, y, z] (voxel coordinates).")
        points.append([float(c) for c in p])
    return points


class InteractiveInferTask(TextPromptInferTask):
    """Segment one structure from clicks, with or without text (MONAI Label's DeepGrow convention).

    Request params: ``foreground`` and ``background``, lists of ``[x, y, z]`` voxel indices of the image as stored
    (what 3D Slicer and OHIF send); optional ``box`` ``[x0, y0, z0, x1, y1, z1]`` (end exclusive) in the same voxels;
    optional ``label`` (a structure name, Slicer's segment name) or ``prompt`` (text). Without text the structure
    is the one, among the model's classes, that the foreground clicks fall on (highest mean probability at the
    clicks, all classes answered in one pass). Clicks are mapped through world coordinates onto the network's grid
    (after orientation, resampling and any canonicalization) and encoded as guidance
    (:func:`textseg.spatial.encode_spatial_prompts`). The result is a label map of the structure's vocabulary id on
    the image's grid. Clicks also act as hard constraints within ``click_radius`` voxels of the network's grid
    (:func:`textseg.spatial.constrain_to_clicks`; default :data:`DEFAULT_CLICK_RADIUS`, 0 leaves the network's
    answer as it is). Points outside the image, empty boxes or boxes of negative size answer 400 with a message.
    """

    def __init__(
        self,
        settings: AppSettings,
        description: str = "Interactive segmentation: clicks (foreground/background), optional box and optional label or prompt",
    ):
        super().__init__(settings, default_prompt="", description=description)
        self._every_class = resolve_structures(self.class_names)
        self._local = threading.local()
        self.type = InferType.DEEPGROW
        self._config.update({"label": "", "foreground": [], "background": [], "click_radius": DEFAULT_CLICK_RADIUS})

    # --- request handling ------------------------------------------------------------------------------
    def resolution_of(self, request: dict) -> Resolution:
        """The structures a request may mean, resolved once: its ``label`` (a structure name or text), ``prompt`` or
        ``structures``, else every class. One of them is chosen by the clicks, so position/size queries become
        their candidates."""
        prompt = request.get("prompt")
        if isinstance(prompt, Resolution):
            return prompt
        label = request.get("label") or ""
        if not isinstance(label, str):
            raise ValueError(f"label must be a structure name, got {type(label).__name__}.")
        if label.strip():
            resolution = resolve_structures([label])
        elif request.get("prompt") or request.get("structures"):
            resolution = super().resolution_of(request)
        else:
            resolution = self._every_class
        if resolution.queries:
            resolution = resolve_structures(resolution_structures(resolution, allowed=self.class_names))
        request["prompt"] = resolution
        return resolution

    def candidates_of(self, request: dict) -> list[str]:
        """The structures a request may mean, in the order of the network's prompts."""
        return resolution_structures(self.resolution_of(request), allowed=self.class_names)

    def spatial_prompts_of(self, request: dict, shape: Sequence[int] | None = None) -> dict[str, list]:
        """``{"foreground", "background", "boxes"}`` of a request in image voxels, checked against ``shape`` when given.

        Raises:
            SpatialPromptError: malformed points, a point outside the image, an empty box or one of negative size.
        """
        prompts = {
            "foreground": parse_points(request.get("foreground"), "foreground"),
            "background": parse_points(request.get("background"), "background"),
            "boxes": [],
        }
        box = request.get("box")
        if box not in (None, "", []):
            if (
                not isinstance(box, (list, tuple))
                or len(box) != 6
                or any(isinstance(c, bool) or not isinstance(c, (int, float)) for c in box)
            ):
                raise SpatialPromptError(f"box must be [x0, y0, z0, x1, y1, z1] (voxel coordinates, end exclusive), got {box!r}.")
            prompts["boxes"] = [[float(c) for c in box]]
        if shape is not None:
            shape = tuple(int(s) for s in shape)
            for p in prompts["foreground"]:
                check_point(p, shape, "foreground point")
            for p in prompts["background"]:
                check_point(p, shape, "background point")
            for b in prompts["boxes"]:
                check_box(b, shape)
        else:  # image size unknown yet (checked again on the image): at least refuse empty boxes and negative sizes
            for b in prompts["boxes"]:
                check_box(b, (2**31,) * 3)
        return prompts

    @staticmethod
    def click_radius_of(request: dict) -> float:
        """``params.click_radius`` (voxels of the network's grid, >= 0; default :data:`DEFAULT_CLICK_RADIUS`)."""
        value = request.get("click_radius", DEFAULT_CLICK_RADIUS)
        try:
            radius = float(value)
        except (TypeError, ValueError):
            radius = float("nan")
        if isinstance(value, bool) or not radius >= 0:
            raise SpatialPromptError(f"click_radius must be a number of voxels >= 0, got {value!r}.")
        return radius

    def __call__(self, request, callbacks=None):
        try:
            candidates = self.candidates_of(request)
            image = request.get("image")
            shape = None
            if isinstance(image, str) and Path(image).is_file() and image.endswith((".nii", ".nii.gz")):
                shape = nib.load(image).shape[:3]
            prompts = self.spatial_prompts_of(request, shape)
            self.click_radius_of(request)
        except SpatialPromptError as e:
            raise HTTPException(status_code=400, detail=f"bad click: {e}") from e
        if len(candidates) > 1 and not prompts["foreground"]:
            raise HTTPException(
                status_code=400,
                detail=(
                    f"the interactive model segments one structure: name it (params.label or params.prompt; it resolves to "
                    f"{len(candidates)} structures now) or give a foreground click on it."
                ),
            )
        if not self.settings.checkpoint.exists():
            raise HTTPException(
                status_code=503,
                detail=self.settings.missing_checkpoint_message().replace("make demo", "make robustness (trains the interactive model)"),
            )
        self._local.choice = None
        result_file, result_json = super().__call__(request, callbacks)
        chosen = self._local.choice or candidates[0]
        table = load_vocabulary().label_table([chosen])
        result_json.update(
            {
                "targets": [chosen],
                "label_names": {row["name"]: row["id"] for row in table},
                "labels": table,
                "structure": chosen,
                "candidates": candidates,
                "foreground": prompts["foreground"],
                "background": prompts["background"],
            }
        )
        return result_file, result_json

    # --- BasicInferTask hooks --------------------------------------------------------------------------
    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        image = data[self.input_key]
        meta = getattr(image, "meta", {})
        source_affine = meta.get("original_affine", meta.get("affine"))
        if source_affine is None:
            raise ValueError("the preprocessed image has no affine: cannot place the clicks on the network's grid.")
        prompts = self.spatial_prompts_of(data, meta.get("spatial_shape"))
        spatial = tuple(int(s) for s in image.shape[1:])

        def on_grid(points):  # image voxels -> network voxels, clipped to the grid (canonicalization may turn a click near the edge out)
            mapped = points_to_grid(points, source_affine, image.affine)
            return [tuple(float(np.clip(c, 0, n - 1)) for c, n in zip(p, spatial)) for p in mapped]

        positives, negatives = on_grid(prompts["foreground"]), on_grid(prompts["background"])
        # a box goes through world space by its 8 corners (rotations included), like the active-learning patches
        boxes = [sum(bbox_to_grid([box[:3], box[3:]], source_affine, image.affine, spatial), []) for box in prompts["boxes"]]
        guidance = encode_spatial_prompts(spatial, positives, negatives, boxes)
        network = self._get_network(device, data)
        device = torch.device(device)
        prompts_embedding = torch.as_tensor(data["text_embedding"]).to(device)
        num_prompts = prompts_embedding.shape[0]
        vocabulary = load_vocabulary()
        names = [vocabulary.by_id(int(i)).name for i in data[TARGET_IDS_KEY]]  # the order of the prompt embeddings
        x = torch.as_tensor(image)[None].to(device)
        batch_guidance = guidance[None, None].expand(1, num_prompts, *guidance.shape).to(device)
        with torch.no_grad():
            logits = infer_with_guidance(self.inferer(data), x, network, batch_guidance, text_embedding=prompts_embedding)[0]
        best = 0
        if num_prompts > 1:
            voxels = [tuple(int(round(c)) for c in p) for p in positives]
            scores = torch.stack([torch.sigmoid(logits[(slice(None), *v)]) for v in voxels]).mean(0)
            best = int(torch.argmax(scores))
            keep = torch.zeros(num_prompts, dtype=torch.bool, device=logits.device)
            keep[best] = True
            logits = torch.where(keep.reshape(-1, *([1] * len(spatial))), logits, torch.full_like(logits, -1e4))
        radius = self.click_radius_of(data)
        logits[best] = constrain_to_clicks(logits[best], positives, negatives, radius, foreground=20.0, background=-20.0)
        self._local.choice = names[best]
        data[self.output_label_key] = logits
        return data
