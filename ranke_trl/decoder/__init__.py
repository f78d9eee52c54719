"""Stage 2 of RankE (the M-step): the decoder losses, the PatchGAN, LPIPS and the decoder phase."""

from .discriminator import PatchDiscriminator
from .losses import (
    consistency_loss,
    discriminator_loss,
    rank_gan_generator_loss,
    rank_gan_weights,
    reconstruction_loss,
    reward_backprop_loss,
)
from .perceptual import build_lpips
from .phase import DecoderPhase, EMATeacher, reconstruction_error

__all__ = [
    "DecoderPhase",
    "EMATeacher",
    "PatchDiscriminator",
    "build_lpips",
    "consistency_loss",
    "discriminator_loss",
    "rank_gan_generator_loss",
    "rank_gan_weights",
    "reconstruction_error",
    "reconstruction_loss",
    "reward_backprop_loss",
]
