"""MONAI Label infer task built from the text-prompted bundle's own inference config (+ overlays)."""

from __future__ import annotations

import logging
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
from textseg.prompts import Resolution, resolution_structures, resolve, resolve_structures
from textseg.vocabulary import load_vocabulary

__all__ = ["TextPromptInferTask", "CheckpointMismatchError"]

logger = logging.getLogger(__name__)


class TextPromptInferTask(BasicInferTask):
    """Segment what a free-text prompt names, with the bundle's preprocessing, inferer and postprocessing.

    The bundle config is parsed once, at start-up: the prompt is data (the bundle's ``ResolvePromptd`` reads the
    request's ``prompt``), so the transforms and the inferer serve every request. The prompt is resolved once per
    request, by :meth:`resolution_of`, which puts the resolution in the request's ``prompt``; the network is loaded
    once per device and reloaded when the checkpoint file changes (e.g. after training from the app). The label map
    holds vocabulary ids on the input image's grid.

    Args:
        settings: bundle folder, overlays, checkpoint and device.
        all_structures: ignore the request's prompt and segment every class of the bundle (the "all structures" model).
        default_prompt: prompt used when a request gives none.
        description: shown in /info.
    """

    def __init__(
        self,
        settings: AppSettings,
        all_structures: bool = False,
        default_prompt: str = "segment the liver and kidneys",
        description: str = "Text-prompted CT segmentation",
    ):
        self.settings = settings
        self.all_structures = all_structures
        parser = ConfigParser()
        parser.read_config(bundle_config_files(settings.bundle_dir, settings.configs))
        parser["bundle_root"] = str(settings.bundle_dir)
        parser["ckpt_path"] = str(settings.checkpoint)
        parser["device"] = torch.device(settings.device)
        self.class_names: list[str] = list(parser["class_names"])
        vocabulary = load_vocabulary()
        self.label_table = vocabulary.label_table(self.class_names)
        labels = {row["name"]: row["id"] for row in self.label_table}
        network = parser.get_parsed_content("network_def")
        self._expected_embeddings = parser.get_parsed_content("class_embeddings")
        pre = parser.get_parsed_content("preprocessing")
        post = parser.get_parsed_content("postprocessing")
        self._pre = list(pre.transforms) if isinstance(pre, Compose) else list(pre)
        self._post = list(post.transforms) if isinstance(post, Compose) else list(post)
        self._inferer = parser.get_parsed_content("inferer")
        self._all = resolve_structures(self.class_names) if all_structures else None
        self._checked: dict[str, float] = {}
        config: dict[str, Any] = {} if all_structures else {"prompt": default_prompt}
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
    def resolution_of(self, request: dict) -> Resolution:
        """The request's prompt resolved, once per request: every class (``all_structures``), ``structures`` (a list
        of names, taken item by item) or ``prompt`` (free text). The resolution replaces the request's ``prompt``, so
        the bundle's ``ResolvePromptd`` and later calls read it instead of resolving again."""
        prompt = request.get("prompt")
        if isinstance(prompt, Resolution):
            return prompt
        if self._all is not None:
            resolution = self._all
        elif request.get("structures"):
            structures = request["structures"]
            if isinstance(structures, str):
                structures = [s.strip() for s in structures.split(",") if s.strip()]
            resolution = resolve_structures(structures)
        else:
            prompt = request.get("prompt", self._config.get("prompt"))
            if not isinstance(prompt, str):
                raise ValueError(f"prompt must be a string, got {type(prompt).__name__}.")
            resolution = resolve(prompt)
        request["prompt"] = resolution
        return resolution

    def targets_of(self, request: dict) -> list[str]:
        """Structures the prompt needs (raises ``PromptError``/``KeyError`` naming the problem)."""
        return resolution_structures(self.resolution_of(request), allowed=self.class_names)

    def __call__(self, request, callbacks=None):
        resolution = self.resolution_of(request)
        targets = resolution_structures(resolution, allowed=self.class_names)
        result_file, result_json = super().__call__(request, callbacks)
        vocabulary = load_vocabulary()
        if resolution.queries and result_file:
            # position/size queries ("organ left of the stomach"): report the named structures and the answers
            # the label map kept, not every candidate the network had to segment
            present = {int(i) for i in np.unique(np.asarray(nib.load(result_file).dataobj)) if int(i) > 0}
            answers = [vocabulary.by_id(i).name for i in sorted(present)]
            targets = resolution.structures + [n for n in answers if n not in resolution.structures]
        table = vocabulary.label_table(targets)
        result_json["prompt"] = resolution.prompt
        result_json["targets"] = targets
        result_json["label_names"] = {row["name"]: row["id"] for row in table}
        result_json["labels"] = table
        return result_file, result_json

    # --- BasicInferTask hooks --------------------------------------------------------------------------
    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return [StashStringImageKeysd(), *self._pre]

    def inferer(self, data=None):
        return self._inferer

    def post_transforms(self, data=None) -> Sequence[Callable]:
        # MONAI Label's writer takes a [*S] label map (channel dropped) with the MetaTensor's affine
        return [t for t in self._post if not isinstance(t, SaveImaged)] + [
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
        i["prompt"] = "fixed: every class" if self.all_structures else "free text (params.prompt) or params.structures"
        return i

    def is_valid(self) -> bool:
        return True
