"""Datastores that check what they are given and never overwrite a label without keeping a version."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict

import numpy as np
from fastapi import HTTPException
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore

from textseg.app_support import check_image_id, check_label_file, label_info_for_map

__all__ = ["VersionedLocalDatastore", "TextsegDICOMWebDatastore", "VERSIONS_DIR"]

logger = logging.getLogger(__name__)

VERSIONS_DIR = ".label_versions"
"""Folder (in the datastore root) holding every replaced label as ``<tag>/<image>.v<N><ext>``."""


def _check_label(datastore: LocalDatastore, image_id: str, label_filename: str, allowed_ids) -> np.ndarray:
    try:
        check_image_id(image_id)
    except ValueError as e:
        raise HTTPException(status_code=400, detail=str(e)) from e
    if image_id not in datastore.list_images():
        raise HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore.")
    if label_filename.endswith(".bin"):
        return np.zeros(0)
    try:
        return check_label_file(label_filename, datastore.get_image_uri(image_id), allowed_ids)
    except ValueError as e:
        raise HTTPException(status_code=422, detail=str(e)) from e


def _keep_previous_version(datastore: LocalDatastore, image_id: str, label_tag: str, label_info: Dict[str, Any]) -> None:
    """Copy the label being replaced to the versions folder and record it in the new label's info."""
    existing = datastore.get_label_by_image_id(image_id, label_tag)
    if not existing:
        return
    current = datastore.get_label_uri(image_id, label_tag)
    if not current or not os.path.exists(current):
        return
    previous_info = datastore.get_label_info(image_id, label_tag) or {}
    version = int(previous_info.get("version", 1))
    ext = "".join(Path(current).suffixes)
    target = Path(datastore._datastore_path) / VERSIONS_DIR / label_tag / f"{image_id}.v{version}{ext}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(current, target)
    label_info["version"] = version + 1
    label_info["previous_versions"] = list(previous_info.get("previous_versions", [])) + [str(target)]
    logger.info(f"label {image_id} ({label_tag}) version {version} kept as {target}")


class VersionedLocalDatastore(LocalDatastore):
    """Local folder datastore; labels are checked (readable, 3D, the image's shape, known ids) and versioned.

    Args:
        allowed_ids: label values allowed besides 0 (the served models' vocabulary ids).
        kwargs: passed to ``LocalDatastore``.
    """

    def __init__(self, datastore_path: str, allowed_ids=None, **kwargs):
        self.allowed_ids = allowed_ids
        super().__init__(datastore_path, **kwargs)

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        """Add an uploaded image after checking its id and that it is a readable 3D volume."""
        from textseg.segment import check_image_path

        try:
            check_image_id(image_id)
            check_image_path(image_filename)
        except (ValueError, FileNotFoundError) as e:
            raise HTTPException(status_code=400, detail=str(e)) from e
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        _check_label(self, image_id, label_filename, self.allowed_ids)
        label_info = dict(label_info or {})
        label_info.setdefault("version", 1)
        _keep_previous_version(self, image_id, label_tag, label_info)
        return super().save_label(image_id, label_filename, label_tag, label_info)


class TextsegDICOMWebDatastore(DICOMWebDatastore):
    """DICOMweb datastore (e.g. Orthanc): final labels are checked, versioned locally and stored as DICOM SEG
    whose segments carry the vocabulary's names and colours."""

    def __init__(self, *args, allowed_ids=None, **kwargs):
        self.allowed_ids = allowed_ids
        super().__init__(*args, **kwargs)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any], label_id: str = "") -> str:
        data = _check_label(self, image_id, label_filename, self.allowed_ids)
        label_info = dict(label_info or {})
        if data.size and not label_info.get("label_info"):
            label_info["label_info"] = label_info_for_map(np.unique(data).tolist())
        label_info.setdefault("version", 1)
        _keep_previous_version(self, image_id, label_tag, label_info)
        return super().save_label(image_id, label_filename, label_tag, label_info, label_id)
