"""HPS v2 / v2.1 reward: open_clip's ViT-H-14 fine-tuned on human preferences (Wu et al., 2023).

The `hpsv2` package cannot be a runtime dependency (see shared/NOTES.md): it pins test tools, downloads 3.9 GB of
LAION weights it then overwrites, and scores through PIL without gradients. Its checkpoint, though, is a plain
open_clip state dict, so this module builds the architecture with open_clip and loads the checkpoint into it.

The score is what the reference `hpsv2.score` returns: the raw cosine similarity of the image and prompt embeddings
(about 0.2 to 0.3 for generated images; the RankE paper's Table 3 reports it on this scale, and benchmark tables
often multiply it by 100). RankE's Rank-GAN temperature applies to it unscaled.
"""

from __future__ import annotations

import os
import pickle

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from .clip import OpenClipReward, _default_tokenizer

HPS_HUB_REPO = "xswu/HPSv2"
HPS_CHECKPOINT_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}

# The reference pipeline: the long side to the model's size, zero padding to a square, OpenAI's mean and std.
HPS_PREPROCESS = {
    "resize_mode": "longest",
    "interpolation": "bicubic",
    "mean": OPENAI_DATASET_MEAN,
    "std": OPENAI_DATASET_STD,
}


def load_hps_state_dict(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The open_clip state dict inside an HPS checkpoint (`{"state_dict": {"module.<key>": tensor}}`).

    The `module.` prefixes that DDP training left are stripped. The file is read with
    `torch.load(weights_only=True)` unless `allow_pickle=True`: unpickling runs code, so only trusted files
    should get it.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"The HPS checkpoint {os.fspath(path)!r} holds Python objects that torch.load(weights_only=True) refuses "
            "to unpickle. If you trust the file, pass allow_pickle=True (unpickling can run arbitrary code).\n"
            f"torch said: {error}"
        ) from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f"Expected a state dict in {os.fspath(path)!r}, found a {type(checkpoint).__name__}.")
    state_dict = checkpoint.get("state_dict", checkpoint)
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def download_hps_checkpoint(version: str = "v2.1", cache_dir: str | os.PathLike | None = None) -> str:
    """Download (or find in the Hugging Face cache, `HF_HOME`) the HPS checkpoint of `version`; returns its path."""
    from huggingface_hub import hf_hub_download

    filename = HPS_CHECKPOINT_FILES[version]
    try:
        return hf_hub_download(HPS_HUB_REPO, filename, cache_dir=cache_dir)
    except Exception as error:  # offline, gated or missing: all need the same fix
        raise RuntimeError(
            f"Could not download {filename} from the Hub repository {HPS_HUB_REPO}: {error}\n"
            f"Without network access, fetch the file elsewhere and pass checkpoint='/path/{filename}'."
        ) from error


class HPSv2Reward(OpenClipReward):
    """HPS v2 / v2.1 score `(B,)`: the raw cosine similarity, in `[-1, 1]`, of an image and its prompt.

    Args:
        version: `"v2.0"` or `"v2.1"`; picks the Hub file when no checkpoint is given, and is recorded in
            `self.version` (state it to match a local `checkpoint`).
        checkpoint: a local HPS checkpoint file. `None` downloads `version` from `xswu/HPSv2`, unless `model` is given.
        model_name: the open_clip architecture the checkpoint belongs to (`"ViT-H-14"`).
        model: an open_clip model already built. `checkpoint`, if given, is loaded into it; otherwise its weights
            are used as they are.
        allow_pickle: let `torch.load` unpickle Python objects in the checkpoint (only for trusted files).
        cache_dir: the Hub cache, `HF_HOME`'s by default.
        tokenizer, device, dtype, batch_size: see `OpenClipReward`.
    """

    def __init__(
        self,
        version: str = "v2.1",
        checkpoint: str | os.PathLike | None = None,
        *,
        model_name: str = "ViT-H-14",
        model: torch.nn.Module | None = None,
        tokenizer=None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 32,
        allow_pickle: bool = False,
        cache_dir: str | os.PathLike | None = None,
    ):
        if version not in HPS_CHECKPOINT_FILES:
            raise ValueError(f"Unknown HPS version {version!r}; expected one of {sorted(HPS_CHECKPOINT_FILES)}.")
        if model is None:
            if checkpoint is None:  # fetched before building the ViT-H-14, so that being offline fails fast
                checkpoint = download_hps_checkpoint(version, cache_dir)
            # The checkpoint replaces every weight, so the architecture is built without pretrained ones.
            model = open_clip.create_model(model_name, pretrained=None)
        if checkpoint is not None:
            model.load_state_dict(load_hps_state_dict(checkpoint, allow_pickle=allow_pickle), strict=True)
        self.version, self.checkpoint = version, checkpoint
        super().__init__(
            model,
            tokenizer if tokenizer is not None else _default_tokenizer(model_name, model),
            name="hpsv2",
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            preprocess_overrides=HPS_PREPROCESS,
        )
