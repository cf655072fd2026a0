"""``all_structures``: automatic segmentation of every structure the bundle was trained on (no prompt)."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.config import TaskConfig

from lib.infers import TextPromptInferTask
from lib.settings import AppSettings

__all__ = ["AllStructures"]


class AllStructures(TaskConfig):
    """Every class of the bundle in one pass (the request's prompt is ignored).

    Shares the checkpoint (and so the trainer) with ``text_prompt``; it has no trainer of its own.
    """

    def init(self, name: str, model_dir: str, conf: dict, planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.settings: AppSettings = kwargs["settings"]
        self.path = str(self.settings.checkpoint)

    def infer(self):
        return TextPromptInferTask(self.settings, all_structures=True, description="Segment every structure the model knows")

    def trainer(self):
        return None
