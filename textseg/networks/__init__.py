"""Text-conditioned segmentation networks."""

from .film_swinunetr import FiLMGenerator, TextFiLMSwinUNETR

__all__ = ["FiLMGenerator", "TextFiLMSwinUNETR"]
