"""RankE on TRL: GRPO for discrete autoregressive text-to-image models, with a co-evolving VQ decoder."""

from .config import RankEConfig
from .generation import TextToImagePipeline, generate
from .trainer import RankEGRPOTrainer

__version__ = "0.1.0"
__all__ = ["RankEConfig", "RankEGRPOTrainer", "TextToImagePipeline", "__version__", "generate"]
