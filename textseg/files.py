"""Atomic file writes: every result is written to a temporary file beside its target, then renamed over it.

A crash or a kill mid-write therefore never leaves a half-written file in place of an earlier result.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_atomic", "write_result"]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, tmp_dir: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error it replaces ``path``.

    On error the temporary file is removed and ``path`` (if it existed) is left untouched.

    Args:
        path: the final file; its folder is created when missing.
        suffix: suffix of the temporary file (writers such as nibabel choose the format from it);
            default: ``path``'s own suffixes, e.g. ``.nii.gz``.
        tmp_dir: folder of the temporary file instead of ``path``'s own (same filesystem), e.g. where a watcher of
            ``path``'s folder must not see it.

    Example::

        with atomic_path("models/model.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = path.parent if tmp_dir is None else Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=".tmp-", suffix="".join(path.suffixes) if suffix is None else suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_result(stem: str | os.PathLike, result, markdown: str) -> tuple[Path, Path]:
    """Write an experiment's result as ``stem.json`` (``result``, indented JSON) and its table as ``stem.md``, each
    atomically; returns both paths."""
    stem = Path(stem)
    json_path = write_atomic(stem.with_name(stem.name + ".json"), json.dumps(result, indent=2))
    return json_path, write_atomic(stem.with_name(stem.name + ".md"), markdown)
