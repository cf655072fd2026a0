"""Active learning for text-prompted 3D segmentation: query strategies and scoring with the text-conditioned
network (the simulation that compares them is an experiment: :mod:`textseg.experiments.active_learning_simulation`).

* :mod:`.strategies` -- random, foreground-aware random (nnActive), predictive entropy, MC-dropout BALD,
  power entropy / PowerBALD and ClaSP PE; one function each, registered by name.
* :mod:`.scoring` -- class probabilities from the network's per-prompt sigmoids, MC dropout, and
  :func:`score_image` for applications (MONAI Label).
* :mod:`.pool` -- per-image candidate records and one-at-a-time selection for applications (MONAI Label).
"""

from .pool import bbox_to_grid, class_query_due, image_candidates, select_next
from .scoring import enable_mc_dropout, predict_probs, score_image
from .strategies import (
    STRATEGIES,
    Patch,
    QueryContext,
    StrategySpec,
    aggregate_patches,
    class_entropy,
    expected_entropy,
    exponential_schedule,
    get_strategy,
    mutual_information,
    power_noising,
    predictive_entropy,
    sigmoid_schedule,
    sigmoid_to_categorical,
    whole_image_patch_size,
)

__all__ = [
    "STRATEGIES",
    "Patch",
    "QueryContext",
    "StrategySpec",
    "aggregate_patches",
    "bbox_to_grid",
    "class_entropy",
    "class_query_due",
    "enable_mc_dropout",
    "exponential_schedule",
    "expected_entropy",
    "get_strategy",
    "image_candidates",
    "mutual_information",
    "power_noising",
    "predict_probs",
    "predictive_entropy",
    "score_image",
    "select_next",
    "sigmoid_schedule",
    "sigmoid_to_categorical",
    "whole_image_patch_size",
]
