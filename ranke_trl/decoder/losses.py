"""The Stage 2 (M-step) decoder losses of RankE, one small pure function per equation of `shared/METHOD.md`.

Pixels are (B, 3, H, W): decoder outputs and corpus images in [-1, 1], reward inputs in [0, 1]. Discriminator
logits are PatchGAN maps (B, 1, h, w). Every function returns a scalar loss to minimise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

GAN_LOSSES = ("non_saturating", "hinge")


def _check_gan_kind(kind: str) -> None:
    if kind not in GAN_LOSSES:
        raise ValueError(f"Unknown GAN loss {kind!r}; expected one of {GAN_LOSSES} (RankEConfig.gan_loss).")


@torch.no_grad()
def rank_gan_weights(rewards: torch.Tensor, group_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Rank-GAN importance weights, Eq. 6: `w_i = G · exp(r_i/τ) / Σ_j exp(r_j/τ)` over each prompt's group.

    Args:
        rewards: (M,) scalar rewards, on the scale the reward returns.
        group_ids: (M,) integer group label of each row; rows sharing a label are one prompt's G rollouts. The
            groups must be complete (all G rollouts), since the weights of a group sum to its size.
        temperature: τ > 0 (validated once, by `RankEConfig.rank_gan_temperature`); `inf` gives uniform weights
            (a plain GAN), τ → 0 puts all of a group's weight on its best sample (ties share it).

    Rows whose reward is NaN (no reward could score the rollout) get weight 0, and their group is normalised over
    its scored rows.

    Returns:
        (M,) float32 weights, detached, with `Σ_{i in group} w_i` = the number of scored rows of the group.
    """
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must both be (M,).")
    rewards = rewards.detach().float()
    scored = ~torch.isnan(rewards)  # an unscored rollout (NaN) gets weight 0; its group is normalised over the rest
    if rewards.numel() == 0:
        return torch.ones_like(rewards)
    _, group = torch.unique(group_ids, return_inverse=True)
    num_groups = int(group.max()) + 1
    group_size = rewards.new_zeros(num_groups).scatter_add(0, group, scored.float())
    if math.isinf(temperature):
        return scored.float()
    logits = torch.where(scored, rewards / temperature, torch.full_like(rewards, -math.inf))
    # Subtract each group's max before exp, so a small τ cannot overflow.
    group_max = logits.new_full((num_groups,), -math.inf).scatter_reduce(0, group, logits, "amax")
    unnorm = torch.where(scored, torch.exp(logits - group_max[group].clamp(min=-3.0e38)), torch.zeros_like(logits))
    group_sum = logits.new_zeros(num_groups).scatter_add(0, group, unnorm)
    return torch.where(scored, group_size[group] * unnorm / group_sum[group].clamp(min=1e-30), torch.zeros_like(logits))


def reward_backprop_loss(
    images01: torch.Tensor,
    prompts: Sequence[str],
    reward_fns: Sequence,
    reward_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Reward back-propagation, Eq. 5: `L_rbp = − E_i [ Σ_k α_k R_k(D_φ(sg(z_i)), c_i) ]`.

    Args:
        images01: (B, 3, H, W) decoded rollouts mapped to [0, 1], differentiable in the decoder.
        prompts: B prompt strings.
        reward_fns: differentiable scorers, each with `score(images01, prompts) -> (B,)`.
        reward_weights: α_k, one per scorer (default 1 each), the same weights Stage 1 sums rewards with.

    Returns:
        A scalar: minus the weighted mean reward over the batch.
    """
    if not reward_fns:
        raise ValueError("reward_backprop_loss needs at least one differentiable reward function.")
    reward_weights = [1.0] * len(reward_fns) if reward_weights is None else list(reward_weights)
    if len(reward_weights) != len(reward_fns):
        raise ValueError(f"Got {len(reward_weights)} reward weights for {len(reward_fns)} reward functions.")
    total = images01.new_zeros((), dtype=torch.float32)
    for fn, weight in zip(reward_fns, reward_weights):
        scores = fn.score(images01, list(prompts))
        if scores.shape != (images01.size(0),):
            raise ValueError(f"{fn!r}.score returned shape {tuple(scores.shape)}; expected ({images01.size(0)},).")
        total = total + weight * scores.float().mean()
    return -total


def rank_gan_generator_loss(
    fake_logits: torch.Tensor, weights: torch.Tensor, kind: str = "non_saturating"
) -> torch.Tensor:
    """Rank-GAN generator loss, Eq. 6: `L_RankGAN = − 1/G Σ_i w_i log σ(Dis(D_φ(z_i)))`.

    Args:
        fake_logits: (B, 1, h, w) discriminator logits of decoded rollouts.
        weights: (B,) Rank-GAN weights from :func:`rank_gan_weights` (no gradient).
        kind: 'non_saturating' (the paper: `w · softplus(−logit)`) or 'hinge' (`−w · logit`).

    Returns:
        A scalar: each sample's loss is averaged over patches, then weighted and averaged over the batch. Since the
        weights of a group sum to G, dividing by the batch size is the paper's 1/G per group.
    """
    _check_gan_kind(kind)
    if weights.shape != (fake_logits.size(0),):
        raise ValueError(f"weights {tuple(weights.shape)} must be ({fake_logits.size(0)},), one per fake image.")
    fake_logits = fake_logits.float()
    per_patch = F.softplus(-fake_logits) if kind == "non_saturating" else -fake_logits
    per_sample = per_patch.flatten(1).mean(dim=1)
    return (weights.detach().to(per_sample) * per_sample).mean()


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "non_saturating"
) -> torch.Tensor:
    """Discriminator loss under Eq. 6: `L_Dis = E[softplus(−Dis(x_real))] + E[softplus(Dis(sg(D_φ(z))))]`.

    Args:
        real_logits: (B_real, 1, h, w) logits of corpus images.
        fake_logits: (B_fake, 1, h, w) logits of detached decoded rollouts.
        kind: 'non_saturating' or 'hinge' (`relu(1 − real) + relu(1 + fake)`).

    Returns:
        A scalar; real and fake terms are each averaged over their own batch and patches.
    """
    _check_gan_kind(kind)
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind == "non_saturating":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def reconstruction_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    lpips_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    lpips_weight: float = 1.0,
) -> torch.Tensor:
    """Reconstruction anchor, Eq. 7: `L_rec = E_x [ ‖D_φ(z_gt) − x‖_1 + λ_p · LPIPS(D_φ(z_gt), x) ]`.

    Args:
        recon: (B, 3, H, W) decoded ground-truth codes, in [-1, 1] (not clamped, so every pixel gets a gradient).
        target: (B, 3, H, W) corpus images in [-1, 1].
        lpips_fn: a frozen perceptual distance taking two [-1, 1] batches and returning (B, ...) distances;
            skipped when None.
        lpips_weight: λ_p; 0 skips the LPIPS forward.

    Returns:
        A scalar: the per-pixel mean absolute error plus λ_p times the mean LPIPS distance.
    """
    if recon.shape != target.shape:
        raise ValueError(f"recon {tuple(recon.shape)} and target {tuple(target.shape)} must have the same shape.")
    target = target.to(recon)
    loss = F.l1_loss(recon.float(), target.float())
    if lpips_fn is not None and lpips_weight > 0:
        loss = loss + lpips_weight * lpips_fn(recon, target).float().mean()
    return loss


def consistency_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """EMA consistency, Eq. 8: `L_cons = E_i ‖D_φ(z_i) − D_φ̄(z_i)‖²₂`.

    The squared distance is averaged over pixels rather than summed (ours), which keeps λ_cons on the same scale
    as the per-pixel L1 of `L_rec` at any resolution; summing would multiply it by 3·H·W.

    Args:
        student: (B, 3, H, W) decoder output D_φ(z), differentiable.
        teacher: (B, 3, H, W) EMA-teacher output D_φ̄(z) on the same codes; treated as a constant.

    Returns:
        A scalar: the per-pixel mean squared error.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must have the same shape.")
    return F.mse_loss(student.float(), teacher.detach().to(device=student.device, dtype=torch.float32))
