"""ShapesWorld's CLIP: an open_clip `CLIP` trained contrastively on (image, caption) pairs of the world.

It is the differentiable `shapes_clip` reward; `prepare_shapes_world` trains and saves it as an open_clip model
folder that `CLIPReward("local-dir:<folder>", pretrained=None)` loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ranke_trl.rewards.preprocessing import clip_image_transform
from ranke_trl.tiny import tiny_clip_config

def shapes_clip_config(embed_dim: int = 64) -> dict:
    """`tiny_clip_config` at 64 px with a finer, deeper image tower: 8 px patches (an 8x8 grid, so a 14 px shape
    covers whole patches) and 4 layers, which binding colours to kinds and reading positions need; captions are
    short, so the text context is 32 tokens."""
    config = tiny_clip_config(embed_dim=embed_dim, image_size=64, context_length=32)
    config["vision_cfg"].update(patch_size=8, layers=4)
    return config


def _clip_inputs(model, images01: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> the CLIP's input, by the reward's own differentiable preprocessing."""
    cfg = open_clip.get_model_preprocess_cfg(model)  # read as `OpenClipReward` reads it, so both see the same input
    return clip_image_transform(
        images01,
        model.visual.image_size,
        cfg.get("mean", OPENAI_DATASET_MEAN),
        cfg.get("std", OPENAI_DATASET_STD),
        cfg.get("resize_mode", "shortest"),
        cfg.get("interpolation", "bicubic"),
    )


def train_shapes_clip(
    images, captions, config, steps, batch_size, learning_rate, seed=0, show_progress=True, desc="CLIP: training"
):
    """Train an `open_clip.CLIP(**config)` on uint8 images (M, 3, H, W) and their M captions.

    The loss is CLIP's symmetric InfoNCE over each batch's *distinct* captions: a world has a few hundred captions,
    so a batch often holds one caption twice, and plain InfoNCE would push an image away from its own caption.
    Image to text is a cross-entropy over the distinct captions; text to image spreads each caption's target evenly
    over its images. Returns the model (eval mode, frozen) and a log of the final loss.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = open_clip.CLIP(**config).train()
    distinct = sorted(set(captions))
    position = {caption: i for i, caption in enumerate(distinct)}
    caption_ids = torch.tensor([position[caption] for caption in captions])
    tokens = open_clip.SimpleTokenizer(context_length=config["text_cfg"]["context_length"])(distinct)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.1, betas=(0.9, 0.98))
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    losses = []
    for _ in tqdm(range(steps), desc=desc, disable=not show_progress):
        index = torch.randint(len(images), (batch_size,), generator=generator)
        in_batch, target = caption_ids[index].unique(return_inverse=True)
        image_features = model.encode_image(_clip_inputs(model, images[index].float() / 255), normalize=True)
        text_features = model.encode_text(tokens[in_batch], normalize=True)
        logits = model.logit_scale.exp() * image_features @ text_features.T  # (B, distinct captions in batch)
        to_text = torch.nn.functional.cross_entropy(logits, target)
        owners = torch.nn.functional.one_hot(target, len(in_batch)).float().T  # (captions, B)
        to_image = -(owners / owners.sum(1, keepdim=True) * logits.T.log_softmax(-1)).sum(1).mean()
        loss = (to_text + to_image) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():  # CLIP's clamp of the temperature at 100
            model.logit_scale.clamp_(0, np.log(100))
        losses.append(loss.item())
    return model.eval().requires_grad_(False), {"final_loss": float(np.mean(losses[-max(1, steps // 20) :]))}


@torch.no_grad()
def clip_retrieval_accuracy(model, images01: torch.Tensor, captions: list[str]) -> float:
    """Image-to-text top-1 accuracy among the distinct `captions`; chance is 1 / (number of distinct captions)."""
    distinct = sorted(set(captions))
    tokens = open_clip.SimpleTokenizer(context_length=model.context_length)(distinct)
    text = model.encode_text(tokens, normalize=True)
    image = torch.cat([model.encode_image(_clip_inputs(model, chunk), normalize=True) for chunk in images01.split(128)])
    predicted = (image @ text.T).argmax(-1)
    return float(np.mean([distinct[i] == c for i, c in zip(predicted.tolist(), captions)]))


def save_open_clip(model, config: dict, folder: Path) -> None:
    """Save as an open_clip model folder (`open_clip_config.json` + safetensors), loadable as `local-dir:<folder>`."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    preprocess = {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD)}  # what training normalised with
    config_file = {"model_cfg": config, "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config_file, indent=2))
