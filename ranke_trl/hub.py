"""The model card of a RankE run: what was trained, from what, against which rewards, and how to load it."""

from __future__ import annotations

import json
import os
import re

CARD_TEMPLATE = """---
library_name: transformers
{base_model_line}tags:
{tags}
---

# {name}

A discrete autoregressive text-to-image model post-trained with **RankE** ([ranke_trl](https://github.com/ranke-trl/ranke_trl)):
GRPO on the image-token policy, alternating with co-evolution of the VQ decoder on the policy's own rollouts
(Rank-GAN, reward back-propagation, a reconstruction anchor and EMA consistency).

| | |
|---|---|
| base model | {base_model} |
| mode | {mode} |
| reward(s) | {rewards} |
| training steps | {steps} (decoder phases: {phases}) |
| rollouts | CFG {guidance}, temperature {temperature}, top-p {top_p}, top-k {top_k}; log-probs score the {logprob_mode} distribution |
| decoder losses | {stage2} |
| dataset | {dataset} |

## Final training metrics

{metrics}
{evaluation}
## How to load

The repository holds the whole co-evolved system (policy with the co-evolved VQ model attached) and, in `decoder/`,
the co-evolved VQ tokenizer on its own.

```python
from transformers import AutoProcessor
from {model_module} import {model_class}
from {decoder_module} import {decoder_class}

model = {model_class}.from_pretrained("{repo}")           # policy + co-evolved decoder
processor = AutoProcessor.from_pretrained("{repo}")
decoder = {decoder_class}.from_pretrained("{repo}", subfolder="decoder")      # the decoder alone
```

Generate images in one call with `ranke_trl`, which uses the sampling settings saved with the run
(`sampling_config.json`: CFG {guidance}, top-p {top_p}) unless you pass others:

```python
from ranke_trl import generate

images = generate("{repo}", ["a red square"], images_per_prompt=2)  # a list of PIL images
```

or from the command line: `ranke-trl generate --model {repo} --prompt "a red square" --output_dir images/`.
"""

LORA_LOADING = """## How to load

The repository holds a LoRA adapter on the policy and, in `decoder/`, the co-evolved VQ tokenizer (trained in full).

```python
from ranke_trl import generate

# base model (named in adapter_config.json) + the adapter merged + the co-evolved decoder from decoder/
images = generate("{repo}", ["a red square"])  # a local copy of the repository
```
"""


def _mode(args) -> str:
    if args.train_policy and args.train_decoder:
        return "RankE (GRPO + decoder co-evolution)"
    return "Std. RL (GRPO, frozen decoder)" if args.train_policy else "Decoder-only"


def _stage2(args) -> str:
    if not args.train_decoder:
        return "none (decoder frozen)"
    terms = [("L_rbp", args.lambda_rbp), ("L_RankGAN", args.lambda_gan), ("L_rec", args.lambda_rec),
             ("L_cons", args.lambda_cons)]
    text = ", ".join(f"{name} x {value:g}" for name, value in terms if value)
    if not args.lambda_rbp:
        text += " (no reward back-propagation: no differentiable reward, or lambda_rbp=0)"
    return text


def _import_path(cls: type) -> str:
    """`transformers` for the classes it exports at top level, else the class's own module."""
    import transformers

    return "transformers" if getattr(transformers, cls.__name__, None) is cls else cls.__module__


_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def base_model_name(config) -> tuple[str, bool]:
    """`(name, is_hub_id)`: the base model's Hub id when it was loaded from the Hub, else a description from its
    config (never a local or temporary path)."""
    name = getattr(config, "_name_or_path", "") or ""
    if _HUB_ID.match(name) and not os.path.exists(name):
        return name, True
    where = f", loaded from a local directory named `{os.path.basename(name.rstrip(os.sep))}`" if name else ""
    return f"a {config.model_type} model (not from the Hub{where})", False


def dataset_description(dataset, name: str | None = None) -> str:
    """`name (N rows)`: the given name, else the one `datasets` recorded, else what kind of dataset it is."""
    if dataset is None:
        return name or "unknown"
    info = getattr(dataset, "info", None)
    name = name or getattr(info, "dataset_name", None) or getattr(info, "builder_name", None) or "an in-memory dataset"
    size = f" ({len(dataset)} rows)" if hasattr(dataset, "__len__") else " (streamed)"
    return f"`{name}`{size}"


def evaluation_section(output_dir: str) -> str:
    """Evaluation results found in `output_dir` (`results.json` of `ranke-trl eval`, `world_eval.json` of a
    ShapesWorld run), as Markdown; empty when there are none."""
    sections = []
    results = os.path.join(output_dir, "results.json")
    if os.path.isfile(results):
        with open(results, encoding="utf-8") as f:
            metrics = json.load(f).get("metrics", {})
        rows = "\n".join(f"| `{k}` | {v:.4g} |" for k, v in sorted(metrics.items()) if isinstance(v, (int, float)))
        sections.append(f"`ranke-trl eval` (results.json):\n\n| metric | value |\n|---|---|\n{rows}")
    world = os.path.join(output_dir, "world_eval.json")
    if os.path.isfile(world):
        with open(world, encoding="utf-8") as f:
            report = json.load(f)
        before, after = report.get("before", {}), report.get("after", {})
        rows = "\n".join(f"| `{k}` | {before.get(k, float('nan')):.4g} | {v:.4g} |"
                          for k, v in sorted(after.items()) if isinstance(v, (int, float)))
        sections.append(f"ShapesWorld evaluation before and after training (world_eval.json):\n\n"
                        f"| metric | before | after |\n|---|---|---|\n{rows}")
    if not sections:
        return ""
    return "\n## Evaluation\n\n" + "\n\n".join(sections) + "\n"


def write_model_card(trainer, output_dir: str, dataset_name: str | None = None) -> str:
    """Write `output_dir/README.md` for `trainer`'s run and return its path."""
    args = trainer.args
    base_model, on_hub = base_model_name(trainer.model.config)
    last = {}
    for entry in trainer.state.log_history:
        last.update({k: v for k, v in entry.items() if isinstance(v, (int, float))})
    keys = sorted(k for k in last if k.startswith(("reward", "shift/", "decoder/")))
    metrics = "\n".join(f"- `{k}`: {last[k]:.4g}" for k in keys) or "- (no metrics logged yet)"
    rewards = ", ".join(f"`{n}` (weight {w:g})" for n, w in zip(trainer.reward_func_names, trainer.reward_weights.tolist()))
    from .policy import unwrap_model

    model_cls, decoder_cls = type(unwrap_model(trainer.model)), type(trainer.codec.module)
    tags = ["ranke", "trl", "grpo", "text-to-image", trainer.policy.model_type]
    card = CARD_TEMPLATE.format(
        name=os.path.basename(os.path.abspath(output_dir)),
        base_model=base_model if not on_hub else f"`{base_model}`",
        base_model_line=f"base_model: {base_model}\n" if on_hub else "",
        tags="\n".join(f"- {t}" for t in tags),
        mode=_mode(args),
        rewards=rewards,
        steps=trainer.state.global_step,
        phases=getattr(trainer, "_decoder_phases", 0),
        dataset=dataset_description(trainer.train_dataset, dataset_name),
        evaluation=evaluation_section(output_dir),
        guidance=args.guidance_scale,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        logprob_mode=args.logprob_mode,
        stage2=_stage2(args),
        metrics=metrics,
        repo=args.hub_model_id or output_dir,
        model_module=_import_path(model_cls),
        model_class=model_cls.__name__,
        decoder_module=_import_path(decoder_cls),
        decoder_class=decoder_cls.__name__,
    )
    if hasattr(trainer.model, "peft_config"):  # an adapter, not a whole model: show how to merge it
        head, _ = card.split("## How to load", 1)
        card = head + LORA_LOADING.format(base_model=base_model, repo=args.hub_model_id or output_dir)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(card)
    return path
