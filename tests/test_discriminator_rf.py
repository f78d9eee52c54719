"""The PatchGAN's receptive field: what `receptive_field` computes from the layers is the window a logit's gradient
actually reaches, and the decoder phase says at start-up how much of the image that is."""

import copy
import logging

import pytest
import torch
from torch import nn

from ranke_trl.config import RankEConfig
from ranke_trl.decoder import DecoderPhase, PatchDiscriminator
from ranke_trl.decoder.discriminator import receptive_field
from ranke_trl.policy.janus import JanusVQCodec


def _gradient_support(net: nn.Module, side: int, index: int) -> torch.Tensor:
    """(side, side) bool: the input pixels on which logit (index, index) has a non-zero gradient."""
    net = net.double()
    pixels = (torch.rand(1, 3, side, side, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    net(pixels)[0, 0, index, index].backward()
    return pixels.grad.abs().sum(dim=(0, 1)) > 0


def _without_norms(disc: PatchDiscriminator) -> nn.Module:
    """The discriminator's convolutions and activations alone (its GroupNorms replaced by identities)."""
    net = copy.deepcopy(disc.net)
    for i, layer in enumerate(net):
        if isinstance(layer, nn.GroupNorm):
            net[i] = nn.Identity()
    return net


@pytest.mark.parametrize(("num_layers", "side", "size"), [(1, 64, 16), (2, 64, 34), (3, 128, 70)])
def test_receptive_field_is_the_window_a_logit_gradient_reaches(num_layers, side, size):
    disc = PatchDiscriminator(3, 8, num_layers)
    field = disc.receptive_field
    assert field.size == size
    index = disc(torch.zeros(1, 3, side, side)).shape[-1] // 2  # an inner logit: its window is not clipped
    window = field.window(index, side)
    assert len(window) == size
    expected = torch.zeros(side, side, dtype=torch.bool)
    expected[window.start : window.stop, window.start : window.stop] = True
    assert torch.equal(_gradient_support(_without_norms(disc), side, index), expected)


def test_a_logit_at_the_border_sees_a_window_clipped_to_the_image():
    disc = PatchDiscriminator(3, 8, 1)
    window = disc.receptive_field.window(0, 64)
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[window.start : window.stop, window.start : window.stop] = True
    assert window.start == 0 and len(window) < 16
    assert torch.equal(_gradient_support(_without_norms(disc), 64, 0), expected)


def test_group_norm_statistics_reach_beyond_the_window():
    # Documented limit of `receptive_field`: each logit's features come from its window, but GroupNorm normalises
    # them with statistics of the whole image, so the gradient is non-zero (if small) everywhere.
    disc = PatchDiscriminator(3, 8, 1)
    assert _gradient_support(disc.net, 64, 15).all()


def test_receptive_field_counts_dilation_and_every_stride():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, dilation=2, padding=2),
                        nn.Conv2d(4, 4, 4, stride=2, padding=1), nn.Conv2d(4, 1, 3, padding=1))
    field = receptive_field(net)
    assert (field.size, field.stride, field.padding) == (14, 2, 6)
    index = net(torch.zeros(1, 3, 32, 32)).shape[-1] // 2
    window = field.window(index, 32)
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[window.start : window.stop, window.start : window.stop] = True
    assert torch.equal(_gradient_support(net, 32, index), expected)


@pytest.fixture(scope="module")
def vq():
    from ranke_trl.tiny import build_tiny_janus

    return build_tiny_janus(seed=0).model.vqmodel


def _phase(tmp_path, vq, layers):
    args = RankEConfig(output_dir=str(tmp_path), bf16=False, report_to="none", lambda_rbp=0.0, lambda_gan=0.1,
                       lambda_rec=0.0, lambda_cons=0.0, lambda_lpips=0.0, discriminator_channels=8,
                       discriminator_layers=layers)
    return DecoderPhase(JanusVQCodec(copy.deepcopy(vq)), args, reward_fns=[])


def test_start_up_states_the_receptive_field_as_a_share_of_the_image(tmp_path, vq, caplog):
    with caplog.at_level(logging.INFO, logger="ranke_trl.decoder.phase"):
        _phase(tmp_path, vq, layers=1)
    assert "each logit sees 16 px, 25% of the 64 px image side" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_receptive_field_covering_the_whole_image_is_warned_about_with_the_fix(tmp_path, vq, caplog):
    with caplog.at_level(logging.INFO, logger="ranke_trl.decoder.phase"):
        _phase(tmp_path, vq, layers=3)  # the default: 70 px over a 64 px image
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "covers the whole 64 px image" in warnings[0]
    assert "set discriminator_layers to 2 (34 px, 53%) or 1 (16 px, 25%)" in warnings[0]
