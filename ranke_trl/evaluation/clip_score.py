"""The evaluation CLIP score (METHOD.md, Evaluation protocol): `100 * max(cos, 0)` averaged over images.

This is the CLIPScore convention (Hessel et al., 2021, with w = 100) that MS-COCO 30K tables report. It reuses a
`CLIPReward`'s model and preprocessing, so training rewards and evaluation scores come from one implementation.
torchmetrics' `CLIPScore` is not used because it only wraps transformers' `CLIPModel`, not open_clip models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ranke_trl.rewards import CLIPReward


def clip_score_from_cosine(cosine: torch.Tensor) -> torch.Tensor:
    """Per-image CLIP score `100 * max(cos, 0)` in `[0, 100]` from cosine similarities in `[-1, 1]`."""
    return 100.0 * cosine.clamp(min=0.0)


class CLIPScoreMetric:
    """Streaming CLIP score over any number of `update` calls.

    Args:
        reward: the `CLIPReward` whose model and preprocessing score the images (e.g. ViT-L-14 `openai`).

    `compute()` returns the mean score in `[0, 100]`; `num_images` counts the images it averages over. Under
    several processes, sum `score_sum` and `num_images` across ranks before dividing.
    """

    def __init__(self, reward: CLIPReward):
        self.reward = reward
        self.reset()

    def reset(self) -> None:
        """Forget every image added so far."""
        self.score_sum = 0.0
        self.num_images = 0

    @torch.no_grad()
    def update(self, images01: torch.Tensor, prompts: Sequence[str]) -> None:
        """Add images `(B, 3, H, W)` float in `[0, 1]`, each with its prompt (scored in the reward's batch size)."""
        if len(prompts) != len(images01):
            raise ValueError(f"Got {len(images01)} images but {len(prompts)} prompts; pass one prompt per image.")
        step = self.reward.batch_size
        for start in range(0, len(images01), step):
            cosine = self.reward.score(images01[start : start + step], prompts[start : start + step])
            self.score_sum += float(clip_score_from_cosine(cosine).double().sum())
        self.num_images += len(images01)

    def compute(self) -> float:
        """The mean CLIP score in `[0, 100]` of all images added so far."""
        if self.num_images == 0:
            raise RuntimeError("No images to score; call update(images01, prompts) first.")
        return self.score_sum / self.num_images

    @property
    def description(self) -> dict:
        """What was measured, for the `meta` of evaluation results."""
        return {
            "model": self.reward.model_name,
            "pretrained": self.reward.pretrained,
            "formula": "100 * max(cos, 0), mean over images",
            "preprocess": dict(self.reward.preprocess_config),
            "num_images": self.num_images,
        }
