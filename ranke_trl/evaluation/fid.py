"""FID on top of torchmetrics' `FrechetInceptionDistance`, with reusable reference statistics.

The default is the standard protocol (METHOD.md, Evaluation protocol): Inception-v3 pool features (2048-d) with
the TF1-compatible bilinear resize to 299x299 (`antialias=False`), from the torch-fidelity weight file
`pt_inception-2015-12-05-6726825d.pth` given as `weights_path`, or from torchmetrics' standard download when
`weights_path` is None. That path needs the `torch-fidelity` package.

Any other feature network plugs in as `feature_extractor`: an `nn.Module` mapping (B, 3, H, W) images in [0, 1]
to (B, D) features, with a `num_features` attribute (D). It handles its own resizing. Tests use a tiny fixed
projection; ShapesFID passes a small attribute classifier.

Real-image statistics (mean, covariance, count) are saved once with `save_reference` and reloaded for every run,
so all runs are compared against the same reference.
"""

from __future__ import annotations

import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

# torchmetrics keeps its Fréchet distance private; reusing it keeps one implementation of the formula.
from torchmetrics.image.fid import _compute_fid

_REFERENCE_FORMAT = "ranke_trl.FIDReference"
INCEPTION_NAME = "inception-v3-compat pool3 (torch-fidelity weights)"
INCEPTION_RESIZE = "TF1-compatible bilinear to 299x299, antialias=False"


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet distance `‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½)` between two Gaussians.

    `mu1`, `mu2`: (D,); `sigma1`, `sigma2`: (D, D) covariances. Computed in float64. Returns a float >= ~0.
    """
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(
            f"Expected means (D,) and covariances (D, D) of one dimension D, got {tuple(mu1.shape)}, "
            f"{tuple(sigma1.shape)}, {tuple(mu2.shape)}, {tuple(sigma2.shape)}."
        )
    return float(_compute_fid(mu1.double(), sigma1.double(), mu2.double(), sigma2.double()))


def _check_images01(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.size(1) != 3:
        raise ValueError(f"FID expects images of shape (B, 3, H, W), got {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise TypeError(f"FID expects float images in [0, 1], got dtype {images.dtype}; divide uint8 images by 255.")
    low, high = float(images.min()), float(images.max())
    if low < -1e-4 or high > 1 + 1e-4:
        raise ValueError(
            f"FID expects images in [0, 1], got values in [{low:.3f}, {high:.3f}]; map decoder outputs in "
            "[-1, 1] with (x + 1) / 2 and clamp."
        )


class FIDMetric:
    """Fréchet distance between real and generated image features.

    Args:
        feature_extractor: module mapping (B, 3, H, W) in [0, 1] to (B, D), with an int `num_features` attribute;
            None for the standard 2048-d Inception-v3 features.
        weights_path: local torch-fidelity Inception weight file (only without `feature_extractor`); None lets
            torchmetrics download it.
        device: where features are computed; defaults to the CPU.

    Images given to `update_real` / `update_fake` are float (B, 3, H, W) in [0, 1].
    """

    def __init__(
        self,
        feature_extractor: nn.Module | None = None,
        weights_path: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
    ):
        if feature_extractor is not None and weights_path is not None:
            raise ValueError("Pass either feature_extractor or weights_path (for the Inception network), not both.")
        if weights_path is not None and not os.path.isfile(weights_path):
            raise FileNotFoundError(
                f"No Inception weight file at {weights_path}; expected torch-fidelity's "
                "pt_inception-2015-12-05-6726825d.pth."
            )
        if feature_extractor is None:
            try:
                self.metric = FrechetInceptionDistance(
                    feature=2048,
                    feature_extractor_weights_path=None if weights_path is None else str(weights_path),
                    antialias=False,
                    normalize=True,
                    reset_real_features=False,
                )
            except ModuleNotFoundError as error:
                raise ModuleNotFoundError(
                    "The standard Inception FID needs torch-fidelity: `pip install torch-fidelity`."
                ) from error
            self.extractor_name, self.resize = INCEPTION_NAME, INCEPTION_RESIZE
        else:
            if not isinstance(getattr(feature_extractor, "num_features", None), int):
                raise TypeError(
                    f"{type(feature_extractor).__name__} needs an int `num_features` attribute (its feature dim)."
                )
            feature_extractor.eval()  # FID features must not depend on dropout or batch statistics
            # With a custom module torchmetrics passes the [0, 1] floats through unchanged (normalize=True).
            self.metric = FrechetInceptionDistance(
                feature=feature_extractor, normalize=True, reset_real_features=False
            )
            self.extractor_name = getattr(feature_extractor, "name", type(feature_extractor).__name__)
            self.resize = "done by the feature extractor"
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.metric.to(self.device)
        self.feature_dim = int(self.metric.real_features_sum.numel())

    def update_real(self, images01: torch.Tensor) -> None:
        """Add real images, float (B, 3, H, W) in [0, 1]."""
        _check_images01(images01)
        self.metric.update(images01.to(self.device), real=True)

    def update_fake(self, images01: torch.Tensor) -> None:
        """Add generated images, float (B, 3, H, W) in [0, 1]."""
        _check_images01(images01)
        self.metric.update(images01.to(self.device), real=False)

    @property
    def num_real(self) -> int:
        return int(self.metric.real_features_num_samples)

    @property
    def num_fake(self) -> int:
        return int(self.metric.fake_features_num_samples)

    def compute(self) -> float:
        """FID between all real and generated images added so far; each side needs at least 2 images."""
        if self.num_real < 2 or self.num_fake < 2:
            raise RuntimeError(
                f"FID needs at least 2 real and 2 generated images, got {self.num_real} real and "
                f"{self.num_fake} generated; add images or load_reference() first."
            )
        return float(self.metric.compute())

    def reset_fake(self) -> None:
        """Forget the generated images and keep the real statistics, to score another run."""
        self.metric.reset()

    @property
    def description(self) -> dict:
        """What was measured, for the `meta` of evaluation results."""
        return {
            "feature_extractor": self.extractor_name,
            "feature_dim": self.feature_dim,
            "resize": self.resize,
            "input": "RGB float in [0, 1]",
            "num_real_images": self.num_real,
            "num_fake_images": self.num_fake,
        }

    def real_statistics(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Mean (D,) and unbiased covariance (D, D), in float64 on the CPU, and the count of the real features."""
        n = self.num_real
        if n < 2:
            raise RuntimeError(f"Real statistics need at least 2 real images, got {n}.")
        total = self.metric.real_features_sum.detach().double().cpu()
        outer = self.metric.real_features_cov_sum.detach().double().cpu()
        mean = total / n
        cov = (outer - n * torch.outer(mean, mean)) / (n - 1)
        return mean, cov, n

    def save_reference(self, path: str | os.PathLike) -> None:
        """Save the real statistics (mean, covariance, count) and the extractor they were measured with."""
        mean, cov, n = self.real_statistics()
        metadata = {
            "format": _REFERENCE_FORMAT,
            "feature_extractor": self.extractor_name,
            "feature_dim": str(self.feature_dim),
            "resize": self.resize,
        }
        tensors = {"mean": mean, "cov": cov.contiguous(), "num_samples": torch.tensor(n, dtype=torch.long)}
        save_file(tensors, str(path), metadata=metadata)

    def load_reference(self, path: str | os.PathLike) -> None:
        """Replace the real statistics by those saved with `save_reference` from the same feature extractor."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No FID reference statistics at {path}; create them with save_reference().")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != _REFERENCE_FORMAT:
                raise ValueError(f"{path} is not an FID reference file (expected format {_REFERENCE_FORMAT!r}).")
            mean, cov = handle.get_tensor("mean").double(), handle.get_tensor("cov").double()
            n = int(handle.get_tensor("num_samples"))
        stored = (metadata["feature_extractor"], int(metadata["feature_dim"]), metadata["resize"])
        if stored != (self.extractor_name, self.feature_dim, self.resize):
            raise ValueError(
                f"mismatched feature extractors: {path} holds {stored[0]} features (dim {stored[1]}, resize "
                f"{stored[2]!r}), this metric uses {self.extractor_name} (dim {self.feature_dim}, resize "
                f"{self.resize!r}). Recompute the reference with this extractor."
            )
        # torchmetrics keeps sums, not moments: invert mean = Σx / n and cov = (Σxxᵀ − n μμᵀ) / (n − 1).
        device = self.metric.real_features_sum.device
        self.metric.real_features_sum = (mean * n).to(device)
        self.metric.real_features_cov_sum = (cov * (n - 1) + n * torch.outer(mean, mean)).to(device)
        self.metric.real_features_num_samples = torch.tensor(n, dtype=torch.long, device=device)
        self.metric._computed = None  # the states changed outside update(), so drop torchmetrics' cached result
