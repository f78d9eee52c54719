"""FID through torchmetrics with a pluggable feature extractor and reusable reference statistics.

A random-weight Inception gives FID ≈ 0 for any inputs and tests nothing, so these tests use a tiny fixed
projection of downsampled pixels, whose features move with the pixels.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ranke_trl.evaluation.fid import FIDMetric, frechet_distance


class PixelProjection(nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B, 16): 8x8 average pooling, then a fixed random projection."""

    num_features = 16

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(3 * 8 * 8, self.num_features, generator=generator))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images, 8).flatten(1) @ self.projection


def images(seed: int, shift: float = 0.0, n: int = 128) -> torch.Tensor:
    """(n, 3, 16, 16) noise in [shift, 0.5 + shift]."""
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 0.5 + shift


def fid_between(real: torch.Tensor, fake: torch.Tensor) -> float:
    metric = FIDMetric(feature_extractor=PixelProjection())
    metric.update_real(real)
    metric.update_fake(fake)
    return metric.compute()


def test_frechet_distance_matches_the_closed_form_in_one_dimension():
    # (0 - 2)² + 1 + 4 - 2·sqrt(1·4) = 5.
    value = frechet_distance(torch.zeros(1), torch.ones(1, 1), torch.full((1,), 2.0), torch.full((1, 1), 4.0))
    assert value == pytest.approx(5.0)


def test_fid_of_identical_image_sets_is_zero():
    assert fid_between(images(0), images(0)) == pytest.approx(0.0, abs=1e-3)


def test_fid_grows_with_the_shift_between_real_and_generated_images():
    real = images(0)
    fids = [fid_between(real, images(1, shift)) for shift in (0.1, 0.2, 0.4)]
    assert fid_between(real, images(1)) < fids[0] < fids[1] < fids[2]


def test_saved_reference_statistics_give_the_same_fid(tmp_path):
    metric = FIDMetric(feature_extractor=PixelProjection())
    metric.update_real(images(0))
    metric.update_fake(images(1, 0.1))
    expected = metric.compute()
    metric.save_reference(tmp_path / "real.safetensors")

    reused = FIDMetric(feature_extractor=PixelProjection())
    reused.load_reference(tmp_path / "real.safetensors")
    reused.update_fake(images(1, 0.1))
    assert reused.compute() == pytest.approx(expected, rel=1e-4)
    assert reused.num_real == 128


def test_reset_fake_keeps_the_real_statistics():
    metric = FIDMetric(feature_extractor=PixelProjection())
    metric.update_real(images(0))
    metric.update_fake(images(1, 0.4))
    metric.reset_fake()
    metric.update_fake(images(0))
    assert (metric.num_real, metric.num_fake) == (128, 128)
    assert metric.compute() == pytest.approx(0.0, abs=1e-3)


def test_loading_a_reference_from_another_extractor_is_an_error(tmp_path):
    class OtherProjection(PixelProjection):
        pass

    metric = FIDMetric(feature_extractor=PixelProjection())
    metric.update_real(images(0))
    metric.save_reference(tmp_path / "real.safetensors")
    with pytest.raises(ValueError, match="mismatched feature extractors"):
        FIDMetric(feature_extractor=OtherProjection()).load_reference(tmp_path / "real.safetensors")


def test_images_outside_zero_one_are_rejected():
    metric = FIDMetric(feature_extractor=PixelProjection())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric.update_fake(images(0) * 2 - 1)


def test_a_missing_inception_weight_file_is_reported_by_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        FIDMetric(weights_path=tmp_path / "missing.pth")


def test_extractor_without_num_features_is_rejected():
    with pytest.raises(TypeError, match="num_features"):
        FIDMetric(feature_extractor=nn.Flatten())


def test_description_states_extractor_dimension_and_image_counts():
    metric = FIDMetric(feature_extractor=PixelProjection())
    metric.update_real(images(0, n=4))
    metric.update_fake(images(1, n=3))
    assert metric.description == {
        "feature_extractor": "PixelProjection",
        "feature_dim": 16,
        "resize": "done by the feature extractor",
        "input": "RGB float in [0, 1]",
        "num_real_images": 4,
        "num_fake_images": 3,
    }
