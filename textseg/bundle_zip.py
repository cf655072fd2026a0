"""The bundle as a model-zoo artifact: export it as a zip that carries its own code, and check a downloaded one.

``export_bundle`` writes ``dist/<bundle>_v<version>.zip``: ``<bundle>/`` at the top, inside it ``configs/``,
``docs/README.md``, ``LICENSE``, ``large_files.yml``, the large files it lists (``models/model.pt``), this
package as ``textseg/`` (the experiments wing left out) and ``datasets.yaml`` beside it. MONAI puts the bundle
root on ``sys.path`` when a workflow runs, so the configs' ``textseg.*`` targets resolve to the bundle's own copy,
unchanged, on a machine where this repository was never installed. The same checkout gives the same bytes: files
in sorted order, fixed timestamps and permissions.

``check_bundle`` says, in one message per problem, what is wrong with a bundle zip or an extracted bundle: no
top-level folder, a corrupt zip, a large file whose hash differs from ``large_files.yml``, a version older than
the caller needs, a checkpoint trained for other class embeddings than the configs give.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import yaml

from textseg.bundle import DEFAULT_BUNDLE, SHIPPED_CONFIGS
from textseg.files import atomic_path

__all__ = [
    "BUNDLE_NAME",
    "MIN_BUNDLE_VERSION",
    "BundleError",
    "bundle_version",
    "export_bundle",
    "check_bundle",
    "bundle_members",
]

BUNDLE_NAME = "text_prompted_ct_segmentation"
MIN_BUNDLE_VERSION = "0.6.0"
"""The oldest bundle this code runs: 0.6.0 carries the prompt as data (``ResolvePromptd``)."""

_PACKAGE = Path(__file__).resolve().parent
_LEFT_OUT = ("experiments",)  # package folders the bundle does not need (benchmarks, simulations)
_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest date: no build time in the bytes


class BundleError(ValueError):
    """A bundle zip or folder that cannot be used, with what is wrong and what to do."""


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(version).split("."))
    except ValueError:
        raise BundleError(f"bundle version {version!r} is not of the form MAJOR.MINOR.PATCH.") from None


def bundle_version(bundle_dir: str | os.PathLike) -> str:
    """``version`` of the bundle's ``configs/metadata.json``."""
    path = Path(bundle_dir) / "configs" / "metadata.json"
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a bundle: it has no configs/metadata.json.")
    return str(json.loads(path.read_text(encoding="utf-8"))["version"])


def _large_files(bundle_dir: Path) -> list[dict]:
    path = bundle_dir / "large_files.yml"
    if not path.is_file():
        return []
    return list(yaml.safe_load(path.read_text(encoding="utf-8")).get("large_files", []))


def bundle_members(bundle_dir: str | os.PathLike = DEFAULT_BUNDLE, package_dir: str | os.PathLike = _PACKAGE) -> list[tuple[str, Path]]:
    """``(name in the zip, source file)`` of everything the zip holds, sorted by name.

    Raises:
        BundleError: a file the layout needs is missing (the docs, the licence, a large file).
    """
    bundle_dir, package_dir = Path(bundle_dir), Path(package_dir)
    members: dict[str, Path] = {}
    for name in ("LICENSE", "large_files.yml", "docs/README.md"):
        if not (bundle_dir / name).is_file():
            raise BundleError(f"{bundle_dir / name} is missing: the model-zoo layout needs it.")
        members[name] = bundle_dir / name
    for path in sorted((bundle_dir / "configs").iterdir()):
        if path.is_file():
            members[f"configs/{path.name}"] = path
    for entry in _large_files(bundle_dir):
        path = bundle_dir / entry["path"]
        if not path.is_file():
            raise BundleError(f"{path} is listed in large_files.yml but missing (make train-real writes models/model.pt).")
        members[entry["path"]] = path
    datasets = package_dir.parent / "datasets.yaml"  # textseg.datasets reads it beside the package
    if datasets.is_file():
        members["datasets.yaml"] = datasets
    for path in sorted(package_dir.rglob("*")):
        relative = path.relative_to(package_dir)
        if not path.is_file() or "__pycache__" in relative.parts or path.suffix in (".pyc", ".pyo") or relative.parts[0] in _LEFT_OUT:
            continue
        members[f"textseg/{relative.as_posix()}"] = path
    return sorted(members.items())


def export_bundle(
    output_dir: str | os.PathLike = "dist", bundle_dir: str | os.PathLike = DEFAULT_BUNDLE, package_dir: str | os.PathLike = _PACKAGE
) -> Path:
    """Write ``<output_dir>/<bundle>_v<version>.zip`` and return its path (written to a temporary name first).

    Raises:
        BundleError: a large file whose hash is not the one ``large_files.yml`` lists (the zip would be refused).
    """
    bundle_dir = Path(bundle_dir)
    version = bundle_version(bundle_dir)
    _check_large_files(bundle_dir)
    target = Path(output_dir) / f"{BUNDLE_NAME}_v{version}.zip"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, path in bundle_members(bundle_dir, package_dir):
            info = zipfile.ZipInfo(f"{BUNDLE_NAME}/{name}", date_time=_TIMESTAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            archive.writestr(info, path.read_bytes(), compresslevel=9)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_large_files(bundle_dir: Path) -> None:
    for entry in _large_files(bundle_dir):
        path = bundle_dir / entry["path"]
        if not path.is_file():
            raise BundleError(
                f"{path} is missing: run `python -m monai.bundle download_large_files --bundle_path {bundle_dir}` to fetch it."
            )
        kind = str(entry.get("hash_type", "sha256")).lower()
        if entry.get("hash_val") and kind == "sha256" and _sha256(path) != entry["hash_val"]:
            raise BundleError(
                f"{path}: sha256 {_sha256(path)} is not the {entry['hash_val']} that large_files.yml lists; the file is "
                "refused. Download the bundle again (a partial download or an edited file)."
            )


def _check_zip(path: Path) -> None:
    if not zipfile.is_zipfile(path):
        raise BundleError(f"{path} is not a zip file (corrupt or truncated); download the bundle again.")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise BundleError(f"{path} is a corrupt zip ({e}); download the bundle again.") from e
    if broken is not None:
        raise BundleError(f"{path} is a corrupt zip: {broken} fails its CRC check; download the bundle again.")
    outside = [n for n in names if not n.startswith(f"{BUNDLE_NAME}/")]
    if outside:
        raise BundleError(
            f"{path} has no top-level folder {BUNDLE_NAME}/ (it holds {', '.join(sorted(outside)[:3])}...): "
            f"`python -m monai.bundle download` extracts it into the bundle folder; build it with `textseg export-bundle`."
        )


def _check_embeddings(bundle_dir: Path, configs: Sequence[str], checkpoint: Path) -> None:
    import torch
    from monai.bundle import ConfigParser

    from textseg.bundle import bundle_config_files
    from textseg.checkpoints import CheckpointMismatchError, require_matching_embeddings

    parser = ConfigParser()
    parser.read_config(bundle_config_files(bundle_dir, configs))
    parser["bundle_root"] = str(bundle_dir)
    expected = parser.get_parsed_content("class_embeddings")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    try:
        require_matching_embeddings(state.get("class_embeddings"), expected, checkpoint, str(parser["text_encoder"]))
    except CheckpointMismatchError as e:
        raise BundleError(str(e)) from e


def check_bundle(
    path: str | os.PathLike,
    min_version: str = MIN_BUNDLE_VERSION,
    configs: Sequence[str] = SHIPPED_CONFIGS,
    checkpoint: str | os.PathLike | None = None,
) -> Path:
    """Check a bundle zip (its integrity and layout only) or an extracted bundle folder (also its version, the hashes of
    its large files and, when ``checkpoint`` is given, that it fits the configs' class embeddings).

    Returns:
        the path checked.

    Raises:
        BundleError: what is wrong, naming the file and what to do.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle not found: {path}")
    if path.is_file():
        _check_zip(path)
        return path
    if not (path / "configs" / "inference.json").is_file():
        nested = path / BUNDLE_NAME
        hint = f"; the bundle is {nested}" if (nested / "configs").is_dir() else ""
        raise BundleError(f"{path} is not a bundle folder: it has no configs/inference.json{hint}.")
    version = bundle_version(path)
    if _version_tuple(version) < _version_tuple(min_version):
        raise BundleError(
            f"bundle {path} is version {version}; this textseg needs {min_version} or later (its configs predate the "
            f"prompt as data): download the current release."
        )
    _check_large_files(path)
    if checkpoint is not None:
        _check_embeddings(path, configs, Path(checkpoint))
    return path
