"""The Stage 2 losses (METHOD.md Eq. 5-8), the PatchGAN and the LPIPS builder, as pure functions."""

import math

import pytest
import torch
import torch.nn.functional as F

from ranke_trl.decoder import (
    PatchDiscriminator,
    build_lpips,
    consistency_loss,
    discriminator_loss,
    rank_gan_generator_loss,
    rank_gan_weights,
    reconstruction_loss,
    reward_backprop_loss,
)


class RedReward:
    """A differentiable stand-in reward: the mean of the red channel, times a per-call weight."""

    is_differentiable = True

    def score(self, images01, prompts):
        return images01[:, 0].mean(dim=(1, 2))


# ---------------------------------------------------------------------------------------------- Rank-GAN weights
GROUPS = torch.tensor([0, 0, 0, 1, 1, 1, 1])
REWARDS = torch.tensor([0.1, 0.3, 0.2, 0.5, 0.4, 0.9, 0.0])


@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0, float("inf")])
def test_rank_gan_weights_sum_to_group_size(temperature):
    w = rank_gan_weights(REWARDS, GROUPS, temperature)
    assert torch.allclose(w[:3].sum(), torch.tensor(3.0)) and torch.allclose(w[3:].sum(), torch.tensor(4.0))


def test_rank_gan_weights_are_group_size_times_softmax():
    w = rank_gan_weights(REWARDS, GROUPS, 0.1)
    assert torch.allclose(w[3:], 4 * torch.softmax(REWARDS[3:] / 0.1, dim=0))


def test_rank_gan_weights_are_uniform_at_infinite_temperature():
    assert torch.equal(rank_gan_weights(REWARDS, GROUPS, math.inf), torch.ones(7))


def test_rank_gan_weights_select_each_groups_best_as_temperature_vanishes():
    w = rank_gan_weights(REWARDS, GROUPS, 1e-4)
    assert torch.allclose(w, torch.tensor([0.0, 3.0, 0.0, 0.0, 0.0, 4.0, 0.0]))


def test_rank_gan_weights_stay_finite_for_large_rewards_over_small_temperature():
    w = rank_gan_weights(torch.tensor([1000.0, 999.0]), torch.tensor([0, 0]), 1e-3)
    assert torch.isfinite(w).all() and torch.allclose(w.sum(), torch.tensor(2.0))


def test_rank_gan_weights_carry_no_gradient():
    rewards = REWARDS.clone().requires_grad_(True)
    assert not rank_gan_weights(rewards, GROUPS, 0.1).requires_grad


# ---------------------------------------------------------------------------------------------- Eq. 5
def test_reward_backprop_loss_is_minus_the_weighted_mean_reward():
    images = torch.rand(3, 3, 8, 8)
    loss = reward_backprop_loss(images, ["a"] * 3, [RedReward(), RedReward()], [0.5, 2.0])
    assert torch.allclose(loss, -2.5 * images[:, 0].mean())


def test_reward_backprop_loss_needs_a_reward():
    with pytest.raises(ValueError, match="differentiable reward"):
        reward_backprop_loss(torch.rand(1, 3, 8, 8), ["a"], [])


# ---------------------------------------------------------------------------------------------- Eq. 6
def test_generator_loss_weights_each_sample_by_its_rank_weight():
    logits = torch.randn(2, 1, 3, 3)
    loss = rank_gan_generator_loss(logits, torch.tensor([2.0, 0.0]))
    assert torch.allclose(loss, 2.0 * F.softplus(-logits[0]).mean() / 2)


def test_generator_hinge_loss_is_minus_the_weighted_logit():
    logits = torch.randn(2, 1, 3, 3)
    loss = rank_gan_generator_loss(logits, torch.tensor([1.5, 0.5]), kind="hinge")
    assert torch.allclose(loss, -(1.5 * logits[0].mean() + 0.5 * logits[1].mean()) / 2)


def test_generator_loss_gives_no_gradient_to_the_weights():
    weights = torch.ones(2, requires_grad=True)
    rank_gan_generator_loss(torch.randn(2, 1, 3, 3, requires_grad=True), weights).backward()
    assert weights.grad is None


def test_discriminator_loss_non_saturating():
    real, fake = torch.randn(2, 1, 3, 3), torch.randn(3, 1, 3, 3)
    expected = F.softplus(-real).mean() + F.softplus(fake).mean()
    assert torch.allclose(discriminator_loss(real, fake), expected)


def test_discriminator_loss_hinge():
    real, fake = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    expected = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    assert torch.allclose(discriminator_loss(real, fake, kind="hinge"), expected)


def test_unknown_gan_loss_is_rejected():
    with pytest.raises(ValueError, match="gan_loss"):
        discriminator_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), kind="wasserstein")


def test_patch_discriminator_returns_one_logit_per_patch():
    disc = PatchDiscriminator(channels=8, num_layers=2)
    assert disc(torch.rand(2, 3, 64, 64) * 2 - 1).shape == (2, 1, 14, 14)


# ---------------------------------------------------------------------------------------------- Eq. 7, 8
def test_reconstruction_loss_is_l1_plus_weighted_lpips():
    recon, target = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    fake_lpips = lambda x, y: (x - y).pow(2).mean(dim=(1, 2, 3), keepdim=True)  # noqa: E731
    loss = reconstruction_loss(recon, target, fake_lpips, lpips_weight=0.5)
    assert torch.allclose(loss, (recon - target).abs().mean() + 0.5 * (recon - target).pow(2).mean())


def test_reconstruction_loss_skips_lpips_at_zero_weight():
    def must_not_run(x, y):
        raise AssertionError("LPIPS ran with lambda_lpips=0")

    recon, target = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    assert torch.allclose(reconstruction_loss(recon, target, must_not_run, 0.0), (recon - target).abs().mean())


def test_consistency_loss_is_per_pixel_mean_squared_error():
    student, teacher = torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(2, 3, 8, 8, requires_grad=True)
    loss = consistency_loss(student, teacher)
    assert torch.allclose(loss, (student - teacher).pow(2).mean())
    loss.backward()
    assert student.grad is not None and teacher.grad is None  # the teacher is a constant


# ---------------------------------------------------------------------------------------------- LPIPS
def test_lpips_is_frozen_in_eval_mode_and_differentiable_in_its_input():
    lpips = build_lpips("alex", random_backbone=True)
    assert not lpips.training and not any(p.requires_grad for p in lpips.parameters())
    x = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    lpips(x, torch.rand(2, 3, 64, 64) * 2 - 1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_lpips_missing_weights_file_names_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match="lpips_weights_path"):
        build_lpips("alex", weights_path=str(tmp_path / "missing.pth"))


def test_lpips_loads_the_backbone_from_a_torchvision_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(1)
    backbone = torchvision.models.alexnet()  # random weights stand in for the ImageNet file
    path = tmp_path / "alexnet.pth"
    torch.save(backbone.state_dict(), path)
    lpips = build_lpips("alex", weights_path=str(path))
    # LPIPS's slices hold torchvision's `features[i]` as child "i".
    assert torch.equal(lpips.net.slice1.get_submodule("0").weight, backbone.features[0].weight)
    assert torch.equal(lpips.net.slice5.get_submodule("10").weight, backbone.features[10].weight)


def test_lpips_rejects_a_file_for_another_backbone(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="features"):
        build_lpips("alex", weights_path=str(path))


def test_unscored_rollouts_get_no_rank_gan_weight_and_their_group_renormalises():
    rewards = torch.tensor([1.0, float("nan"), -2.0, -3.0])  # the NaN row would otherwise top a negative group
    groups = torch.tensor([0, 0, 0, 0])
    w = rank_gan_weights(rewards, groups, 0.1)
    assert w[1] == 0 and torch.isclose(w.sum(), torch.tensor(3.0))
    torch.testing.assert_close(w[[0, 2, 3]], rank_gan_weights(rewards[[0, 2, 3]], groups[:3], 0.1))
    assert rank_gan_weights(rewards, groups, math.inf).tolist() == [1.0, 0.0, 1.0, 1.0]
