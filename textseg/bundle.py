"""Running textseg bundles from Python, and the bundle facts that are generated from the vocabulary."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from textseg.vocabulary import Vocabulary, load_vocabulary

__all__ = [
    "DEFAULT_BUNDLE",
    "network_overrides",
    "SHIPPED_CONFIGS",
    "bundle_parser",
    "load_bundle_network",
    "bundle_config_files",
    "run_bundle",
    "read_config_value",
    "generated_metadata",
    "label_table_markdown",
    "sync_bundle",
]

DEFAULT_BUNDLE = Path(os.environ.get("TEXTSEG_BUNDLE", "bundles/text_prompted_ct_segmentation"))
"""The bundle the CLI uses unless told otherwise (relative to the working directory: the repository root)."""

SHIPPED_CONFIGS = ("inference.json", "real_ct.json")
"""The inference configs of the bundle's released model, ``models/model.pt`` (trained on real CT); the bundle's
metadata and model card describe it."""


def bundle_config_files(bundle_dir: str | os.PathLike, configs: Sequence[str]) -> list[str]:
    """Paths of ``configs`` (names like ``train.json`` or ``tiny.json``) in ``bundle_dir/configs``; clear error if one is missing."""
    config_dir = Path(bundle_dir) / "configs"
    if not config_dir.is_dir():
        raise FileNotFoundError(f"{bundle_dir} is not a bundle: {config_dir} does not exist.")
    files = []
    for name in configs:
        path = config_dir / name
        if not path.is_file():
            available = sorted(p.name for p in config_dir.glob("*.json"))
            raise FileNotFoundError(f"bundle config {path} not found; available: {available}")
        files.append(str(path))
    return files


def run_bundle(
    bundle_dir: str | os.PathLike,
    configs: Sequence[str] = ("inference.json",),
    workflow_type: str = "infer",
    **override: Any,
) -> Any:
    """Run a bundle workflow like ``python -m monai.bundle run --config_file [...]`` and return it.

    Args:
        bundle_dir: the bundle folder.
        configs: config file names in ``configs/``, merged in order (overlays last).
        workflow_type: ``train`` or ``infer`` (MONAI's workflow type).
        override: config id -> value, e.g. ``{"prompt": "liver", "train#trainer#max_epochs": 2}``;
            ``#`` may be written as ``__`` in Python keyword arguments.
    """
    from monai.bundle import ConfigWorkflow

    bundle_dir = Path(bundle_dir).resolve()
    override = {k.replace("__", "#"): v for k, v in override.items()}
    override.setdefault("bundle_root", str(bundle_dir))
    workflow = ConfigWorkflow(
        config_file=bundle_config_files(bundle_dir, configs),
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        logging_file=str(bundle_dir / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        **override,
    )
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
    return workflow


def bundle_parser(bundle_dir: str | os.PathLike, configs: Sequence[str]):
    """A ``monai.bundle.ConfigParser`` of the bundle's ``configs`` merged in order, its ``bundle_root`` set."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(bundle_config_files(bundle_dir, configs))
    parser["bundle_root"] = str(Path(bundle_dir).resolve())
    return parser


def load_bundle_network(checkpoint: str | os.PathLike, bundle_dir: str | os.PathLike, configs: Sequence[str], device: Any = "cpu"):
    """The network the bundle's ``configs`` build (``network_def``) with the checkpoint's weights, in eval mode, and the parser.

    Raises:
        FileNotFoundError: no checkpoint.
        ValueError: the checkpoint does not fit that network.
    """
    import torch

    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}.")
    parser = bundle_parser(bundle_dir, configs)
    network = parser.get_parsed_content("network_def")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{checkpoint} does not fit the network of {list(configs)} (train it with those configs): {e}") from e
    return network.to(device).eval(), parser


def _merged_top_level(bundle_dir: str | os.PathLike, config: str | Sequence[str]) -> dict:
    """The raw top-level keys of a bundle's config files merged in order (overlays last: the last one wins)."""
    names = [config] if isinstance(config, str) else list(config)
    merged = {}
    for path in bundle_config_files(bundle_dir, names):
        with open(path, encoding="utf-8") as f:
            merged.update(json.load(f))
    return merged


def read_config_value(bundle_dir: str | os.PathLike, config: str | Sequence[str], key: str) -> Any:
    """A raw (unparsed) top-level value of a bundle's config file, or of configs merged in order (overlays last:
    the last one that sets ``key`` wins)."""
    merged = _merged_top_level(bundle_dir, config)
    if key not in merged:
        names = [config] if isinstance(config, str) else list(config)
        raise KeyError(f"{', '.join(names)} in {bundle_dir} have no {key!r}")
    return merged[key]


def network_overrides(bundle_dir: str | os.PathLike, config: str | Sequence[str]) -> dict:
    """The network arguments an overlay sets (its ``network_def#<argument>`` keys, configs merged in order), e.g.
    ``{"feature_size": 12, ...}`` for ``tiny.json``: code that builds the same network outside the bundle reads them
    here instead of copying them."""
    merged = _merged_top_level(bundle_dir, config)
    return {k.split("#", 1)[1]: v for k, v in merged.items() if k.startswith("network_def#")}


def generated_metadata(metadata: Mapping, class_names: Sequence[str], vocabulary: Vocabulary | None = None) -> dict:
    """``metadata`` with every vocabulary-derived field filled in for a model answering ``class_names``.

    The output channel ``k`` of the network (called without prompts) is ``class_names[k]``; label maps
    written by inference use vocabulary ids.
    """
    vocabulary = vocabulary or load_vocabulary()
    table = vocabulary.label_table(class_names)
    meta = json.loads(json.dumps(metadata))
    meta["label_classes"] = "label map of vocabulary ids: " + ", ".join(f"{row['id']}={row['name']}" for row in table)
    meta["pred_classes"] = "one sigmoid mask per prompt; without prompts, channel k = class k: " + ", ".join(
        f"{k}={name}" for k, name in enumerate(class_names)
    )
    pred = meta["network_data_format"]["outputs"]["pred"]
    pred["num_channels"] = len(class_names)
    pred["channel_def"] = {str(k): name for k, name in enumerate(class_names)}
    meta["network_data_format"]["post_processed_outputs"] = {
        "label": {
            "type": "image",
            "format": "labels",
            "num_channels": 1,
            "spatial_shape": ["*", "*", "*"],
            "dtype": "int16",
            "value_range": [0] + [row["id"] for row in table],
            "is_patch_data": False,
            "channel_def": {str(row["id"]): row["name"] for row in table} | {"0": "background"},
        }
    }
    return meta


def label_table_markdown(class_names: Sequence[str], vocabulary: Vocabulary | None = None) -> str:
    """Markdown table of the classes (channel, vocabulary id, name, display name, colour) for model cards."""
    vocabulary = vocabulary or load_vocabulary()
    lines = ["| channel | id | name | display | colour |", "|---|---|---|---|---|"]
    for k, row in enumerate(vocabulary.label_table(class_names)):
        r, g, b = row["color"]
        lines.append(f"| {k} | {row['id']} | `{row['name']}` | {row['display']} | #{r:02x}{g:02x}{b:02x} |")
    return "\n".join(lines)


LABELS_START = "<!-- generated:labels:start (scripts/sync_vocabulary.py) -->"
LABELS_END = "<!-- generated:labels:end -->"


def sync_bundle(bundle_dir: str | os.PathLike, write: bool = False, vocabulary: Vocabulary | None = None) -> list[Path]:
    """Regenerate a bundle's vocabulary-derived metadata fields and model-card label table.

    Returns the files whose content differs from the generated one (rewritten when ``write``), so a
    test can assert that the committed bundle agrees with the vocabulary.
    """
    bundle_dir = Path(bundle_dir)
    class_names = read_config_value(bundle_dir, SHIPPED_CONFIGS, "class_names")
    stale = []
    meta_path = bundle_dir / "configs" / "metadata.json"
    metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    expected_meta = json.dumps(generated_metadata(metadata, class_names, vocabulary), indent=4) + "\n"
    if meta_path.read_text(encoding="utf-8") != expected_meta:
        stale.append(meta_path)
        if write:
            meta_path.write_text(expected_meta, encoding="utf-8")
    card_path = bundle_dir / "docs" / "README.md"
    card = card_path.read_text(encoding="utf-8")
    if LABELS_START not in card or LABELS_END not in card:
        raise ValueError(f"{card_path} lacks the generated label table markers {LABELS_START!r} ... {LABELS_END!r}")
    head, rest = card.split(LABELS_START, 1)
    _, tail = rest.split(LABELS_END, 1)
    expected_card = f"{head}{LABELS_START}\n{label_table_markdown(class_names, vocabulary)}\n{LABELS_END}{tail}"
    if card != expected_card:
        stale.append(card_path)
        if write:
            card_path.write_text(expected_card, encoding="utf-8")
    return stale
