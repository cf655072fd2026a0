"""Datastores that check what they are given and never overwrite a label without keeping a version."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import DataModel, LocalDatastore
from monailabel.interfaces.exception import ImageNotFoundException

from textseg.app_support import check_image_id, check_label_file, label_info_for_map
from textseg.files import atomic_path, write_atomic
from textseg.team import REMOTE_USER

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


def _copy_atomically(datastore: LocalDatastore, source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy ``source`` to ``target`` through a temporary file renamed into place (a kill mid-copy leaves ``target`` as
    it was); the temporary file lives in the versions folder, where the datastore's watcher does not take it for a
    label."""
    with atomic_path(target, tmp_dir=Path(datastore._datastore_path) / VERSIONS_DIR) as tmp:
        shutil.copyfile(source, tmp)


def _keep_previous_version(datastore: LocalDatastore, image_id: str, label_tag: str, label_info: Dict[str, Any]) -> None:
    """Keep the label being replaced in the versions folder and record in ``label_info`` who saves the new one.

    ``label_info`` gets ``version``, ``user`` (the user the team proxy authenticated, else ``"local"``; whatever the
    client wrote there is replaced), ``previous_versions`` (the kept files) and ``history`` (``{version, user, ts}``
    of every version, oldest first).
    """
    user = REMOTE_USER.get() or "local"
    previous_info: Dict[str, Any] = {}
    current = datastore.get_label_uri(image_id, label_tag) if datastore.get_label_by_image_id(image_id, label_tag) else ""
    if current and os.path.exists(current):
        previous_info = datastore.get_label_info(image_id, label_tag) or {}
        version = int(previous_info.get("version", 1))
        target = Path(datastore._datastore_path) / VERSIONS_DIR / label_tag / f"{image_id}.v{version}{''.join(Path(current).suffixes)}"
        _copy_atomically(datastore, current, target)
        label_info["version"] = version + 1
        label_info["previous_versions"] = list(previous_info.get("previous_versions", [])) + [str(target)]
        logger.info(f"label {image_id} ({label_tag}) version {version} kept as {target}")
    else:
        label_info["version"] = 1
        label_info.pop("previous_versions", None)
    label_info["user"] = user
    history = previous_info.get("history") or []
    label_info["history"] = list(history) + [{"version": label_info["version"], "user": user, "ts": int(time.time())}]


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
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise ImageNotFoundException(f"Image {image_id} not found")
        _, label_ext = self._to_id(os.path.basename(label_filename))
        name = self._filename(image_id, label_ext)
        # One lock for the version copy, the new file and the index: two saves of one label run one after the other,
        # and each file appears whole (renamed into place) or not at all.
        with FileLock(self._lock_file):
            _keep_previous_version(self, image_id, label_tag, label_info)
            _copy_atomically(self, label_filename, os.path.join(self._datastore.label_path(label_tag), name))
            label_info["ts"] = int(time.time())
            label_info["name"] = name
            obj.labels[label_tag] = DataModel(info=label_info, ext=label_ext)
            self._update_datastore_file(lock=False)
        logger.info(f"label {image_id} ({label_tag}) saved as version {label_info['version']} by {label_info['user']}")
        return image_id

    def _update_datastore_file(self, lock=True):
        """Write the datastore index atomically (MONAI Label writes it in place, so a kill could leave it half-written)."""

        def write():
            self._ignore_event_config = True
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            write_atomic(self._datastore_config_path, text)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()


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
        _keep_previous_version(self, image_id, label_tag, label_info)
        return super().save_label(image_id, label_filename, label_tag, label_info, label_id)
