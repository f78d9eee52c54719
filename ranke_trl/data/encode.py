"""The encode stage: ground-truth codes `z_gt = Q(E(x))` of each curated image, stored beside it.

The codes come from the chosen backbone's frozen VQ encoder through the adapter interface (`ranke_trl.policy`'s
backbone registry and `VQCodec.encode`, the tokenizer's own nearest-code lookup), so Janus-Pro (576 codes at 384 px)
and LlamaGen (256 codes at 256 px, 1024 at 512 px) are curated the same way. The trainer's shift diagnostics and
L_rec, and image-token SFT, read them from the `gt_codes` column (`ranke_trl.corpus.stored_codes`) instead of
encoding again.
"""

from __future__ import annotations

import torch
from datasets import Dataset, Sequence, Value

from ..corpus import CorpusImages, encode_corpus
from ..policy.base import VQCodec

GT_CODES_FEATURE = Sequence(Value("int32"))


def load_codec(
    name_or_path: str,
    revision: str | None = None,
    backbone: str | None = None,
    device: str | torch.device | None = None,
) -> tuple[VQCodec, str]:
    """`(codec, model_type)`: the VQ tokenizer of a registered backbone, in fp32 and eval mode.

    `name_or_path` is a model checkpoint (Hub id or directory; its `config.model_type` picks the adapter, the model
    is loaded and all but its VQ dropped) or, with `backbone` (a model type such as "janus" or "llamagen"), a
    standalone VQ directory written by `VQCodec.save_pretrained` (e.g. a RankE run's `decoder/`).
    """
    from ..policy import BACKBONES, backbone_for_checkpoint, make_policy

    if backbone is not None:
        if backbone not in BACKBONES:
            raise ValueError(f"codec_backbone={backbone!r}; registered backbones: {sorted(BACKBONES)}.")
        codec = BACKBONES[backbone].load_codec(name_or_path, revision=revision, dtype=torch.float32)
        model_type = backbone
    else:
        policy_cls = backbone_for_checkpoint(name_or_path, revision)
        model, processor = policy_cls.load_model(name_or_path, revision=revision, dtype=torch.float32)
        codec, model_type = make_policy(model, processor).codec(model), policy_cls.model_type
        del model  # only the VQ is kept
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    codec.module.to(device).eval()
    return codec, model_type


def codec_record(codec: VQCodec, name_or_path: str, model_type: str, revision: str | None = None) -> dict:
    """What the manifest and card say about the codes."""
    return {"model": name_or_path, "revision": revision, "model_type": model_type, "image_size": codec.image_size,
            "num_tokens": codec.num_tokens, "codebook_size": codec.codebook_size}


def add_gt_codes(
    dataset: Dataset, codec: VQCodec, image_column: str = "image", batch_size: int = 32, show_progress: bool = True
) -> Dataset:
    """`dataset` with a `gt_codes` column: `codec.encode` of each image, (N,) int32 codes in [0, K).

    Images must already be `codec.image_size` square (the ingest stage made them so); they are read in batches.
    """
    device = next(codec.module.parameters()).device
    corpus = CorpusImages(dataset, image_column, codec.image_size)
    codes = encode_corpus(corpus, codec, batch_size=batch_size, device=device, show_progress=show_progress)
    if "gt_codes" in dataset.column_names:
        dataset = dataset.remove_columns("gt_codes")
    return dataset.add_column("gt_codes", codes.to(torch.int32).numpy().tolist(), feature=GT_CODES_FEATURE)


__all__ = ["GT_CODES_FEATURE", "add_gt_codes", "codec_record", "load_codec"]
