"""Transforms the app puts around the bundle's own chain (the bundle's transforms are never copied here)."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["STASH_KEY", "StashStringImageKeysd", "RestoreStringImageKeysd"]

STASH_KEY = "_textseg_stashed"


class StashStringImageKeysd:
    """Move string values of keys starting with ``image_`` (MONAI Label's ``image_path``) out of the way.

    MONAI 1.6's ``Spacingd`` calls ``.update()`` on every data key that starts with ``image_`` and fails with
    ``AttributeError: 'str' object has no attribute 'update'`` on MONAI Label's ``image_path`` string. This
    runs first in every infer task's pre-transforms; :class:`RestoreStringImageKeysd` puts the keys back for
    MONAI Label's writer (which takes the result's file extension from ``image_path``).
    """

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        stashed = {k: d.pop(k) for k in [k for k in d if isinstance(k, str) and k.startswith("image_") and isinstance(d[k], str)]}
        d[STASH_KEY] = {**d.get(STASH_KEY, {}), **stashed}
        return d


class RestoreStringImageKeysd:
    """Undo :class:`StashStringImageKeysd` (last post-transform)."""

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        d.update(d.pop(STASH_KEY, {}))
        return d
