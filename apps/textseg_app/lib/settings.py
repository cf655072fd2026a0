"""App settings read from monailabel's ``--conf`` options (shared by every model config)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from textseg.bundle import bundle_config_files, read_config_value
from textseg.bundle_zip import check_bundle

__all__ = ["AppSettings", "OVERLAYS"]

OVERLAYS = {"none": (), "": (), "real_ct": ("real_ct.json",), "tiny": ("tiny.json",)}
"""``--conf bundle_overlay`` values: ``real_ct`` (default) is the shipped real-CT model (``models/model.pt``), ``tiny``
the phantom-trained CPU-size model; any other value names config files."""


@dataclass
class AppSettings:
    """Where the bundle, its overlays and the checkpoint are, and which device runs them.

    ``--conf`` keys: ``bundle`` (folder; default ``bundles/text_prompted_ct_segmentation`` of the repository
    holding the app; a folder given here, e.g. a downloaded release, is checked first by
    :func:`textseg.bundle_zip.check_bundle`: layout, version, large-file hashes), ``bundle_overlay``
    (``real_ct`` (default), ``tiny``, ``none`` or comma-separated config names),
    ``checkpoint`` (default ``<bundle>/models/<ckpt_name of the configs>``), ``device`` (``auto``, ``cpu``,
    ``cuda``), ``preload`` (load the network at start-up), ``ohif_fixes`` (serve OHIF with the fixes of
    ``lib/ohif.py``, default ``true``).

    Active learning (``/activelearning``, ``/scoring``): ``active_learning_strategy`` (the default strategy,
    default ``clasp_pe``), ``active_learning_patch_size`` (suggested patch edge in voxels of the network's
    grid, default 32), ``active_learning_rounds`` (queries over which ClaSP PE's beta anneals, default 10),
    ``mc_dropout_samples`` (MC-dropout samples for BALD/PowerBALD, default 4; 0 disables them),
    ``mc_dropout_rate`` (dropout switched on in the encoder for those samples, default 0.1),
    ``active_learning_seed`` (default 0).
    """

    bundle_dir: Path
    configs: tuple[str, ...]
    checkpoint: Path
    device: str
    preload: bool
    ohif_fixes: bool = True
    active_learning_strategy: str = "clasp_pe"
    active_learning_patch_size: int = 32
    active_learning_rounds: int = 10
    mc_dropout_samples: int = 4
    mc_dropout_rate: float = 0.1
    active_learning_seed: int = 0

    @classmethod
    def from_conf(cls, app_dir: str | os.PathLike, conf: dict) -> "AppSettings":
        app_dir = Path(app_dir).resolve()
        bundle_dir = Path(conf.get("bundle") or app_dir.parents[1] / "bundles" / "text_prompted_ct_segmentation").resolve()
        overlay = str(conf.get("bundle_overlay", "real_ct")).strip()
        overlays = (
            OVERLAYS[overlay]
            if overlay in OVERLAYS
            else tuple(n if n.endswith(".json") else f"{n}.json" for n in overlay.split(",") if n.strip())
        )
        configs = ("inference.json", *overlays)
        if conf.get("bundle"):  # e.g. a downloaded release: its layout, version and large-file hashes, before serving it
            check_bundle(bundle_dir)
        bundle_config_files(bundle_dir, configs)  # clear error when a config is missing
        ckpt_name = read_config_value(bundle_dir, configs, "ckpt_name")
        checkpoint = Path(conf.get("checkpoint") or bundle_dir / "models" / ckpt_name).resolve()
        device = str(conf.get("device", "auto")).lower()
        if device in ("auto", ""):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--conf device {device}: CUDA is not available on this machine; use cpu or auto.")
        preload = _flag(conf, "preload", False)
        return cls(
            bundle_dir=bundle_dir,
            configs=configs,
            checkpoint=checkpoint,
            device=device,
            preload=preload,
            ohif_fixes=_flag(conf, "ohif_fixes", True),
            **_active_learning_conf(conf),
        )

    @property
    def overlays(self) -> tuple[str, ...]:
        """The configs merged on top of ``inference.json``/``train.json``."""
        return self.configs[1:]

    def config_value(self, key: str):
        """A plain value of the inference configs, the last overlay that sets it winning (e.g. ``roi_size``)."""
        return read_config_value(self.bundle_dir, self.configs, key)

    def missing_checkpoint_message(self) -> str:
        """What to do when there is no checkpoint yet."""
        return (
            f"no trained checkpoint at {self.checkpoint}. The repository ships models/model.pt (real CT; "
            f"`git checkout -- bundles/text_prompted_ct_segmentation/models/model.pt` restores it, `make train-real` retrains it); "
            f"`make demo-phantom` trains the phantom model models/model_tiny.pt; or pass --conf checkpoint <path to model .pt>."
        )


def _flag(conf: dict, key: str, default: bool) -> bool:
    """A yes/no ``--conf`` option; anything else stops the app with a message naming it."""
    value = str(conf.get(key, default)).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"--conf {key} {conf.get(key)!r}: expected true or false.")


def _active_learning_conf(conf: dict) -> dict:
    """The active-learning ``--conf`` options, checked (a bad value stops the app with a message naming it)."""
    from textseg.active_learning import get_strategy

    out = {}
    try:
        out["active_learning_strategy"] = get_strategy(str(conf.get("active_learning_strategy", "clasp_pe"))).name
    except ValueError as e:
        raise ValueError(f"--conf active_learning_strategy: {e}") from e
    for key, kind, low in (
        ("active_learning_patch_size", int, 4),
        ("active_learning_rounds", int, 1),
        ("mc_dropout_samples", int, 0),
        ("mc_dropout_rate", float, 0.0),
        ("active_learning_seed", int, 0),
    ):
        if key not in conf:
            continue
        try:
            value = kind(conf[key])
        except (TypeError, ValueError):
            raise ValueError(f"--conf {key} must be a number, got {conf[key]!r}.") from None
        if value < low or (key == "mc_dropout_rate" and value >= 1.0) or (key == "mc_dropout_samples" and value == 1):
            raise ValueError(
                f"--conf {key} {value} is out of range (at least {low}"
                f"{'; 0 or >= 2 samples' if key == 'mc_dropout_samples' else ''}"
                f"{', below 1' if key == 'mc_dropout_rate' else ''})."
            )
        out[key] = value
    return out
