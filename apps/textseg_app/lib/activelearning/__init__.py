"""Active learning in the app: the background scoring task and the strategies of ``/activelearning``."""

from .candidates import CandidateStore, ImageScorer
from .scoring import UncertaintyScoring
from .strategy import TextsegStrategy

__all__ = ["CandidateStore", "ImageScorer", "TextsegStrategy", "UncertaintyScoring"]
