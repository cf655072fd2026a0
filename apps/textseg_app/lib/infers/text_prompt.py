"""MONAI Label infer task built from the text-prompted bundle's own inference config (+ overlays)."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, SaveImaged, SqueezeDimd
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from lib.settings import AppSettings
from lib.transforms import RestoreStringImageKeysd, StashStringImageKeysd
from textseg.bundle import bundle_config_files
from textseg.checkpoints import CheckpointMismatchError, require_matching_embeddings
from textseg.prompts import Resolution, resolution_structures, resolve
from textseg.vocabulary import load_vocabulary

__all__ = ["TextPromptInferTask", "CheckpointMismatchError", "RESOLUTION_KEY"]

logger = logging.getLogger(__name__)

RESOLUTION_KEY = "_textseg_resolution"
"""Request key under which :meth:`TextPromptInferTask.resolution_of` keeps the resolved prompt for the task's call."""


class TextPromptInferTask(BasicInferTask):
    """Segment what a free-text prompt names, with the bundle's preprocessing, inferer and postprocessing.

    Every request parses a fresh copy of the bundle config with its ``prompt`` (so concurrent requests never
    share state); the network is loaded once per device and reloaded when the checkpoint file changes
    (e.g. after training from the app). The label map holds vocabulary ids on the input image's grid.

    Args:
        settings: bundle folder, overlays, checkpoint and device.
        fixed_prompt: when given, the task ignores the request's prompt (the "all structures" model).
        default_prompt: prompt used when a request gives none.
        description: shown in /info.
    """

    def __init__(
        self,
        settings: AppSettings,
        fixed_prompt: str | None = None,
        default_prompt: str = "segment the liver and kidneys",
        description: str = "Text-prompted CT segmentation",
    ):
        self.settings = settings
        self.fixed_prompt = fixed_prompt
        parser = ConfigParser()
        parser.read_config(bundle_config_files(settings.bundle_dir, settings.configs))
        parser["bundle_root"] = str(settings.bundle_dir)
        parser["ckpt_path"] = str(settings.checkpoint)
        self._base_config = copy.deepcopy(parser.get())
        self.class_names: list[str] = list(parser["class_names"])
        vocabulary = load_vocabulary()
        self.label_table = vocabulary.label_table(self.class_names)
        labels = {row["name"]: row["id"] for row in self.label_table}
        network = parser.get_parsed_content("network_def")
        self._expected_embeddings = parser.get_parsed_content("class_embeddings")
        self._text_table = parser.get_parsed_content("text_table")
        self._local = threading.local()
        self._checked: dict[str, float] = {}
        config: dict[str, Any] = {} if fixed_prompt else {"prompt": default_prompt}
        super().__init__(
            path=str(settings.checkpoint),
            network=network,
            type=InferType.SEGMENTATION,
            labels=labels,
            dimension=3,
            description=description,
            config=config,
            load_strict=True,
            preload=False,
        )
        self._config["device"] = [settings.device]

    # --- request handling ------------------------------------------------------------------------------
    def prompt_of(self, request: dict) -> str:
        """The prompt a request asks for: the fixed one, ``prompt``, or ``structures`` (list of names)."""
        if self.fixed_prompt:
            return self.fixed_prompt
        structures = request.get("structures")
        if structures:
            if isinstance(structures, str):
                structures = [s for s in structures.split(",") if s.strip()]
            return ", ".join(str(s) for s in structures)
        prompt = request.get("prompt", self._config.get("prompt"))
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}.")
        return prompt

    def resolution_of(self, request: dict) -> Resolution:
        """The request's prompt resolved, once per request: the resolution is kept in the request (under
        :data:`RESOLUTION_KEY`) for the task's call, which takes it out before the request becomes data."""
        resolution = request.get(RESOLUTION_KEY)
        if resolution is None:
            resolution = resolve(self.prompt_of(request))
            request[RESOLUTION_KEY] = resolution
        return resolution

    def targets_of(self, request: dict) -> list[str]:
        """Structures the prompt needs (raises ``PromptError``/``KeyError`` naming the problem)."""
        return resolution_structures(self.resolution_of(request), allowed=self.class_names)

    def _parser(self) -> ConfigParser:
        parser = getattr(self._local, "parser", None)
        if parser is None:
            raise RuntimeError("no request in progress")
        return parser

    def __call__(self, request, callbacks=None):
        resolution = self.resolution_of(request)
        request.pop(RESOLUTION_KEY)
        prompt = resolution.prompt
        targets = resolution_structures(resolution, allowed=self.class_names)
        parser = ConfigParser(copy.deepcopy(self._base_config))
        parser["text_table"] = self._text_table
        parser["prompt"] = prompt
        parser["prompt_resolution"] = resolution  # resolved once, above
        parser["device"] = torch.device(self.settings.device)
        self._local.parser = parser
        try:
            result_file, result_json = super().__call__(request, callbacks)
        finally:
            self._local.parser = None
        vocabulary = load_vocabulary()
        if resolution.queries and result_file:
            # position/size queries ("organ left of the stomach"): report the named structures and the answers
            # the label map kept, not every candidate the network had to segment
            present = {int(i) for i in np.unique(np.asarray(nib.load(result_file).dataobj)) if int(i) > 0}
            answers = [vocabulary.by_id(i).name for i in sorted(present)]
            targets = resolution.structures + [n for n in answers if n not in resolution.structures]
        table = vocabulary.label_table(targets)
        result_json["prompt"] = prompt
        result_json["targets"] = targets
        result_json["label_names"] = {row["name"]: row["id"] for row in table}
        result_json["labels"] = table
        return result_file, result_json

    # --- BasicInferTask hooks --------------------------------------------------------------------------
    def pre_transforms(self, data=None) -> Sequence[Callable]:
        pre = self._parser().get_parsed_content("preprocessing")
        return [StashStringImageKeysd(), *(pre.transforms if isinstance(pre, Compose) else pre)]

    def inferer(self, data=None):
        return self._parser().get_parsed_content("inferer")

    def post_transforms(self, data=None) -> Sequence[Callable]:
        post = self._parser().get_parsed_content("postprocessing")
        post = list(post.transforms) if isinstance(post, Compose) else list(post)
        # MONAI Label's writer takes a [*S] label map (channel dropped) with the MetaTensor's affine
        return [t for t in post if not isinstance(t, SaveImaged)] + [
            SqueezeDimd(keys=self.output_label_key, dim=0),
            RestoreStringImageKeysd(),
        ]

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        inferer = self.inferer(data)
        network = self._get_network(device, data)
        image = torch.as_tensor(data[self.input_key])[None].to(torch.device(device))
        prompts = torch.as_tensor(data["text_embedding"]).to(torch.device(device))
        with torch.no_grad():
            outputs = inferer(image, network, text_embedding=prompts)
        data[self.output_label_key] = outputs[0]
        return data

    def _get_network(self, device, data):
        network = super()._get_network(device, data)
        mtime = self._networks[device][1]
        if self._checked.get(device) != mtime:
            try:
                require_matching_embeddings(getattr(network, "class_embeddings", None), self._expected_embeddings, self.settings.checkpoint)
            except CheckpointMismatchError:
                self._networks.pop(device, None)
                raise
            self._checked[device] = mtime
        return network

    def info(self) -> dict[str, Any]:
        i = super().info()
        i["label_colors"] = {row["name"]: row["color"] for row in self.label_table}
        i["prompt"] = "fixed: every class" if self.fixed_prompt else "free text (params.prompt) or params.structures"
        return i

    def is_valid(self) -> bool:
        return True
