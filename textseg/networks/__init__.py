"""Text-conditioned segmentation networks."""

from .fusion import FUSIONS, ConcatFusion, CrossAttentionFusion, FiLMFusion, FiLMGenerator, Fusion, make_fusion
from .text_swinunetr import GuidanceBlock, TextSwinUNETR

__all__ = [
    "FUSIONS",
    "ConcatFusion",
    "CrossAttentionFusion",
    "FiLMFusion",
    "FiLMGenerator",
    "Fusion",
    "GuidanceBlock",
    "TextSwinUNETR",
    "make_fusion",
]
