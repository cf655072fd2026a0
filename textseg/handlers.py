"""Ignite handlers for textseg bundles."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from monai.utils import min_version, optional_import

from textseg.checkpoints import require_matching_embeddings
from textseg.files import atomic_path

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["PromptEmbeddingCheck", "ResumableTraining", "InitialWeights"]


class PromptEmbeddingCheck:
    """Refuse to run a checkpoint with prompt embeddings other than those it was trained with.

    A checkpoint stores the embeddings of its classes (``class_embeddings``); if the bundle's text
    encoder, template or vocabulary now gives different ones, prompts would be meaningless to the
    network. Attach after ``CheckpointLoader`` (both run when the engine starts).

    Args:
        network: the network (or a DDP wrapper) with a ``class_embeddings`` buffer.
        expected: the class embeddings the current text configuration gives, [K, D].
        text_encoder: encoder name, for the error message.
    """

    def __init__(self, network: torch.nn.Module, expected: torch.Tensor, text_encoder: str = ""):
        self.network = getattr(network, "module", network)
        self.expected = torch.as_tensor(expected, dtype=torch.float32)
        self.text_encoder = text_encoder

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine=None) -> None:
        require_matching_embeddings(self.network.class_embeddings, self.expected, text_encoder=self.text_encoder)


class ResumableTraining:
    """Make a training run survive being killed: save its whole state every epoch, resume from it at start.

    Every ``interval`` epochs ``{network, optimizer, lr_scheduler, trainer}`` (``save_dict``) is written
    to ``save_dir/filename`` through a temporary file and a rename, so a kill mid-save leaves the
    previous state. When the trainer starts and that file exists, everything is loaded from it and
    training goes on from the saved epoch (with the current ``max_epochs``). A run that completes
    deletes the file, so the next run starts afresh. Only rank 0 writes under DDP.

    Args:
        save_dir: folder of the state file (the bundle's ``models/``).
        save_dict: name -> object with ``state_dict``/``load_state_dict`` (network, optimizer, scheduler); the
            engine the handler is attached to is added as ``"trainer"``, so the epoch is restored too.
        filename: state file name.
        interval: epochs between saves.
        enabled: ``False`` attaches nothing (a config switch).
    """

    def __init__(
        self, save_dir: str | os.PathLike, save_dict: Mapping, filename: str = "training_state.pt", interval: int = 1, enabled: bool = True
    ):
        self.path = Path(save_dir) / filename
        self.save_dict = dict(save_dict)
        self.interval = max(1, int(interval))
        self.enabled = enabled

    def attach(self, engine) -> None:
        if not self.enabled:
            return
        self.save_dict.setdefault("trainer", engine)
        engine.add_event_handler(Events.STARTED, self.resume)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.finish)

    @staticmethod
    def _is_writer() -> bool:
        return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0

    def _objects(self, engine) -> dict:
        return {k: getattr(v, "module", v) if k == "network" else v for k, v in self.save_dict.items()}

    def resume(self, engine) -> None:
        if not self.path.is_file():
            return
        from ignite.handlers import Checkpoint

        max_epochs = engine.state.max_epochs
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        Checkpoint.load_objects(to_load=self._objects(engine), checkpoint=state)
        engine.state.max_epochs = max_epochs
        engine.logger.info(f"resumed from {self.path} at epoch {engine.state.epoch} of {max_epochs}")
        print(f"resuming training from {self.path}: epoch {engine.state.epoch} of {max_epochs} done", flush=True)

    def save(self, engine) -> None:
        if not self._is_writer():
            return
        with atomic_path(self.path) as tmp:
            torch.save({k: v.state_dict() for k, v in self._objects(engine).items()}, tmp)

    def finish(self, engine) -> None:
        if self._is_writer() and engine.state.epoch >= engine.state.max_epochs:
            self.path.unlink(missing_ok=True)


class InitialWeights:
    """Start a training from a checkpoint's weights (fine-tuning), keeping the class embeddings of the configs.

    Every parameter and buffer of the network is loaded from ``load_path`` strictly: a checkpoint of another network
    (feature size, fusion, window) fails, naming the first differing entries. Only ``class_embeddings`` (the default
    prompts, one row per class) stays as the configs built it, so fine-tuning on another class set starts from the
    released weights: the text-conditioned heads are shared by all prompts and carry no per-class parameters. Loads
    when the trainer starts, before :class:`ResumableTraining`, which replaces everything when a killed run resumes.

    Args:
        load_path: the checkpoint (a state dict, or ``{"model": state dict}``); empty: the handler does nothing.
        network: the network being trained (a ``DistributedDataParallel`` wrapper is looked through).
        map_location: where the checkpoint's tensors are loaded.
    """

    def __init__(self, load_path: str | os.PathLike | None, network: torch.nn.Module, map_location="cpu"):
        self.load_path = str(load_path or "")
        self.network = network
        self.map_location = map_location

    def attach(self, engine) -> None:
        if self.load_path:
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine=None) -> None:
        if not Path(self.load_path).is_file():
            raise FileNotFoundError(f"ckpt_path {self.load_path}: no such checkpoint to start the training from.")
        state = torch.load(self.load_path, map_location=self.map_location, weights_only=True)
        state = dict(state.get("model", state)) if isinstance(state, Mapping) else state
        state.pop("class_embeddings", None)
        network = getattr(self.network, "module", self.network)
        own = network.state_dict()
        missing = [k for k in own if k not in state and k != "class_embeddings"]
        unexpected = [k for k in state if k not in own]
        mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state if k in own and state[k].shape != own[k].shape]
        if missing or unexpected or mismatched:
            problems = [f"{what}: {', '.join(items[:3])}" for what, items in (("missing", missing), ("unexpected", unexpected),
                        ("other shapes (checkpoint vs network)", mismatched)) if items]  # fmt: skip
            raise ValueError(
                f"ckpt_path {self.load_path} is not a checkpoint of this network ({'; '.join(problems)}): start from a "
                "checkpoint trained with the same configs (e.g. models/model.pt with real_ct.json)."
            )
        network.load_state_dict({**state, "class_embeddings": own["class_embeddings"]} if "class_embeddings" in own else state)
