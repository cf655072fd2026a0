"""``text_prompt``: segment what a free-text prompt names (``params: {"prompt": "liver and kidneys"}``)."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.config import TaskConfig

from lib.infers import TextPromptInferTask
from lib.settings import AppSettings
from lib.trainers import TextPromptTrainTask

__all__ = ["TextPrompt"]


class TextPrompt(TaskConfig):
    """The text-prompted bundle model; its trainer fine-tunes the shared checkpoint on saved labels."""

    def init(self, name: str, model_dir: str, conf: dict, planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.settings: AppSettings = kwargs["settings"]
        self.path = str(self.settings.checkpoint)

    def infer(self):
        return TextPromptInferTask(self.settings, description="Segment the structures a free-text prompt names (param: prompt)")

    def trainer(self):
        return TextPromptTrainTask(self.settings, self.conf)
