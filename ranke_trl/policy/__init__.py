"""Image-token policy adapters: one small interface (`ImageTokenPolicy`, `VQCodec`) and one adapter per backbone.

Backbones are registered by their adapter class (`register_backbone`). The trainer, SFT and evaluation pick the
adapter from the model object (`make_policy`) or from a checkpoint's `config.model_type` (`load_policy_model`), so
a new backbone needs no change anywhere else.
"""

from __future__ import annotations

import os

import torch

from .base import ImageCodeLogProbs, ImageTokenPolicy, PromptBatch, VQCodec, unwrap_model, warp_logits
from .janus import JanusPolicy, JanusVQCodec
from .llamagen import LlamaGenPolicy

BACKBONES: dict[str, type[ImageTokenPolicy]] = {}


def register_backbone(policy_cls: type[ImageTokenPolicy]) -> type[ImageTokenPolicy]:
    """Register an `ImageTokenPolicy` subclass under its `model_type`; usable as a class decorator."""
    if not (isinstance(policy_cls, type) and issubclass(policy_cls, ImageTokenPolicy)):
        raise TypeError(f"register_backbone takes an ImageTokenPolicy subclass, got {policy_cls!r}.")
    model_type = getattr(policy_cls, "model_type", None)
    if not isinstance(model_type, str) or not model_type:
        raise ValueError(f"{policy_cls.__name__} must set the class attribute `model_type` (its config.model_type).")
    BACKBONES[model_type] = policy_cls
    return policy_cls


register_backbone(JanusPolicy)
register_backbone(LlamaGenPolicy)


def backbone_for_model(model) -> type[ImageTokenPolicy]:
    """The adapter class whose `handles(model)` is true. Raises a clear error for an unsupported model."""
    for policy_cls in BACKBONES.values():
        if policy_cls.handles(model):
            return policy_cls
    name = type(unwrap_model(model)).__name__
    raise TypeError(
        f"No RankE policy adapter for {name}. Registered backbones (model_type): {sorted(BACKBONES)}. A new backbone "
        "needs an `ImageTokenPolicy` adapter (ranke_trl/policy/base.py) registered with "
        "`ranke_trl.policy.register_backbone`."
    )


def make_policy(model, tokenizer, prompt_template: str | None = None) -> ImageTokenPolicy:
    """The adapter for `model`'s backbone."""
    kwargs = {"prompt_template": prompt_template} if prompt_template else {}
    return backbone_for_model(model)(tokenizer, model, **kwargs)


def backbone_for_checkpoint(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    """The adapter class for a Hub id or local directory, chosen by its `config.model_type`."""
    from transformers import AutoConfig

    looks_local = os.path.isabs(name_or_path) or name_or_path.startswith(".") or name_or_path.count("/") > 1
    if looks_local and not os.path.isdir(name_or_path):
        raise FileNotFoundError(
            f"No model directory at {name_or_path!r}. Give a local directory with a config.json (e.g. a RankE "
            "output_dir) or a Hub id such as 'deepseek-community/Janus-Pro-1B'."
        )
    config = AutoConfig.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    if config.model_type not in BACKBONES:
        raise TypeError(
            f"{name_or_path!r} is a {config.model_type!r} model; RankE has adapters for model_type "
            f"{sorted(BACKBONES)} (e.g. deepseek-community/Janus-Pro-1B is 'janus')."
        )
    return BACKBONES[config.model_type]


def _resolve_dtype(dtype):
    if dtype in (None, "auto") or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"Unknown dtype {dtype!r} in model_init_kwargs; use 'float32', 'bfloat16', 'float16' or 'auto'.")
    return getattr(torch, dtype)


def load_policy_model(name_or_path: str, args, processing_class=None):
    """Load a policy (and, if not given, its processor) from a Hub id or a local directory.

    The backbone is chosen by the checkpoint's `config.model_type`. Honours `args.model_init_kwargs` (dtype,
    revision, attn_implementation, ...) and `args.trust_remote_code` (off by default). A local LoRA output
    directory (`adapter_config.json`, as RankE saves with `use_peft`) loads as its base model with the adapter merged
    and the co-evolved VQ from its `decoder/`. Returns `(model, processing_class)`.
    """
    if os.path.isfile(os.path.join(name_or_path, "adapter_config.json")):
        return _load_lora_output(name_or_path, args, processing_class)
    kwargs = dict(args.model_init_kwargs or {})
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    kwargs["dtype"] = _resolve_dtype(kwargs.get("dtype", "float32"))
    policy_cls = backbone_for_checkpoint(name_or_path, kwargs.get("revision"), kwargs["trust_remote_code"])
    model, processor = policy_cls.load_model(name_or_path, **kwargs)
    return model, processing_class if processing_class is not None else processor


def _load_lora_output(path: str, args, processing_class=None):
    """A RankE LoRA output directory as one merged model: base + adapter (merged), VQ from `path/decoder`."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoProcessor

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
        policy = make_policy(model, processing_class)
        policy.attach_codec_module(model, policy.load_codec(decoder, dtype=model.dtype).module)
    return model, processing_class


__all__ = [
    "BACKBONES",
    "ImageCodeLogProbs",
    "ImageTokenPolicy",
    "JanusPolicy",
    "JanusVQCodec",
    "PromptBatch",
    "VQCodec",
    "backbone_for_checkpoint",
    "backbone_for_model",
    "load_policy_model",
    "make_policy",
    "register_backbone",
    "unwrap_model",
    "warp_logits",
]
