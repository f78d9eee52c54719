"""LlamaGen (text-to-image) as a transformers model: `LlamaGenConfig`, `LlamaGenForImageGeneration`,
`LlamaGenVQVAE`, `LlamaGenProcessor`.

Importing this package registers `model_type="llamagen"` with `AutoConfig`, `AutoModel` and `AutoProcessor`, so a
saved or converted directory loads with the Auto classes.
"""

from transformers import AutoConfig, AutoModel, AutoProcessor

from .configuration_llamagen import LlamaGenConfig, default_generation_config
from .modeling_llamagen import (
    LlamaGen2DRotaryEmbedding,
    LlamaGenCaptionProjector,
    LlamaGenForImageGeneration,
    LlamaGenModel,
    LlamaGenPreTrainedModel,
    LlamaGenVQVAE,
)
from .processing_llamagen import LlamaGenProcessor, clean_caption


AutoConfig.register(LlamaGenConfig.model_type, LlamaGenConfig, exist_ok=True)
AutoModel.register(LlamaGenConfig, LlamaGenForImageGeneration, exist_ok=True)
AutoProcessor.register(LlamaGenConfig, LlamaGenProcessor, exist_ok=True)

__all__ = [
    "LlamaGen2DRotaryEmbedding",
    "LlamaGenCaptionProjector",
    "LlamaGenConfig",
    "LlamaGenForImageGeneration",
    "LlamaGenModel",
    "LlamaGenPreTrainedModel",
    "LlamaGenProcessor",
    "LlamaGenVQVAE",
    "clean_caption",
    "default_generation_config",
]
