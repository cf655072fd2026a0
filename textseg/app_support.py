"""What the MONAI Label app in ``apps/`` checks and records: image ids, label files, annotated structures, DICOM SEG
segment info, training progress (no app imports here; the servers themselves are in :mod:`textseg.serve`)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from textseg.files import write_atomic
from textseg.vocabulary import Vocabulary, load_vocabulary

__all__ = [
    "SAFE_ID",
    "check_image_id",
    "check_label_file",
    "annotated_structures",
    "label_info_for_map",
    "TrainProgressWriter",
    "read_progress",
]

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
"""What a datastore image id may look like: no path separators, no leading dot (so no ``..``)."""


def check_image_id(image_id: str) -> str:
    """Return ``image_id`` if it names a datastore entry safely, else raise ``ValueError`` naming the problem."""
    if not isinstance(image_id, str) or not image_id:
        raise ValueError("image id is empty.")
    if "/" in image_id or "\\" in image_id or ".." in image_id or not SAFE_ID.match(image_id):
        raise ValueError(
            f"image id {image_id!r} is not a datastore id: ids may not contain path components ('/', '\\\\', '..') "
            "and use only letters, digits, '.', '_' and '-'."
        )
    return image_id


def check_label_file(
    label: str | os.PathLike, image: str | os.PathLike | None = None, allowed_ids: Sequence[int] | None = None
) -> np.ndarray:
    """Read a label map (NIfTI) fully and check it against its image; return the array.

    Args:
        label: the uploaded label file.
        image: the image it labels (NIfTI file); when given, the shapes must agree.
        allowed_ids: label values that are allowed besides 0 (vocabulary ids of the model's classes).

    Raises:
        ValueError: unreadable file, not 3D, shape differs from the image's, non-integer or unknown values.
    """
    label = Path(label)
    try:
        img = nib.load(str(label))
        data = np.asarray(img.dataobj)
    except Exception as e:
        raise ValueError(f"label {label.name}: not a readable NIfTI file ({type(e).__name__}: {e}).") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"label {label.name}: expected a 3D label map, got shape {tuple(data.shape)}.")
    if image is not None and str(image).endswith((".nii", ".nii.gz")):
        image_shape = tuple(nib.load(str(image)).shape[:3])
        if tuple(data.shape) != image_shape:
            raise ValueError(f"label {label.name}: shape {tuple(data.shape)} differs from the image's shape {image_shape}.")
    if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
        raise ValueError(f"label {label.name}: values must be integer label ids.")
    if allowed_ids is not None:
        unknown = sorted(set(np.unique(data).astype(int).tolist()) - {0} - {int(i) for i in allowed_ids})
        if unknown:
            raise ValueError(f"label {label.name}: ids {unknown} are not among the model's label ids {sorted(allowed_ids)}.")
    return data


def annotated_structures(
    label_info: Mapping | None, present_ids: Sequence[int], class_names: Sequence[str], vocabulary: Vocabulary | None = None
) -> list[str]:
    """Which of ``class_names`` a saved label annotates (partial labels).

    Taken from the label's info when the client said so (``annotated``: names; ``label_names``: name -> id;
    ``label_info``: ``[{"name": ...}]``, as OHIF sends), else the structures present in the label map: a
    structure that is absent and not declared is unknown, not background.
    """
    vocabulary = vocabulary or load_vocabulary()
    info = dict(label_info or {})
    declared: list[str] = []
    if isinstance(info.get("annotated"), (list, tuple)):
        declared = [str(n) for n in info["annotated"]]
    elif isinstance(info.get("label_names"), Mapping):
        declared = [str(n) for n in info["label_names"]]
    elif isinstance(info.get("label_info"), (list, tuple)):
        declared = [str(d.get("name")) for d in info["label_info"] if isinstance(d, Mapping) and d.get("name")]
    names = []
    for name in declared:
        try:
            names.append(vocabulary[name].name)
        except KeyError:
            try:
                names += vocabulary.lookup(name)  # "right kidney", "kidneys"
            except KeyError:
                continue
    if not names:
        names = [vocabulary.by_id(int(i)).name for i in present_ids if int(i) > 0]
    return [n for n in class_names if n in names]


def label_info_for_map(label_ids: Sequence[int], vocabulary: Vocabulary | None = None) -> list[dict]:
    """Segment descriptions (name, description, colour) for the non-zero ids of a label map, in ascending order,
    as MONAI Label's DICOM SEG writer matches them to the map's sorted unique values."""
    vocabulary = vocabulary or load_vocabulary()
    rows = []
    for i in sorted({int(i) for i in label_ids if int(i) > 0}):
        s = vocabulary.by_id(i)
        rows.append({"name": s.name, "description": s.display, "color": list(s.color), "model_name": "textseg"})
    return rows


class TrainProgressWriter:
    """Ignite handler writing training progress to a JSON file after every epoch (atomically).

    Args:
        path: the JSON file: ``{"epoch", "max_epochs", "loss", "best_metric", "state", "ts"}``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._write, "RUNNING")
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write, "RUNNING")
        engine.add_event_handler(Events.COMPLETED, self._write, "FINISHED")

    def _write(self, engine, state: str) -> None:
        output = engine.state.output
        loss = None
        if isinstance(output, list) and output and isinstance(output[0], Mapping) and "loss" in output[0]:
            loss = float(output[0]["loss"])
        elif isinstance(output, Mapping) and "loss" in output:
            loss = float(output["loss"])
        record = {
            "epoch": int(engine.state.epoch),
            "max_epochs": int(engine.state.max_epochs or 0),
            "loss": loss,
            "best_metric": float(engine.state.best_metric) if getattr(engine.state, "best_metric", -1) not in (None, -1) else None,
            "state": state,
            "ts": time.time(),
        }
        write_atomic(self.path, json.dumps(record))


def read_progress(path: str | os.PathLike) -> dict:
    """The last record :class:`TrainProgressWriter` wrote, or ``{}``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
