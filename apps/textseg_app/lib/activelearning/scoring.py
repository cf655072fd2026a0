"""``textseg_uncertainty``: the background scoring task behind the app's active-learning strategies."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from monailabel.interfaces.tasks.scoring import ScoringMethod

from lib.activelearning.candidates import RECORDS_DIR, CandidateStore, ImageScorer
from lib.settings import AppSettings

__all__ = ["UncertaintyScoring", "records_dir"]

logger = logging.getLogger(__name__)


def records_dir(datastore) -> Path:
    """Where a datastore's active-learning records live (``<datastore root>/.textseg_active_learning``)."""
    return Path(datastore.datastore_path if hasattr(datastore, "datastore_path") else datastore._datastore_path) / RECORDS_DIR


class UncertaintyScoring(ScoringMethod):
    """Scores every unlabelled image with the current checkpoint and stores one record per image.

    MONAI Label runs it in a background process at start-up, after each training and after each
    ``/activelearning`` request (``MONAI_LABEL_AUTO_UPDATE_SCORING``), or on ``POST /scoring/textseg_uncertainty``.
    Images whose record was computed with the same checkpoint and settings are skipped, so a run after a
    new label costs nothing; after training every record is recomputed. An image that fails (unreadable,
    NaN) is reported and skipped; the other records are kept.

    Request parameters: ``images`` (ids to score; default: every unlabelled image), ``force`` (recompute).
    """

    def __init__(self, settings: AppSettings):
        super().__init__("Uncertainty of every unlabelled image for the active-learning strategies (textseg)")
        self.settings = settings
        self._scorer: ImageScorer | None = None

    @property
    def scorer(self) -> ImageScorer:
        if self._scorer is None:
            self._scorer = ImageScorer(self.settings)
        return self._scorer

    def __call__(self, request, datastore):
        if not self.settings.checkpoint.exists():
            logger.warning("active-learning scoring skipped: " + self.settings.missing_checkpoint_message())
            return {"scored": [], "skipped": [], "failed": {}, "detail": "no checkpoint"}
        store = CandidateStore(records_dir(datastore))
        ids = request.get("images") or datastore.get_unlabeled_images()
        force = str(request.get("force", "false")).lower() in ("1", "true", "yes")
        return score_images(self.scorer, store, datastore, list(ids), force=force, seed=self.settings.active_learning_seed)


def score_images(scorer: ImageScorer, store: CandidateStore, datastore, ids: list[str], force: bool = False, seed: int = 0) -> dict:
    """Compute and store the records of ``ids`` that are missing or stale; returns what was done."""
    result = {"scored": [], "skipped": [], "failed": {}}
    start = time.time()
    for i, image_id in enumerate(ids, start=1):
        if not force and scorer.is_fresh(store.load(image_id)):
            result["skipped"].append(image_id)
            continue
        try:
            record = scorer.score(datastore.get_image_uri(image_id), seed=seed + i)
        except Exception as e:  # one bad image must not stop the others
            logger.warning(f"active-learning scoring of {image_id} failed: {e}")
            result["failed"][image_id] = str(e)
            continue
        store.save(image_id, record)
        result["scored"].append(image_id)
        logger.info(
            f"active-learning scoring {i}/{len(ids)}: {image_id} (mean entropy {record['mean_entropy']:.4f}, {time.time() - start:.1f} s)"
        )
    return result
