"""Text-conditioned segmentation networks."""

from .fusion import FUSIONS, ConcatFusion, CrossAttentionFusion, FiLMFusion, FiLMGenerator, Fusion, make_fusion
from .text_swinunetr import GUIDANCE_CHANNELS, HEADS, GuidanceBlock, TextSwinUNETR

__all__ = [
    "FUSIONS",
    "GUIDANCE_CHANNELS",
    "HEADS",
    "ConcatFusion",
    "CrossAttentionFusion",
    "FiLMFusion",
    "FiLMGenerator",
    "Fusion",
    "GuidanceBlock",
    "TextSwinUNETR",
    "make_fusion",
]
