"""Per-image active-learning records: computed with the bundle's network, stored as JSON beside the datastore."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose

from lib.settings import AppSettings
from textseg.active_learning import get_strategy, image_candidates, predict_probs
from textseg.bundle import bundle_parser
from textseg.checkpoints import require_matching_embeddings
from textseg.files import write_atomic

__all__ = ["CandidateStore", "ImageScorer", "RECORDS_DIR"]

logger = logging.getLogger(__name__)

RECORDS_DIR = ".textseg_active_learning"
"""Folder (in the datastore root) holding ``<image id>.json`` records and ``history.json``."""

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _write_json_atomic(path: Path, payload: Any) -> None:
    write_atomic(path, json.dumps(payload))


class CandidateStore:
    """One JSON record per image and the query history of every strategy, written atomically.

    The background scoring process writes records while the server reads them; a record is replaced in
    one ``os.replace`` so a reader never sees half a file.

    Args:
        root: folder of the records (created on first write).
    """

    _lock = threading.Lock()

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, image_id: str) -> Path:
        return self.root / f"{_SAFE.sub('_', image_id)}.json"

    def load(self, image_id: str) -> dict | None:
        """The stored record of an image, or None (missing or unreadable)."""
        try:
            return json.loads(self._path(image_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def save(self, image_id: str, record: dict) -> None:
        _write_json_atomic(self._path(image_id), record)

    def history(self, strategy: str) -> list[dict]:
        """Earlier selections of ``strategy``, oldest first."""
        try:
            return list(json.loads((self.root / "history.json").read_text(encoding="utf-8")).get(strategy, []))
        except (OSError, ValueError):
            return []

    def append_history(self, strategy: str, entry: dict) -> None:
        with self._lock:
            path = self.root / "history.json"
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            data.setdefault(strategy, []).append(entry)
            _write_json_atomic(path, data)


class ImageScorer:
    """Scores images with the bundle's network for the label set (every class of the bundle).

    The image goes through the bundle's own ``ct_transforms`` (no second copy of the preprocessing);
    probabilities come from :func:`textseg.active_learning.predict_probs`, MC-dropout samples with the
    encoder's dropout switched on at ``settings.mc_dropout_rate``. A record holds the candidate grids of
    :func:`textseg.active_learning.image_candidates` plus the geometry to map patches back to the image
    (``network_affine``, ``image_affine``, ``image_shape``) and the ``model`` it was computed with.
    """

    def __init__(self, settings: AppSettings):
        self.settings = settings
        parser = bundle_parser(settings.bundle_dir, settings.configs)
        if settings.mc_dropout_samples:
            parser["network_def"]["drop_rate"] = settings.mc_dropout_rate
        self.class_names: list[str] = list(parser["class_names"])
        self.transform = Compose(parser.get_parsed_content("ct_transforms"))
        self.embeddings = parser.get_parsed_content("class_embeddings")
        self.roi_size = tuple(int(r) for r in settings.config_value("roi_size"))
        self._parser = parser
        self._network = None
        self._network_tag = None

    def model_tag(self) -> str:
        """Identifies the checkpoint and the scoring settings; a record with another tag is stale."""
        st = self.settings.checkpoint.stat()
        s = self.settings
        return f"{s.checkpoint}:{st.st_mtime_ns}:{st.st_size}:p{s.active_learning_patch_size}:mc{s.mc_dropout_samples}@{s.mc_dropout_rate}"

    def is_fresh(self, record: dict | None) -> bool:
        return bool(record) and record.get("model") == self.model_tag()

    def network(self) -> torch.nn.Module:
        """The checkpoint's network on the configured device (reloaded when the checkpoint changes)."""
        tag = self.model_tag()
        if self._network is None or self._network_tag != tag:
            network = self._parser.get_parsed_content("network_def", lazy=False)
            state = torch.load(self.settings.checkpoint, map_location="cpu", weights_only=True)
            require_matching_embeddings(state.get("class_embeddings"), self.embeddings, self.settings.checkpoint)
            network.load_state_dict(state)
            self._network = network.to(self.settings.device).eval()
            self._network_tag = tag
        return self._network

    def score(self, image_path: str, seed: int = 0) -> dict:
        """The record of one image (see the class docstring)."""
        data = self.transform({"image": image_path})
        image = data["image"]  # MetaTensor [1, X, Y, Z] on the network's grid
        network = self.network()
        probs = predict_probs(network, image, self.embeddings, roi_size=self.roi_size)
        mc_probs = None
        samples = self.settings.mc_dropout_samples
        if samples:
            mc_probs = predict_probs(network, image, self.embeddings, mc_samples=samples, roi_size=self.roi_size)
        patch = (self.settings.active_learning_patch_size,) * 3
        record = image_candidates(probs, self.class_names, patch, mc_probs=mc_probs, rng=seed)
        meta = image.meta
        record.update(
            {
                "model": self.model_tag(),
                "network_affine": np.asarray(image.affine, dtype=float).tolist(),
                "image_affine": np.asarray(meta["original_affine"], dtype=float).tolist(),
                "image_shape": [int(s) for s in np.asarray(meta["spatial_shape"]).tolist()],
            }
        )
        return record

    @staticmethod
    def needs_model(strategy: str) -> bool:
        return get_strategy(strategy).name != "random"
