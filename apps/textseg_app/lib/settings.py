"""App settings read from monailabel's ``--conf`` options (shared by every model config)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from textseg.bundle import bundle_config_files, read_config_value

__all__ = ["AppSettings", "OVERLAYS"]

OVERLAYS = {"none": (), "": (), "tiny": ("tiny.json",)}
"""``--conf bundle_overlay`` values: ``tiny`` is the CPU-size configuration; any other value names config files."""


@dataclass
class AppSettings:
    """Where the bundle, its overlays and the checkpoint are, and which device runs them.

    ``--conf`` keys: ``bundle`` (folder; default ``bundles/text_prompted_ct_segmentation`` of the repository
    holding the app), ``bundle_overlay`` (``tiny``, ``none`` or comma-separated config names),
    ``checkpoint`` (default ``<bundle>/models/<ckpt_name of the configs>``), ``device`` (``auto``, ``cpu``,
    ``cuda``), ``preload`` (load the network at start-up).
    """

    bundle_dir: Path
    configs: tuple[str, ...]
    checkpoint: Path
    device: str
    preload: bool

    @classmethod
    def from_conf(cls, app_dir: str | os.PathLike, conf: dict) -> "AppSettings":
        app_dir = Path(app_dir).resolve()
        bundle_dir = Path(conf.get("bundle") or app_dir.parents[1] / "bundles" / "text_prompted_ct_segmentation").resolve()
        overlay = str(conf.get("bundle_overlay", "tiny")).strip()
        overlays = OVERLAYS[overlay] if overlay in OVERLAYS else tuple(
            n if n.endswith(".json") else f"{n}.json" for n in overlay.split(",") if n.strip()
        )
        configs = ("inference.json", *overlays)
        bundle_config_files(bundle_dir, configs)  # clear error when a config is missing
        ckpt_name = read_config_value(bundle_dir, "inference.json", "ckpt_name")
        for name in overlays:
            try:
                ckpt_name = read_config_value(bundle_dir, name, "ckpt_name")
            except KeyError:
                pass
        checkpoint = Path(conf.get("checkpoint") or bundle_dir / "models" / ckpt_name).resolve()
        device = str(conf.get("device", "auto")).lower()
        if device in ("auto", ""):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--conf device {device}: CUDA is not available on this machine; use cpu or auto.")
        preload = str(conf.get("preload", "false")).lower() in ("1", "true", "yes")
        return cls(bundle_dir=bundle_dir, configs=configs, checkpoint=checkpoint, device=device, preload=preload)

    @property
    def overlays(self) -> tuple[str, ...]:
        """The configs merged on top of ``inference.json``/``train.json``."""
        return self.configs[1:]

    def missing_checkpoint_message(self) -> str:
        """What to do when there is no checkpoint yet."""
        return (
            f"no trained checkpoint at {self.checkpoint}. Train one with `make demo` (writes "
            f"bundles/text_prompted_ct_segmentation/models/model_tiny.pt), with `textseg train --tiny`, "
            f"or pass --conf checkpoint <path to model .pt>."
        )
