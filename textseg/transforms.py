"""The one pre/post-processing chain that bundles, the CLI and the MONAI Label app share."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelWriter
from monai.transforms import (
    EnsureTyped,
    Invertd,
    LoadImaged,
    MapTransform,
    Orientationd,
    Randomizable,
    ScaleIntensityRanged,
    Spacingd,
)

from textseg.files import atomic_path

__all__ = [
    "IGNORE_CHANNEL",
    "DEFAULT_HU_RANGE",
    "ct_transforms",
    "ValidateImaged",
    "CheckCTd",
    "LabelToChannelsd",
    "AddTextEmbeddingd",
    "PROMPT_KEY",
    "RESOLUTION_KEY",
    "TARGET_IDS_KEY",
    "ResolvePromptd",
    "resolution_of",
    "SamplePromptsd",
    "MaskUnsupervisedd",
    "ProbabilitiesToLabelMapd",
    "InvertLabelMapd",
    "AtomicNibabelWriter",
    "AnswerPromptd",
]

IGNORE_CHANNEL = -1.0
"""Target value filling a prompt channel whose structure is not annotated in that case (partial labels)."""

DEFAULT_HU_RANGE = (-175.0, 250.0)
"""Abdominal soft-tissue window, scaled to [0, 1] (as in the SwinUNETR BTCV recipe)."""


def _source_name(data: Mapping, key: Hashable) -> str:
    value = data[key]
    meta = value.meta if isinstance(value, MetaTensor) else {}
    return str(meta.get("filename_or_obj", key))


class ValidateImaged(MapTransform):
    """Reject what the network cannot segment, naming the file: not one channel, not 3D, NaN/inf values.

    Expects channel-first data, i.e. after ``LoadImaged(..., ensure_channel_first=True)``.
    """

    def __init__(self, keys: KeysCollection, spatial_dims: int = 3, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = spatial_dims

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            name = _source_name(d, key)
            shape = tuple(image.shape)
            if len(shape) != self.spatial_dims + 1:
                raise ValueError(
                    f"{name}: expected a {self.spatial_dims}D image, got an array of shape {shape[1:] if len(shape) > 1 else shape} "
                    f"({len(shape) - 1}D)."
                )
            if shape[0] != 1:
                raise ValueError(
                    f"{name}: expected a single-channel {self.spatial_dims}D image, got {shape[0]} channels/time points "
                    f"(shape {shape}); 4D or multi-channel input is not supported."
                )
            if min(shape[1:]) < 2:
                raise ValueError(f"{name}: image of shape {shape[1:]} has a spatial size below 2: it is not a 3D volume.")
            if not torch.isfinite(torch.as_tensor(image)).all():
                raise ValueError(f"{name}: image contains NaN or infinite values.")
        return d


_NON_CT_HINT = "textseg segments CT. Pass --allow-non-ct (allow_non_ct=True) to run anyway."


class CheckCTd(MapTransform):
    """Refuse an image that is not a CT, naming the file and the reason: textseg's models segment CT only.

    DICOM input (a series folder or a DICOM file, known from the ``filename_or_obj`` meta that
    ``LoadImaged`` records) is checked by its Modality tag, read from the series' first file. Other input
    (NIfTI, arrays) is checked by its intensities, which must be Hounsfield units: a CT has air near
    -1000 HU (or padding at -1024, -2048, -3024 outside the field of view) and tissue above -200 HU. So
    at least ``low_percentile`` % of the voxels must be at or below ``air_hu`` and at least
    ``100 - high_percentile`` % above ``tissue_hu``; MR (non-negative values), intensity-normalised
    images ([0, 1], z-scores) and a CT stored without its rescale intercept fail. Percentiles are taken on
    a strided subsample of at most about ``max_samples`` voxels, so big volumes stay cheap. Thin slabs and
    any orientation or spacing pass: the check looks at values only. A tightly cropped CT without any air
    fails too; pass ``allow_non_ct=True`` to run on it anyway.

    Runs after ``LoadImaged`` (channel-first, as in :func:`ct_transforms`); the data are not changed.

    Args:
        keys: image key(s).
        allow_non_ct: warn (``UserWarning``) instead of raising.
        air_hu: HU at or below which a voxel counts as air.
        tissue_hu: HU above which a voxel counts as tissue.
        low_percentile: percentile of the intensities that must be at or below ``air_hu``.
        high_percentile: percentile of the intensities that must be above ``tissue_hu``.
        max_samples: about how many voxels the percentiles are computed on.
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        ValueError: (when ``allow_non_ct`` is false) the image is DICOM of a modality other than CT, or its
            intensities are not those of a CT in HU.
    """

    def __init__(
        self,
        keys: KeysCollection,
        allow_non_ct: bool = False,
        air_hu: float = -500.0,
        tissue_hu: float = -200.0,
        low_percentile: float = 0.5,
        high_percentile: float = 99.0,
        max_samples: int = 1_000_000,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if not 0.0 <= low_percentile < high_percentile <= 100.0:
            raise ValueError(f"need 0 <= low_percentile < high_percentile <= 100, got {low_percentile}, {high_percentile}.")
        if max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, got {max_samples}.")
        self.allow_non_ct = allow_non_ct
        self.air_hu = float(air_hu)
        self.tissue_hu = float(tissue_hu)
        self.low_percentile = float(low_percentile)
        self.high_percentile = float(high_percentile)
        self.max_samples = int(max_samples)

    def subsample(self, image) -> np.ndarray:
        """The image's values on a regular strided grid of about ``max_samples`` voxels (float32, flat)."""
        array = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
        spatial = array.reshape(-1, *array.shape[-3:]) if array.ndim >= 3 else array.reshape(1, -1)
        sizes = spatial.shape[1:]
        stride = max(1, int(np.ceil((spatial.numel() / self.max_samples) ** (1.0 / len(sizes)))))
        # never thin an axis below 16 samples: a slab of a few slices keeps all of them
        strides = [min(stride, max(1, n // 16)) for n in sizes]
        sample = spatial[(slice(None), *(slice(None, None, s) for s in strides))]
        return sample.detach().cpu().numpy().astype(np.float32, copy=False).reshape(-1)

    def intensity_problem(self, image) -> str | None:
        """Why the intensities are not those of a CT in HU, or ``None`` when they are."""
        sample = self.subsample(image)
        low, high = (float(v) for v in np.percentile(sample, [self.low_percentile, self.high_percentile]))
        stats = f"{self.low_percentile:g}th percentile {low:.4g}, {self.high_percentile:g}th percentile {high:.4g}"
        if low > self.air_hu:
            if low >= 0.0:
                kind = (
                    "values within [0, 1] as in an intensity-normalised image"
                    if high <= 1.0
                    else "non-negative values as in MR, or a CT stored without its rescale intercept"
                )
            else:
                kind = "no air"
            return (
                f"intensities are not Hounsfield units of a CT ({kind}: a CT has air near -1000 HU, but fewer than "
                f"{self.low_percentile:g}% of the voxels are at or below {self.air_hu:g}; {stats})"
            )
        if high <= self.tissue_hu:
            return (
                f"intensities are not Hounsfield units of a CT (no tissue: fewer than {100 - self.high_percentile:g}% "
                f"of the voxels are above {self.tissue_hu:g} HU; {stats})"
            )
        return None

    def __call__(self, data: Mapping) -> dict:
        from textseg.dicom import dicom_modality

        d = dict(data)
        for key in self.key_iterator(d):
            name = _source_name(d, key)
            modality = dicom_modality(name) if name != str(key) and os.path.exists(name) else None
            if modality is not None:
                problem = None if modality == "CT" else f"DICOM Modality is {modality!r}, not CT"
            else:
                problem = self.intensity_problem(d[key])
            if problem is None:
                continue
            message = f"{name}: {problem}; {_NON_CT_HINT}"
            if not self.allow_non_ct:
                raise ValueError(message)
            warnings.warn(
                f"{name}: {problem}; running anyway (allow_non_ct=True): results on non-CT input are unreliable.", UserWarning, stacklevel=2
            )
        return d


def ct_transforms(
    keys: Sequence[str] = ("image",),
    label_key: str | None = None,
    pixdim: Sequence[float] = (1.5, 1.5, 2.0),
    hu_range: Sequence[float] = DEFAULT_HU_RANGE,
    axcodes: str = "RAS",
    canonicalize: bool = False,
    canonical_kwargs: Mapping | None = None,
    allow_non_ct: bool = False,
) -> list:
    """Deterministic CT preprocessing: load, validate, refuse non-CT input, orient, resample, window intensities.

    Every step is invertible, so predictions can be mapped back to the input grid with ``Invertd``.

    Args:
        keys: image keys (file paths or DICOM folders).
        label_key: optional label key, resampled with nearest neighbour and not intensity-scaled.
        pixdim: target voxel spacing in mm.
        hu_range: Hounsfield window mapped to [0, 1] (clipped).
        axcodes: target orientation.
        canonicalize: also estimate and remove the patient's residual rotation from the image
            (:class:`textseg.canonical.CanonicalizeRotationd`, on HU, after resampling; invertible).
        canonical_kwargs: more arguments for :class:`~textseg.canonical.CanonicalizeRotationd`.
        allow_non_ct: run on images that do not look like CT (DICOM Modality other than CT, intensities not in
            HU) with a warning, instead of refusing them (:class:`CheckCTd`).

    Returns:
        list of transforms, to be composed with others (``Compose(ct_transforms(...) + [...])``).
    """
    keys = list(keys)
    all_keys = keys + ([label_key] if label_key else [])
    modes = ["bilinear"] * len(keys) + (["nearest"] if label_key else [])
    chain = [
        LoadImaged(keys=all_keys, ensure_channel_first=True, image_only=True),
        ValidateImaged(keys=keys),
        CheckCTd(keys=keys, allow_non_ct=allow_non_ct),
        EnsureTyped(keys=all_keys, dtype=[torch.float32] * len(keys) + ([torch.int16] if label_key else [])),
        Orientationd(keys=all_keys, axcodes=axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=all_keys, pixdim=tuple(pixdim), mode=modes),
    ]
    if canonicalize:
        from textseg.canonical import CanonicalizeRotationd

        chain.append(
            CanonicalizeRotationd(
                keys=all_keys, mode=modes, pad_value=[-1024.0] * len(keys) + ([0.0] if label_key else []), **dict(canonical_kwargs or {})
            )
        )
    chain.append(ScaleIntensityRanged(keys=keys, a_min=hu_range[0], a_max=hu_range[1], b_min=0.0, b_max=1.0, clip=True))
    return chain


class LabelToChannelsd(MapTransform):
    """Turn a dataset's integer label map into one binary target channel per model class.

    Channels whose structure the case does not annotate are filled with :data:`IGNORE_CHANNEL`, so
    partial-label losses and metrics skip them.

    Args:
        keys: label key(s); the label is [1, *S] integer ids of the case's dataset.
        class_names: the model's classes (vocabulary names), one output channel each.
        label_maps: dataset name -> {label id: vocabulary name} (see :func:`textseg.datasets.label_maps`).
        dataset_key: data key naming the case's dataset.
        annotated_key: optional data key listing the names annotated in this case (default: all of the
            dataset's labels); the key is consumed.
        default_dataset: dataset assumed when ``dataset_key`` is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        class_names: Sequence[str],
        label_maps: Mapping[str, Mapping[int, str]],
        dataset_key: str = "dataset",
        annotated_key: str = "annotated",
        default_dataset: str | None = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.class_names = list(class_names)
        self.label_maps = {ds: {int(i): n for i, n in m.items()} for ds, m in label_maps.items()}
        self.dataset_key = dataset_key
        self.annotated_key = annotated_key
        self.default_dataset = default_dataset

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        dataset = d.get(self.dataset_key, self.default_dataset)
        if dataset not in self.label_maps:
            raise KeyError(f"no label map for dataset {dataset!r}; known datasets: {sorted(self.label_maps)}.")
        ids_by_name = {name: i for i, name in self.label_maps[dataset].items()}
        annotated = d.pop(self.annotated_key, None)
        annotated = set(ids_by_name) if annotated is None else set(annotated)
        for key in self.key_iterator(d):
            label = d[key]
            channels = []
            for name in self.class_names:
                if name in ids_by_name and name in annotated:
                    channels.append((label[0] == ids_by_name[name]).float())
                else:
                    channels.append(torch.full_like(label[0], IGNORE_CHANNEL, dtype=torch.float32))
            out = torch.stack(channels)
            d[key] = MetaTensor(out, meta=label.meta, applied_operations=label.applied_operations) if isinstance(label, MetaTensor) else out
        return d


class AddTextEmbeddingd(MapTransform):
    """Put the prompts' text embeddings [K, D] in every sample, for ``PrepareBatchExtraInput``.

    Args:
        embedding: prompt embeddings, shape [K, D].
        key: data key to write.
    """

    def __init__(self, embedding: torch.Tensor, key: str = "text_embedding"):
        super().__init__(keys=[key], allow_missing_keys=True)
        embedding = torch.as_tensor(embedding, dtype=torch.float32)
        if embedding.ndim != 2 or embedding.shape[0] == 0:
            raise ValueError(f"text embedding must have shape [K>0, D], got {tuple(embedding.shape)}.")
        self.embedding = embedding
        self.key = key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        d[self.key] = self.embedding.clone()
        return d


PROMPT_KEY = "prompt"
"""Data key of a sample's prompt: free text, or a :class:`textseg.prompts.Resolution` its caller resolved."""
RESOLUTION_KEY = "prompt_resolution"
"""Data key of the resolved prompt, as JSON (:meth:`textseg.prompts.Resolution.to_dict`), written by :class:`ResolvePromptd`."""
TARGET_IDS_KEY = "target_ids"
"""Data key of the vocabulary ids [K] of the structures the network answers, in the order of the text embeddings."""


def resolution_of(data: Mapping, key: str = RESOLUTION_KEY):
    """The :class:`textseg.prompts.Resolution` that :class:`ResolvePromptd` put in ``data`` (JSON, or a list of one
    after collation)."""
    from textseg.prompts import Resolution

    value = data[key]
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, Resolution):
        return value
    return Resolution.from_dict(json.loads(value))


class ResolvePromptd(MapTransform):
    """Resolve a sample's prompt once into what inference and post-processing read: the prompt is data.

    Reads ``data["prompt"]``: free text ("segment the liver and kidneys"), or a :class:`textseg.prompts.Resolution`
    that the caller already resolved (it is then not resolved again). Writes:

    - ``prompt``: the prompt's text;
    - ``prompt_resolution``: the resolution as JSON, a string so that it survives ``DataLoader`` collation
      (read it with :func:`resolution_of`; :class:`AnswerPromptd` answers its position/size queries);
    - ``target_ids``: int64 [K], vocabulary ids of the structures the network answers: the named ones, then the
      candidates of position/size queries among ``class_names`` (:func:`textseg.prompts.resolution_structures`);
    - ``text_embedding``: float32 [K, D], the network's conditioning for each of them.

    Args:
        table: the vocabulary's text-embedding table (:func:`textseg.text.vocabulary_embedding_table`).
        class_names: the model's classes; a prompt naming anything else fails with ``PromptError`` naming it.
        embedding_key: where the text embeddings go (``PrepareBatchExtraInput`` reads them from there).

    Raises:
        PromptError: no prompt, an empty one, or one naming structures the model was not trained on.
    """

    def __init__(self, table, class_names: Sequence[str], embedding_key: str = "text_embedding"):
        super().__init__(keys=[PROMPT_KEY])
        self.table = table
        self.class_names = list(class_names)
        self.embedding_key = embedding_key

    def __call__(self, data: Mapping) -> dict:
        from textseg.prompts import PromptError, Resolution, resolution_structures, resolve
        from textseg.text import prompt_features
        from textseg.vocabulary import structure_ids

        d = dict(data)
        prompt = d.get(PROMPT_KEY)
        if prompt is None:
            raise PromptError(f"the sample has no {PROMPT_KEY!r}: give the text to segment, e.g. 'segment the liver and kidneys'.")
        resolution = prompt if isinstance(prompt, Resolution) else resolve(prompt)
        names = resolution_structures(resolution, allowed=self.class_names)
        d[PROMPT_KEY] = resolution.prompt
        d[RESOLUTION_KEY] = json.dumps(resolution.to_dict())
        d[TARGET_IDS_KEY] = torch.as_tensor(structure_ids(names), dtype=torch.int64)
        d[self.embedding_key] = prompt_features(self.table, names)
        return d


class SamplePromptsd(Randomizable, MapTransform):
    """Pick the prompts one training crop is supervised with: present structures and known-absent ones.

    After :class:`LabelToChannelsd` and :class:`AddTextEmbeddingd`, a crop has K target channels and K
    prompt embeddings. A channel is *supervised* when its structure is annotated in the case (not
    :data:`IGNORE_CHANNEL`); it is a *positive* when the structure appears in the crop and a *negative*
    when it is annotated but absent there, so the network learns to answer "nothing" for it. This keeps
    ``num_prompts`` channels: up to ``round(negative_fraction * num_prompts)`` negatives, positives for
    the rest, then any other supervised channels, in random order. With fewer supervised channels than
    ``num_prompts`` the remainder are unsupervised channels (ignored by the loss), so every crop has the
    same number of prompts and crops batch together.

    Args:
        label_key: target key, [K, *S] as made by :class:`LabelToChannelsd`.
        embedding_key: prompt embeddings key, [K, D].
        num_prompts: prompts per crop (at most K).
        negative_fraction: share of negatives among the kept prompts, in [0, 1].
    """

    def __init__(
        self, label_key: str = "label", embedding_key: str = "text_embedding", num_prompts: int = 8, negative_fraction: float = 0.25
    ):
        MapTransform.__init__(self, keys=[label_key, embedding_key])
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be at least 1, got {num_prompts}.")
        if not 0.0 <= negative_fraction <= 1.0:
            raise ValueError(f"negative_fraction must be in [0, 1], got {negative_fraction}.")
        self.label_key = label_key
        self.embedding_key = embedding_key
        self.num_prompts = num_prompts
        self.negative_fraction = negative_fraction

    def choose(self, label: torch.Tensor) -> list[int]:
        """Channel indices to keep for a target [K, *S] (see the class docstring)."""
        flat = torch.as_tensor(label).flatten(1)
        if flat.shape[0] < self.num_prompts:
            raise ValueError(f"{self.num_prompts} prompts per crop asked, but the label has only {flat.shape[0]} channels.")
        supervised = (flat != IGNORE_CHANNEL).all(dim=1)
        present = (flat > 0).any(dim=1)
        positives = self.R.permutation(torch.nonzero(supervised & present).flatten().tolist()).tolist()
        negatives = self.R.permutation(torch.nonzero(supervised & ~present).flatten().tolist()).tolist()
        unsupervised = torch.nonzero(~supervised).flatten().tolist()
        num_negatives = min(len(negatives), int(round(self.negative_fraction * self.num_prompts)))
        chosen = negatives[:num_negatives] + positives[: self.num_prompts - num_negatives]
        rest = positives[self.num_prompts - num_negatives :] + negatives[num_negatives:] + unsupervised
        chosen += rest[: self.num_prompts - len(chosen)]
        return self.R.permutation(chosen).tolist()

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        keep = self.choose(d[self.label_key])
        d[self.label_key] = d[self.label_key][keep]
        d[self.embedding_key] = torch.as_tensor(d[self.embedding_key])[keep]
        return d


class MaskUnsupervisedd(MapTransform):
    """Zero the prediction and target channels that are not supervised (target = IGNORE_CHANNEL).

    With ``DiceMetric(ignore_empty=True)`` those channels then count as NaN and drop out of the mean.

    Args:
        keys: prediction key(s), [K, *S].
        label_key: target key, [K, *S] as made by :class:`LabelToChannelsd` (modified in place of a copy).
    """

    def __init__(self, keys: KeysCollection, label_key: str = "label", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        label = d[self.label_key]
        unsupervised = (label == IGNORE_CHANNEL).flatten(1).all(dim=1)
        if unsupervised.any():
            label = label.clone()
            label[unsupervised] = 0
            d[self.label_key] = label
            for key in self.key_iterator(d):
                pred = d[key].clone()
                pred[unsupervised] = 0
                d[key] = pred
        return d


class ProbabilitiesToLabelMapd(MapTransform):
    """Per-prompt probabilities [K, *S] -> one label map [1, *S] of vocabulary ids.

    A voxel takes the id of its most probable prompt when that probability reaches ``threshold``,
    else 0 (background).

    Args:
        keys: prediction key(s).
        label_ids: vocabulary id of each of the K prompts, fixed; or
        label_ids_key: the data key holding them per sample ([K], e.g. ``target_ids`` from :class:`ResolvePromptd`).
        threshold: minimum probability for foreground.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_ids: Sequence[int] | None = None,
        threshold: float = 0.5,
        label_ids_key: str | None = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if (label_ids is None) == (label_ids_key is None):
            raise ValueError("give either label_ids or label_ids_key.")
        self.label_ids = None if label_ids is None else torch.as_tensor([int(i) for i in label_ids], dtype=torch.int16)
        self.label_ids_key = label_ids_key
        self.threshold = threshold

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        label_ids = self.label_ids
        if label_ids is None:
            label_ids = torch.as_tensor(d[self.label_ids_key]).reshape(-1).to(torch.int16)
        for key in self.key_iterator(d):
            probs = d[key]
            if probs.shape[0] != len(label_ids):
                raise ValueError(f"{key}: {probs.shape[0]} probability channels for {len(label_ids)} label ids.")
            best, index = torch.as_tensor(probs).max(dim=0, keepdim=True)
            labels = torch.where(best >= self.threshold, label_ids.to(index.device)[index], torch.zeros_like(index, dtype=torch.int16))
            d[key] = (
                MetaTensor(labels, meta=probs.meta, applied_operations=probs.applied_operations)
                if isinstance(probs, MetaTensor)
                else labels
            )
        return d


class InvertLabelMapd(MapTransform):
    """Map an integer label map from the network grid back to the input image's grid (nearest neighbour).

    ``Invertd`` inverts the preprocessing's ``Spacingd``/``Orientationd`` with a dense sampling grid: for a
    512 x 512 x 800 CT that is several GB of float coordinates for one uint8-worth label map. When the two grids
    are axis-aligned (the input's voxel axes are a permutation of the network grid's, as after orientation and
    spacing without a rotation), every input-grid index along one axis picks one network-grid index along another,
    so the label map is gathered with three 1-D index vectors: the only large array is the output itself. Voxel
    centres are matched in world coordinates, so the result is nearest-neighbour inversion; other grids (an oblique
    scan with ``canonicalize``) fall back to ``Invertd``.

    Args:
        keys: label-map key(s), [1, *S] on the network grid (the grid of ``orig_key``).
        transform: the preprocessing, for the ``Invertd`` fallback.
        orig_key: the preprocessed image whose metadata hold the input grid (``original_affine``, ``spatial_shape``).
    """

    def __init__(self, keys: KeysCollection, transform, orig_key: str = "image", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.orig_key = orig_key
        self.fallback = Invertd(keys, transform=transform, orig_keys=orig_key, nearest_interp=True, to_tensor=True)

    @staticmethod
    def axis_indices(src_affine, dst_affine, src_shape, dst_shape) -> list[tuple[int, np.ndarray]] | None:
        """For each source (network-grid) axis p: the input-grid axis q it follows and, per input index along q,
        the nearest source index (-1 outside); ``None`` when the grids are not axis-aligned."""
        mapping = np.linalg.solve(np.asarray(src_affine, dtype=np.float64), np.asarray(dst_affine, dtype=np.float64))
        rotation = mapping[:3, :3]
        tolerance = 1e-4 * np.abs(rotation).max()
        nonzero = np.abs(rotation) > tolerance
        if not (nonzero.sum(axis=0) == 1).all() or not (nonzero.sum(axis=1) == 1).all():
            return None
        axes = []
        for p in range(3):
            q = int(np.argmax(np.abs(rotation[p])))
            index = np.rint(rotation[p, q] * np.arange(dst_shape[q]) + mapping[p, 3]).astype(np.int64)  # ties to even, as grid_sample
            index[(index < 0) | (index >= src_shape[p])] = -1
            axes.append((q, index))
        return axes

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        image = d[self.orig_key]
        if not isinstance(image, MetaTensor) or "original_affine" not in image.meta or "spatial_shape" not in image.meta:
            return self.fallback(d)
        dst_affine = np.asarray(image.meta["original_affine"], dtype=np.float64)
        dst_shape = [int(s) for s in np.asarray(image.meta["spatial_shape"]).ravel()]
        keys = list(self.key_iterator(d))
        if len(dst_shape) != 3 or any(d[k].shape[0] != 1 or tuple(d[k].shape[1:]) != tuple(image.shape[1:]) for k in keys):
            return self.fallback(d)
        axes = self.axis_indices(image.affine, dst_affine, image.shape[1:], dst_shape)
        if axes is None:
            return self.fallback(d)
        for key in keys:
            labels = d[key]
            source = torch.as_tensor(labels)[0]
            # gather along the source axes with clipped indices, then zero what lies outside the source grid
            gathered = source[np.ix_(*[np.clip(index, 0, None) for _, index in axes])]
            for p, (_, index) in enumerate(axes):
                outside = torch.as_tensor(index < 0)
                if outside.any():
                    gathered.index_fill_(p, torch.nonzero(outside).flatten(), 0)
            order = [p for q in range(3) for p, (axis, _) in enumerate(axes) if axis == q]
            inverted = gathered.permute(order).contiguous()[None]
            meta = dict(labels.meta) if isinstance(labels, MetaTensor) else {}
            meta.update(affine=torch.as_tensor(dst_affine), spatial_shape=np.asarray(dst_shape))
            d[key] = MetaTensor(inverted, meta=meta)
        return d


class AtomicNibabelWriter(NibabelWriter):
    """``NibabelWriter`` that writes to a temporary file beside the target and renames it, so a crash never
    leaves a half-written NIfTI in place of an earlier result."""

    def write(self, filename, verbose: bool = False, **obj_kwargs):
        with atomic_path(filename, suffix="".join(Path(filename).suffixes) or ".nii.gz") as tmp:
            super().write(str(tmp), verbose=verbose, **obj_kwargs)


class AnswerPromptd(MapTransform):
    """Answer a prompt's position/size queries on a label map of vocabulary ids, keeping only what was asked.

    Runs after :class:`ProbabilitiesToLabelMapd` (and after inversion to the input grid): the label map
    holds every structure the prompt needed (:func:`textseg.prompts.resolution_structures`); this keeps the
    named structures plus each query's answer, chosen in world coordinates from the image affine (in the
    patient's frame when :class:`textseg.canonical.CanonicalizeRotationd` recorded a rotation).

    Args:
        keys: label map key(s), [1, *S] vocabulary ids with an ``affine``.
        resolution_key: where :class:`ResolvePromptd` left the resolved prompt.
    """

    def __init__(self, keys: KeysCollection, resolution_key: str = RESOLUTION_KEY, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.resolution_key = resolution_key

    def __call__(self, data: Mapping) -> dict:
        from textseg.canonical import patient_frame_affine
        from textseg.prompts import select_by_query
        from textseg.vocabulary import load_vocabulary

        resolution = resolution_of(data, self.resolution_key)
        if not resolution.queries:
            return dict(data)
        vocabulary = load_vocabulary()
        d = dict(data)
        for key in self.key_iterator(d):
            labels = d[key]
            array = torch.as_tensor(labels)[0].cpu().numpy()
            present = [vocabulary.by_id(int(i)).name for i in np.unique(array) if i > 0]
            masks = {name: array == vocabulary[name].id for name in present}
            keep = {vocabulary[n].id for n in resolution.structures}
            for query in resolution.queries:
                # in the patient's frame when a canonicalization recorded the patient's rotation in the meta
                name, _ = select_by_query(query, masks, patient_frame_affine(labels), vocabulary)
                keep.add(vocabulary[name].id)
            kept = torch.as_tensor(np.isin(array, sorted(keep)))[None].to(torch.as_tensor(labels).device)
            d[key] = labels * kept
        return d
