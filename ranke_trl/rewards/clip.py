"""CLIP-score reward on open_clip: the cosine similarity of image and text embeddings.

`OpenClipReward` holds what every open_clip-based reward shares (prompt handling, preprocessing, scoring, the TRL
call); `CLIPReward` loads a CLIP, and `HPSv2Reward` (`hps.py`) loads a CLIP fine-tuned on human preferences.

A reward is a plain callable, not an `nn.Module`: TRL's `GRPOTrainer` treats any `nn.Module` reward function as a
text sequence classifier. It holds its model instead, and carries a short `__name__`, which TRL uses to name the
reward's logged columns (`rewards/clip/mean`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from .preprocessing import clip_image_transform

_SCHEMAS = ("hf-hub:", "local-dir:")


def prompt_text(prompt: str | Sequence[dict[str, Any]]) -> str:
    """The text of a prompt, given as a string or as chat messages (`[{"role": "user", "content": ...}]`).

    For chat messages this is the last user message; its content may be a string or a list of parts, of which the
    `{"type": "text", "text": ...}` ones are joined with spaces. System messages are not part of what is drawn.
    """
    if isinstance(prompt, str):
        return prompt
    user_messages = [message for message in prompt if message.get("role") == "user"]
    if not user_messages:
        roles = [message.get("role") for message in prompt]
        raise ValueError(f"A chat prompt needs a message with role 'user'; got roles {roles}.")
    content = user_messages[-1]["content"]
    if isinstance(content, str):
        return content
    return " ".join(part["text"] for part in content if part.get("type") == "text")


def _stack_images(images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """A batch `(B, 3, H, W)` from a batch tensor or a list of `(3, H, W)` tensors of one size."""
    if isinstance(images, torch.Tensor):
        return images
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) != 1:
        raise ValueError(f"All images in a batch must have one shape (3, H, W); got {sorted(shapes)}.")
    return torch.stack(list(images))


class OpenClipReward:
    """Cosine similarity of an open_clip model's image and text embeddings, as a TRL reward function.

    Subclasses load the model; this class scores with it. Two entry points:
      - `reward(prompts=..., completions=..., **kwargs) -> list[float]`: TRL's call, without gradients.
      - `reward.score(images, prompts) -> Tensor (B,)`: differentiable with respect to the pixels, for reward
        back-propagation (METHOD.md, Eq. 5). The model's own parameters are frozen.

    Scores are raw cosine similarities in `[-1, 1]`, the scale on which RankE's Rank-GAN temperature `tau` is set.

    Args:
        model: an open_clip model (`CLIP` or `CustomTextCLIP`). It is put in eval mode and frozen.
        tokenizer: its open_clip tokenizer (a callable from a list of strings to token ids).
        name: the short name TRL logs the reward under.
        device, dtype: where to move the model; `None` keeps it where it is.
        batch_size: images scored per forward pass in the TRL call.
        preprocess_overrides: entries replacing the model's preprocess config (`mean`, `std`, `resize_mode`,
            `interpolation`), for rewards whose reference pipeline differs from the CLIP it is built on.
    """

    is_differentiable = True

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        name: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 32,
        preprocess_overrides: dict[str, Any] | None = None,
    ):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.__name__ = name
        self.batch_size = batch_size
        config = {**open_clip.get_model_preprocess_cfg(model), **(preprocess_overrides or {})}
        self.preprocess_config = {
            "image_size": model.visual.image_size,
            "mean": tuple(config.get("mean", OPENAI_DATASET_MEAN)),
            "std": tuple(config.get("std", OPENAI_DATASET_STD)),
            "resize_mode": config.get("resize_mode", "shortest"),
            "interpolation": config.get("interpolation", "bicubic"),
        }
        self.to(device=device, dtype=dtype)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> OpenClipReward:
        """Move the model (and so the scoring) to `device` and/or `dtype`; returns `self`."""
        self.model.to(device=device, dtype=dtype)
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """`(B, 3, H, W)` in `[0, 1]` -> the model's normalised input `(B, 3, S, S)`, on its device and dtype."""
        pixels = clip_image_transform(images.to(self.device), **self.preprocess_config)
        return pixels.to(self.dtype)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """`(B, 3, H, W)` in `[0, 1]` -> unit-norm image embeddings `(B, D)`, differentiable in the pixels."""
        return self.model.encode_image(self.preprocess(images), normalize=True)

    def encode_text(self, prompts: Sequence[str | Sequence[dict]]) -> torch.Tensor:
        """Prompts (strings or chat messages) -> unit-norm text embeddings `(B, D)`.

        Each distinct prompt is encoded once: GRPO repeats every prompt across its group of rollouts.
        """
        texts = [prompt_text(prompt) for prompt in prompts]
        unique = list(dict.fromkeys(texts))
        tokens = self.tokenizer(unique).to(self.device)
        features = self.model.encode_text(tokens, normalize=True)
        position = {text: i for i, text in enumerate(unique)}
        return features[torch.tensor([position[text] for text in texts], device=features.device)]

    def score(self, images: torch.Tensor, prompts: Sequence[str | Sequence[dict]]) -> torch.Tensor:
        """Cosine similarity `(B,)` in `[-1, 1]`, float32, of `images` `(B, 3, H, W)` in `[0, 1]` and `prompts`.

        Gradients flow to `images`; call it under `torch.no_grad()` when none are needed.
        """
        if len(prompts) != len(images):
            raise ValueError(f"Got {len(images)} images but {len(prompts)} prompts; pass one prompt per image.")
        image_features = self.encode_images(images)
        with torch.no_grad():  # the text side never needs gradients
            text_features = self.encode_text(prompts)
        # In float32: bf16 would round the cosine to ~0.002, coarse next to Rank-GAN's temperature of 0.1.
        return (image_features.float() * text_features.float()).sum(dim=-1)

    def __call__(self, prompts: Sequence, completions: Sequence[torch.Tensor], **kwargs) -> list[float]:
        """TRL's reward call: one score per completion, each a decoded image `(3, H, W)` in `[0, 1]`.

        Other keyword arguments TRL passes (`completion_ids`, `trainer_state`, `log_metric`, dataset columns, ...)
        are accepted and ignored.
        """
        if len(prompts) != len(completions):
            raise ValueError(f"Got {len(completions)} completions but {len(prompts)} prompts; expected one each.")
        rewards: list[float] = []
        with torch.no_grad():
            for start in range(0, len(completions), self.batch_size):
                images = _stack_images(completions[start : start + self.batch_size])
                rewards.extend(self.score(images, prompts[start : start + self.batch_size]).tolist())
        return rewards

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.__name__!r}, device={self.device}, dtype={self.dtype})"


def _default_tokenizer(model_name: str, model: torch.nn.Module):
    """open_clip's tokenizer for `model_name`, at the context length of `model`'s text tower."""
    context_length = open_clip.get_model_tokenize_cfg(model).get("context_length")
    return open_clip.get_tokenizer(model_name, context_length=context_length)


def _resolve_source(model_name: str, pretrained: str | None) -> tuple[str, str | None]:
    """`(model_name, pretrained)` as `open_clip.create_model` takes them, for any source `CLIPReward` accepts.

    A Hub id (`hf-hub:org/name`) or a folder (`local-dir:/path`, or a bare directory path) carries its own config,
    so it becomes the model name and `pretrained` is dropped; a tag or a weight file stays as `pretrained`.
    """
    if model_name.startswith(_SCHEMAS):
        return model_name, None
    if pretrained is not None and pretrained.startswith(_SCHEMAS):
        return pretrained, None
    if pretrained is not None and os.path.isdir(pretrained):
        return f"local-dir:{pretrained}", None
    return model_name, pretrained


class CLIPReward(OpenClipReward):
    """CLIP score: the cosine similarity `(B,)` in `[-1, 1]` of a CLIP's image and prompt embeddings.

    Args:
        model_name: an open_clip architecture (`"ViT-L-14"`), or a source with its own config (`"hf-hub:org/name"`,
            `"local-dir:/path"`).
        pretrained: an open_clip pretrained tag (`"openai"`, `"laion2b_s32b_b82k"`), a Hub id (`"hf-hub:org/name"`),
            a local weight file (`.safetensors`, `.bin`, `.pt`) or a local open_clip folder (`"local-dir:/path"`).
        model: an open_clip model already built; skips loading (`model_name` then only picks the tokenizer).
        tokenizer: overrides open_clip's tokenizer for `model_name`.
        force_quick_gelu: OpenAI's weights were trained with QuickGELU and give silently wrong embeddings without
            it. `None` turns it on for pretrained tags that need it (`"openai"`); set it yourself for OpenAI
            weights loaded from a file.
        device, dtype, batch_size: see `OpenClipReward`.
    """

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | None = "openai",
        *,
        model: torch.nn.Module | None = None,
        tokenizer=None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 32,
        force_quick_gelu: bool | None = None,
    ):
        source, pretrained = _resolve_source(model_name, pretrained)
        if model is None:
            if force_quick_gelu is None:
                tag_config = open_clip.get_pretrained_cfg(source, pretrained) if pretrained else {}
                force_quick_gelu = pretrained == "openai" or bool(tag_config.get("quick_gelu", False))
            try:
                model = open_clip.create_model(source, pretrained=pretrained, force_quick_gelu=force_quick_gelu)
            except (RuntimeError, OSError) as error:
                raise RuntimeError(
                    f"Could not load CLIP {source!r} with pretrained={pretrained!r}: {error}\n"
                    "Without network access, pass a local weight file (pretrained='/path/model.safetensors') "
                    "or an open_clip folder (pretrained='local-dir:/path')."
                ) from error
        self.model_name, self.pretrained = source, pretrained
        super().__init__(
            model,
            tokenizer if tokenizer is not None else _default_tokenizer(source, model),
            name="clip",
            device=device,
            dtype=dtype,
            batch_size=batch_size,
        )

    @classmethod
    def tiny(cls, seed: int = 0, **kwargs) -> CLIPReward:
        """A CLIP reward on `ranke_trl.tiny.build_tiny_clip(seed)` (random weights, 64 px), for tests and smoke runs."""
        from ranke_trl.tiny import build_tiny_clip

        model = build_tiny_clip(seed=seed)
        tokenizer = open_clip.SimpleTokenizer(context_length=model.context_length)
        return cls(model_name="tiny-clip", pretrained=None, model=model, tokenizer=tokenizer, **kwargs)
