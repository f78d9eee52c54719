"""Image-token policy adapters: one small interface (`ImageTokenPolicy`, `VQCodec`) and one adapter per backbone."""

from __future__ import annotations

import os

import torch

from .base import ImageCodeLogProbs, ImageTokenPolicy, PromptBatch, VQCodec, warp_logits
from .janus import JanusPolicy, JanusVQCodec

SUPPORTED_BACKBONES = {"JanusForConditionalGeneration": JanusPolicy}


def _unwrapped_class_name(model) -> str:
    from .janus import _unwrap

    return type(_unwrap(model)).__name__


def make_policy(model, tokenizer, prompt_template: str | None = None) -> ImageTokenPolicy:
    """The adapter for `model`'s backbone. Raises a clear error for an unsupported model class."""
    name = _unwrapped_class_name(model)
    if name not in SUPPORTED_BACKBONES:
        raise TypeError(
            f"No RankE policy adapter for {name}. Supported backbones: {sorted(SUPPORTED_BACKBONES)}. A new backbone "
            "needs an `ImageTokenPolicy` adapter (see ranke_trl/policy/base.py)."
        )
    kwargs = {"prompt_template": prompt_template} if prompt_template else {}
    return SUPPORTED_BACKBONES[name](tokenizer, model, **kwargs)


def _resolve_dtype(dtype):
    if dtype in (None, "auto") or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"Unknown dtype {dtype!r} in model_init_kwargs; use 'float32', 'bfloat16', 'float16' or 'auto'.")
    return getattr(torch, dtype)


def load_policy_model(name_or_path: str, args, processing_class=None):
    """Load a Janus policy (and, if not given, its processor) from a Hub id or a local directory.

    Honours `args.model_init_kwargs` (dtype, revision, attn_implementation, ...) and `args.trust_remote_code`
    (off by default). A local LoRA output directory (`adapter_config.json`, as RankE saves with `use_peft`) loads as
    its base model with the adapter merged and the co-evolved VQ from its `decoder/`. Returns
    `(model, processing_class)`.
    """
    from transformers import AutoConfig, AutoProcessor, JanusForConditionalGeneration

    if os.path.isfile(os.path.join(name_or_path, "adapter_config.json")):
        return _load_lora_output(name_or_path, args, processing_class)
    kwargs = dict(args.model_init_kwargs or {})
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    kwargs["dtype"] = _resolve_dtype(kwargs.get("dtype", "float32"))
    config = AutoConfig.from_pretrained(
        name_or_path, revision=kwargs.get("revision"), trust_remote_code=kwargs["trust_remote_code"]
    )
    if config.model_type != "janus":
        raise TypeError(
            f"{name_or_path!r} is a {config.model_type!r} model; RankE currently supports Janus "
            "(model_type 'janus', e.g. deepseek-community/Janus-Pro-1B)."
        )
    model = JanusForConditionalGeneration.from_pretrained(name_or_path, **kwargs)
    if processing_class is None:
        processing_class = AutoProcessor.from_pretrained(
            name_or_path, revision=kwargs.get("revision"), trust_remote_code=kwargs["trust_remote_code"]
        )
    return model, processing_class


def _load_lora_output(path: str, args, processing_class=None):
    """A RankE LoRA output directory as one merged model: base + adapter (merged), VQ from `path/decoder`."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoProcessor, JanusVQVAE

    base = PeftConfig.from_pretrained(path).base_model_name_or_path
    if not base:
        raise ValueError(
            f"{path}/adapter_config.json names no base model (base_model_name_or_path), which happens when the "
            "policy was built in memory. Set it to the base model's Hub id or directory, or merge the adapter "
            "yourself (README, LoRA)."
        )
    if processing_class is None and os.path.isfile(os.path.join(path, "processor_config.json")):
        processing_class = AutoProcessor.from_pretrained(path)
    model, processing_class = load_policy_model(base, args, processing_class)
    model = PeftModel.from_pretrained(model, path).merge_and_unload()
    decoder = os.path.join(path, "decoder")
    if os.path.isdir(decoder):
        model.model.vqmodel = JanusVQVAE.from_pretrained(decoder, dtype=model.dtype)
    return model, processing_class


__all__ = [
    "ImageCodeLogProbs",
    "ImageTokenPolicy",
    "JanusPolicy",
    "JanusVQCodec",
    "PromptBatch",
    "VQCodec",
    "load_policy_model",
    "make_policy",
    "warp_logits",
]
