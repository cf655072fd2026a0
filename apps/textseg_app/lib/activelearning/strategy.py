"""Active-learning strategies for ``/activelearning/<name>``: the next image and the patch to label first."""

from __future__ import annotations

import logging
import math
import time

import nibabel as nib
import numpy as np
from monailabel.interfaces.tasks.strategy import Strategy

from lib.activelearning.candidates import CandidateStore
from lib.activelearning.scoring import UncertaintyScoring, records_dir, score_images
from lib.settings import AppSettings
from textseg.active_learning import bbox_to_grid, get_strategy, select_next
from textseg.geometry import box_world_corners

__all__ = ["TextsegStrategy"]

logger = logging.getLogger(__name__)


class TextsegStrategy(Strategy):
    """One registered strategy of :mod:`textseg.active_learning` (random, random_label, entropy, bald,
    power_entropy, power_bald, clasp_pe) choosing among the datastore's unlabelled images.

    The choice reads the records of the background scoring task (:class:`UncertaintyScoring`); images
    without a current record are scored on the spot, so the first request works before any background
    run. ``random`` needs no model. The answer holds, besides MONAI Label's ``id``:

    - ``patch_bbox``: ``[[x0, y0, z0], [x1, y1, z1]]`` voxel indices of the image as MONAI loads it (stop
      exclusive) -- the region to annotate first; ``patch_bbox_world``: its corners in RAS mm;
    - ``chosen_by`` (the strategy), ``score`` and ``measure`` (what the choice maximised), ``query_index``, and ``class``
      for ClaSP PE's class-stratified queries and foreground-centred random patches.

    Every answer is appended to the strategy's history, which drives ClaSP PE's schedule and classes.
    """

    def __init__(self, name: str, settings: AppSettings, scoring: UncertaintyScoring):
        spec = get_strategy(name)
        super().__init__(spec.description)
        self.name = spec.name
        self.settings = settings
        self.scoring = scoring

    def info(self):
        return {"description": self.description, "default": self.name == self.settings.active_learning_strategy}

    def __call__(self, request, datastore):
        unlabelled = sorted(datastore.get_unlabeled_images())
        if not unlabelled:
            return {}
        store = CandidateStore(records_dir(datastore))
        if self.name == "random":
            records = {i: self._header_record(datastore.get_image_uri(i)) for i in unlabelled}
        else:
            scorer = self.scoring.scorer
            records = {i: store.load(i) for i in unlabelled}
            missing = [i for i, r in records.items() if not scorer.is_fresh(r)]
            if missing:
                logger.info(f"active learning ({self.name}): scoring {len(missing)} image(s) without a current record first")
                score_images(scorer, store, datastore, missing, seed=self.settings.active_learning_seed)
                records.update({i: store.load(i) for i in missing})
            records = {i: r for i, r in records.items() if scorer.is_fresh(r)}
        history = store.history(self.name)
        rng = np.random.default_rng([self.settings.active_learning_seed, len(history), time.time_ns() % (2**32)])
        choice = select_next(records, self.name, history, rng=rng, num_rounds=self.settings.active_learning_rounds)
        record = records[choice["id"]]
        choice["chosen_by"] = choice.pop("strategy")  # MONAI Label merges the image info, whose "strategy" is its own
        choice["network_patch_bbox"] = choice["patch_bbox"]
        network_affine = np.asarray(record.get("network_affine", record["image_affine"]))
        choice["patch_bbox"] = bbox_to_grid(choice["patch_bbox"], network_affine, np.asarray(record["image_affine"]), record["image_shape"])
        world = box_world_corners(choice["patch_bbox"], record["image_affine"])
        choice["patch_bbox_world"] = [world.min(0).round(2).tolist(), world.max(0).round(2).tolist()]
        store.append_history(self.name, {k: choice[k] for k in ("id", "query_index", "measure", "class") if k in choice})
        logger.info(f"active learning ({self.name}): next {choice['id']} patch {choice['patch_bbox']} score {choice['score']}")
        return choice

    def _header_record(self, path: str) -> dict:
        """``random`` needs only the image's shape: read from the header, patch size in the image's voxels."""
        image = nib.load(path)
        shape = [int(s) for s in image.shape[:3]]
        zooms = [float(z) for z in image.header.get_zooms()[:3]]
        pixdim = [float(p) for p in self.settings.config_value("pixdim")]
        patch = [min(s, max(1, math.ceil(self.settings.active_learning_patch_size * p / z))) for s, p, z in zip(shape, pixdim, zooms)]
        return {"shape": shape, "patch_size": patch, "image_affine": np.asarray(image.affine, dtype=float).tolist(), "image_shape": shape}
