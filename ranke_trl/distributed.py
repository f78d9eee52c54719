"""What RankE needs on top of TRL to run under DeepSpeed ZeRO-3 (and, where it differs, ZeRO-2 and DDP).

The policy is the only model inside the DeepSpeed engine. The VQ model (decoder) and the EMA reference are built
*outside* it, but under ZeRO-3 `from_pretrained` runs inside `deepspeed.zero.Init`, so every parameter it creates
is partitioned (numel 0 outside a gather). The helpers here turn such modules back into ordinary ones, and add the
VQ weights (which the engine does not own) to the engine's consolidated state dict when the system is saved.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn


def is_zero3_partitioned(module: nn.Module) -> bool:
    """True when any parameter of `module` is a ZeRO-3 parameter (it carries a `ds_id`)."""
    return any(hasattr(param, "ds_id") for param in module.parameters())


def unpartitioned_copy(module: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """A deep copy of `module` whose parameters are ordinary, whole tensors, even if `module`'s are ZeRO-3 partitioned.

    Without partitioned parameters this is `copy.deepcopy`. Otherwise each submodule's own parameters are gathered in
    turn (so at most one submodule is whole at a time) and copied to `device`; the structure, buffers and any patched
    methods are deep-copied as usual. Must be called on every rank (the gathers are collective).
    """
    if not is_zero3_partitioned(module):
        return copy.deepcopy(module)
    import deepspeed

    memo: dict[int, nn.Parameter] = {}
    for sub in module.modules():
        own = [p for p in sub.parameters(recurse=False) if id(p) not in memo]
        if not own:
            continue
        with deepspeed.zero.GatheredParameters(own):
            for param in own:
                memo[id(param)] = nn.Parameter(
                    param.data.detach().to(device, copy=True), requires_grad=param.requires_grad
                )
    return copy.deepcopy(module, memo)


@contextlib.contextmanager
def gathered(module: nn.Module, modifier_rank: int | None = None):
    """Inside the block every parameter of `module` is whole: a ZeRO-3 gather (collective: call it on every rank),
    with the changes made on `modifier_rank` broadcast at exit; a no-op for ordinary modules."""
    if not is_zero3_partitioned(module):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=modifier_rank):
        yield


def submodule_prefix(root: nn.Module, module: nn.Module) -> str:
    """The state-dict prefix of `module` inside `root`, e.g. 'model.vqmodel.'; raises if it is not attached."""
    for name, candidate in root.named_modules():
        if candidate is module:
            return f"{name}." if name else ""
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(root).__name__}.")


def with_submodule_weights(state_dict: dict, root: nn.Module, module: nn.Module) -> dict:
    """`state_dict` of `root` plus the weights of the attached `module` it lacks (e.g. the VQ after a ZeRO-3 gather).

    Keys already present are kept as they are, so a state dict that has them (ZeRO-2, one process) is unchanged.
    """
    prefix = submodule_prefix(root, module)
    extra = {f"{prefix}{k}": v.detach().cpu() for k, v in module.state_dict().items()}
    return {**state_dict, **{k: v for k, v in extra.items() if k not in state_dict}}


@contextlib.contextmanager
def zero3_init_disabled(args):
    """Build models whole inside this block even under ZeRO-3 (`args`: the `TrainingArguments`).

    Under ZeRO-3, transformers builds every sub-model that `from_config` creates inside `zero.Init`, so a composite
    model constructed in memory (e.g. the tiny Janus) comes out half partitioned and its weight init fails. Built
    whole instead, it is partitioned by the engine when the trainer prepares it.
    """
    plugin = getattr(args, "deepspeed_plugin", None)
    if plugin is None:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()
