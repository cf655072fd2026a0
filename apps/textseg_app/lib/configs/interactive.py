"""``interactive``: clicks (``foreground``/``background`` points, optionally a ``box``) with or without text, as
3D Slicer's and OHIF's interactive (DeepGrow) tools send them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from monailabel.interfaces.config import TaskConfig

from lib.infers import InteractiveInferTask
from lib.settings import AppSettings
from lib.trainers import TextPromptTrainTask
from textseg.bundle import read_config_value

__all__ = ["Interactive", "INTERACTIVE_OVERLAY", "interactive_settings"]

INTERACTIVE_OVERLAY = "interactive.json"
"""The bundle overlay that builds the network with spatial prompts (and trains it with simulated clicks)."""


def interactive_settings(settings: AppSettings, conf: dict) -> AppSettings:
    """The app's settings with ``interactive.json`` on top of its overlays and the interactive checkpoint:
    ``--conf interactive_checkpoint`` or ``<bundle>/models/<ckpt_name of interactive.json>``."""
    ckpt_name = read_config_value(settings.bundle_dir, INTERACTIVE_OVERLAY, "ckpt_name")
    checkpoint = Path(conf.get("interactive_checkpoint") or settings.bundle_dir / "models" / ckpt_name).resolve()
    configs = settings.configs if INTERACTIVE_OVERLAY in settings.configs else (*settings.configs, INTERACTIVE_OVERLAY)
    return dataclasses.replace(settings, configs=configs, checkpoint=checkpoint)


class Interactive(TaskConfig):
    """The interactive model (its own checkpoint, ``--conf interactive_checkpoint``); its trainer fine-tunes it on
    saved labels with simulated clicks (the overlay's ``RandSpatialPromptsd``)."""

    def init(self, name: str, model_dir: str, conf: dict, planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.settings = interactive_settings(kwargs["settings"], conf)
        self.path = str(self.settings.checkpoint)

    def infer(self):
        return InteractiveInferTask(self.settings)

    def trainer(self):
        return TextPromptTrainTask(self.settings, self.conf, description="Train the interactive model (simulated clicks) on saved labels")
