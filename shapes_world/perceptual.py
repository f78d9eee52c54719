"""ShapesWorld's VQ tokenizer, trained as a VQGAN: L1 + perceptual + GAN losses, on the Janus VQ architecture.

- **Architecture**: transformers' `JanusVQVAE`, so the trained tokenizer loads wherever a Janus VQ does.
- **Quantiser**: the L2-normalised nearest-code lookup of the original tokenizer (`l2_quantize`), the same lookup
  `JanusVQCodec.encode` uses at inference and the same normalised entries `JanusVQVAE.decode` renders. Training
  with `JanusVQVAE`'s own quantiser (raw Euclidean search) would give codes inference never sees (NOTES.md).
- **Perceptual loss**: LPIPS needs ImageNet VGG weights, unavailable offline, so `ShapesPerceptualDistance` applies
  LPIPS's recipe (unit-normalised activations, squared differences) to the ShapesWorld attribute net
  (`features.ShapesAttributeNet`), whose features encode the colours and kinds ShapesEval checks.
- **GAN loss**: `ranke_trl.decoder`'s `PatchDiscriminator` with its `discriminator_loss` and (uniformly weighted)
  non-saturating generator loss, balanced against the reconstruction by taming's adaptive weight and switched on
  after `gan_start` of the steps, as VQGANs usually do: an adversary helps once reconstructions are roughly right.
- **Dead codes**: entries unused for `reinit_every` steps are re-initialised to random encoder outputs of the current
  batch (as in SoundStream / improved VQGAN practice); without it a 256-entry codebook collapses to a few dozen
  codes in the first hundred steps. Re-initialisation stops for the last fifth of training so the codes settle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import JanusVQVAE, JanusVQVAEConfig, get_cosine_schedule_with_warmup

from ranke_trl.decoder import PatchDiscriminator, discriminator_loss, rank_gan_generator_loss
from .features import ShapesAttributeNet


class ShapesPerceptualDistance(nn.Module):
    """An LPIPS-style distance on the attribute net's block activations, frozen; LPIPS's VGG is unavailable offline.

    Each block's activations are unit-normalised over channels, as in LPIPS, and the squared differences summed
    over channels, averaged over positions and summed over blocks (LPIPS's "lin=False" variant: no calibrated
    linear heads). `forward(x, y)` takes two (B, 3, H, W) batches in [-1, 1] and returns (B,) distances >= 0.
    """

    def __init__(self, net: ShapesAttributeNet):
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "ShapesPerceptualDistance":
        return super().train(False)  # always frozen, whatever the enclosing module does

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        distance = x.new_zeros(x.size(0), dtype=torch.float32)
        for fx, fy in zip(self.net.activations(x), self.net.activations(y)):
            fx, fy = F.normalize(fx.float(), dim=1), F.normalize(fy.float(), dim=1)
            distance = distance + (fx - fy).pow(2).sum(dim=1).mean(dim=(1, 2))
        return distance


def l2_quantize(vq: JanusVQVAE, pixels: torch.Tensor, beta: float = 0.25):
    """Encode and quantise with the L2-normalised lookup, with a straight-through gradient to the encoder.

    Args:
        pixels: (B, 3, H, W) in [-1, 1].
        beta: commitment weight of the codebook loss.

    Returns:
        quantized: (B, D, h, w), the normalised codebook entries in the forward pass (what `vq.decode(codes)` feeds
            its decoder), the encoder's latents in the backward pass.
        codes: (B, h * w) in [0, K), raster order, equal to `JanusVQCodec.encode(pixels)`.
        codebook_loss: scalar, `‖e − sg(z)‖² + β ‖z − sg(e)‖²` on unit vectors.
        latents: (B * h * w, D) detached unit-norm encoder outputs (to re-initialise dead codes from).
    """
    latents = F.normalize(vq.quant_conv(vq.encoder(pixels)), dim=1)
    batch, dim, height, width = latents.shape
    flat = latents.permute(0, 2, 3, 1).reshape(-1, dim)
    codebook = F.normalize(vq.quantize.embedding.weight, dim=-1)
    codes = (flat @ codebook.T).argmax(dim=-1)  # nearest unit vector = largest cosine
    chosen = codebook[codes]
    codebook_loss = F.mse_loss(chosen, flat.detach()) + beta * F.mse_loss(flat, chosen.detach())
    quantized = flat + (chosen - flat).detach()
    quantized = quantized.view(batch, height, width, dim).permute(0, 3, 1, 2)
    return quantized, codes.view(batch, -1), codebook_loss, flat.detach()


def adaptive_gan_weight(reconstruction: torch.Tensor, gan: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """taming-transformers' balance `‖∇_w L_rec‖ / ‖∇_w L_gan‖` at the decoder's output layer `w`, detached.

    Scaled by it, the adversarial gradient at the output is `gan_weight` times the reconstruction gradient, whatever
    the discriminator's confidence; a fixed weight lets a confident discriminator paint textures into flat shapes.
    """
    rec_grad = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(max=1e4).detach()


@dataclass
class VQGANSettings:
    """Loss weights and optimisation of `train_vqgan`."""

    steps: int = 800
    batch_size: int = 32
    learning_rate: float = 1e-3
    perceptual_weight: float = 1.0
    gan_weight: float = 0.1
    gan_start: float = 0.5  # fraction of the steps before the GAN loss (and the discriminator) switch on
    discriminator_channels: int = 32
    discriminator_layers: int = 3
    reinit_every: int = 25  # steps between dead-code checks; 0 disables re-initialisation


def train_vqgan(
    images: torch.Tensor,
    config: JanusVQVAEConfig,
    perceptual: ShapesPerceptualDistance,
    settings: VQGANSettings,
    seed: int = 0,
    show_progress: bool = True,
    desc: str = "VQ tokenizer: training",
) -> tuple[JanusVQVAE, dict]:
    """Train a `JanusVQVAE` on world renders as a VQGAN.

    Args:
        images: uint8 (M, 3, H, W) renders; H must match the config's grid times its downsampling.
        config: the tokenizer's config (e.g. `tiny_janus_config(...).vq_config`).
        perceptual: the frozen perceptual distance.
        show_progress, desc: the progress bar and its label.

    Returns:
        The tokenizer in eval mode, and a log: mean losses over the last tenth of the steps, the codes re-initialised
        and the codebook usage (fraction of entries hit) over the last `reinit_every` steps.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    side = config.num_patches * 2 ** (len(config.channel_multiplier) - 1)
    if images.shape[1:] != (3, side, side) or images.dtype != torch.uint8:
        raise ValueError(
            f"images must be uint8 (M, 3, {side}, {side}) for this VQ config, got {images.dtype} {tuple(images.shape)}."
        )
    vq = JanusVQVAE(config).train()
    # transformers draws conv weights from N(0, 0.02), an init meant for fine-tuning that leaves these 3x3 convs ~4x
    # too small; from scratch, PyTorch's default (Kaiming-uniform) init, as taming / LlamaGen use, learns far faster
    # (ShapesEval on reconstructions after 500 steps: 15-30% with the former, 67% with the latter).
    for module in vq.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.GroupNorm)):
            module.reset_parameters()
    disc = PatchDiscriminator(3, settings.discriminator_channels, settings.discriminator_layers).train()
    opt_vq = torch.optim.AdamW(vq.parameters(), lr=settings.learning_rate, betas=(0.5, 0.9), weight_decay=0.0)
    opt_disc = torch.optim.AdamW(disc.parameters(), lr=settings.learning_rate, betas=(0.5, 0.9), weight_decay=0.0)
    warmup = max(1, settings.steps // 20)
    schedule = get_cosine_schedule_with_warmup(opt_vq, warmup, settings.steps)
    gan_step = int(settings.gan_start * settings.steps)
    window = torch.zeros(config.num_embeddings, dtype=torch.long)
    history: dict[str, list[float]] = {"l1": [], "perceptual": [], "codebook": [], "gan": [], "discriminator": []}
    reinitialised = 0
    for step in tqdm(range(settings.steps), desc=desc, disable=not show_progress):
        index = torch.randint(len(images), (settings.batch_size,), generator=generator)
        pixels = images[index].float() / 127.5 - 1
        quantized, codes, codebook_loss, latents = l2_quantize(vq, pixels)
        recon = vq.decoder(vq.post_quant_conv(quantized))
        l1 = F.l1_loss(recon, pixels)
        perceptual_loss = perceptual(recon, pixels).mean()
        loss = l1 + settings.perceptual_weight * perceptual_loss + codebook_loss
        use_gan = settings.gan_weight > 0 and step >= gan_step
        if use_gan:
            gan = rank_gan_generator_loss(disc(recon), torch.ones(len(recon)))  # uniform weights: a plain GAN
            balance = adaptive_gan_weight(loss, gan, vq.decoder.conv_out.weight)
            loss = loss + settings.gan_weight * balance * gan
            history["gan"].append(gan.item())
        opt_vq.zero_grad(set_to_none=True)
        loss.backward()
        opt_vq.step()
        schedule.step()
        if use_gan:
            d_loss = discriminator_loss(disc(pixels), disc(recon.detach()))
            opt_disc.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_disc.step()
            history["discriminator"].append(d_loss.item())
        for name, value in (("l1", l1), ("perceptual", perceptual_loss), ("codebook", codebook_loss)):
            history[name].append(value.item())

        window += torch.bincount(codes.flatten(), minlength=config.num_embeddings)
        if settings.reinit_every and (step + 1) % settings.reinit_every == 0:
            dead = (window == 0).nonzero().squeeze(-1)
            if len(dead) and step < 0.8 * settings.steps:
                with torch.no_grad():
                    pick = torch.randint(len(latents), (len(dead),), generator=generator)
                    vq.quantize.embedding.weight[dead] = latents[pick].to(vq.quantize.embedding.weight)
                reinitialised += len(dead)
            usage = float((window > 0).float().mean())
            window.zero_()
    tail = max(1, settings.steps // 10)
    log = {f"{name}_loss": sum(v[-tail:]) / len(v[-tail:]) for name, v in history.items() if v}
    log["codes_reinitialised"] = reinitialised
    if settings.reinit_every and settings.steps >= settings.reinit_every:
        log["codebook_usage_last_window"] = usage
    return vq.eval().requires_grad_(False), log


__all__ = ["ShapesPerceptualDistance", "VQGANSettings", "l2_quantize", "train_vqgan"]
