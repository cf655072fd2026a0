"""MONAI Label train task running the bundle's own ``train.json`` (+ overlays) on the datastore's saved labels."""

from __future__ import annotations

import logging
import os
from typing import Any

import nibabel as nib
import numpy as np
from monai.bundle import ConfigParser
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.tasks.train.bundle import BundleTrainTask

from lib.settings import AppSettings
from textseg.app_support import annotated_structures, read_progress
from textseg.bundle import bundle_config_files, run_bundle
from textseg.vocabulary import load_vocabulary

__all__ = ["TextPromptTrainTask", "DATASET_NAME"]

logger = logging.getLogger(__name__)

DATASET_NAME = "monailabel"
"""Dataset name given to datastore labels: their values are vocabulary ids."""


class TextPromptTrainTask(BundleTrainTask):
    """Fine-tune (or train from scratch) the bundle on the datastore's final labels.

    Partial labels: each saved label annotates only the structures its info declares (``annotated``,
    ``label_names`` or OHIF's ``label_info``) or, failing that, the structures present in it; the others are
    ignored by the partial-label loss, not taken as background. The checkpoint is written to the path the
    infer tasks read (atomically, by the bundle's ``CheckpointSaver``), so they pick it up on the next
    request. Runs in MONAI Label's training subprocess, so ``/train`` DELETE stops it.
    """

    def __init__(self, settings: AppSettings, conf: dict, description: str = "Train the text-prompted model on saved labels"):
        super().__init__(str(settings.bundle_dir), conf)
        self.settings = settings
        self._description = description
        self.train_configs = ("train.json", *settings.overlays)
        bundle_config_files(settings.bundle_dir, self.train_configs)
        parser = ConfigParser()
        parser.read_config(bundle_config_files(settings.bundle_dir, self.train_configs))
        self.class_names = list(parser["class_names"])
        self.raw_handlers = parser["train#handlers"]
        self.progress_file = settings.checkpoint.parent / f".{settings.checkpoint.stem}_train_progress.json"

    def info(self):
        i = super().info()
        i["description"] = self._description
        return i

    def config(self) -> dict[str, Any]:
        return {"max_epochs": 10, "val_split": 0.2, "pretrained": True, "device": [self.settings.device], "val_interval": 1}

    def stats(self):
        return read_progress(self.progress_file)

    def datalist(self, datastore: Datastore) -> list[dict]:
        """Training records from the datastore's final labels, with the structures each annotates."""
        vocabulary = load_vocabulary()
        allowed = {vocabulary[n].id for n in self.class_names}
        records = []
        for image_id in datastore.get_labeled_images(DefaultLabelTag.FINAL.value):
            image = datastore.get_image_uri(image_id)
            label = datastore.get_label_uri(image_id, DefaultLabelTag.FINAL.value)
            if not image or not label or not os.path.exists(label):
                continue
            present = [int(i) for i in np.unique(np.asarray(nib.load(label).dataobj)) if int(i) in allowed]
            info = datastore.get_label_info(image_id, DefaultLabelTag.FINAL.value)
            annotated = annotated_structures(info, present, self.class_names, vocabulary)
            if not annotated:
                logger.warning(f"label of {image_id} annotates none of the model's structures; skipped")
                continue
            records.append({"image": image, "label": label, "dataset": DATASET_NAME, "annotated": annotated})
        return records

    def __call__(self, request, datastore: Datastore):
        records = self.datalist(datastore)
        if not records:
            raise ValueError("no saved final labels in the datastore to train on: save a label first (PUT /datastore/label).")
        val_split = float(request.get("val_split", 0.2))
        num_val = max(1, int(round(len(records) * val_split))) if len(records) > 1 else 1
        if len(records) == 1:
            records = records * 2  # one labelled image: it is both the training and the validation case
        epochs = int(request.get("max_epochs", 10))
        vocabulary = load_vocabulary()
        handlers = list(self.raw_handlers)
        ckpt = self.settings.checkpoint
        handlers.append({"_target_": "textseg.app_support.TrainProgressWriter", "path": str(self.progress_file)})
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        overrides = {
            "datalist": records,
            "num_val": num_val,
            "epochs": epochs,
            "val_interval": max(1, min(int(request.get("val_interval", 1)), epochs)),
            "num_workers": 0,
            "crops_per_image": int(request.get("crops_per_image", 1)),
            "ckpt_dir": str(ckpt.parent),
            "ckpt_name": ckpt.name,
            "ckpt_path": str(ckpt) if str(request.get("pretrained", True)).lower() in ("true", "1") and ckpt.exists() else "",
            "output_dir": str(ckpt.parent / "train_logs"),
            "train#handlers": handlers,
            "label_transforms#0#label_maps": {DATASET_NAME: {row["id"]: row["name"] for row in vocabulary.label_table(self.class_names)}},
        }
        logger.info(f"Training on {len(records)} labelled images ({num_val} for validation), {epochs} epochs -> {ckpt}")
        run_bundle(self.settings.bundle_dir, self.train_configs, workflow_type="train", **overrides)
        return {"epochs": epochs, "records": len(records), "checkpoint": str(ckpt), **self.stats()}
