"""Text to images with a trained system, in one call: `generate("outputs/ranke", ["a red square"])`.

    from ranke_trl import TextToImagePipeline, generate

    images = generate("outputs/shapes-ranke-clip", ["two blue circles"], images_per_prompt=4)   # list of PIL images
    pipe = TextToImagePipeline.from_pretrained("outputs/shapes-ranke-clip")                      # load once
    images = pipe(["a red square", "a green triangle"], seed=1, guidance_scale=3.0)

    ranke-trl generate --model outputs/shapes-ranke-clip --prompt "a red square" --output_dir images/

Any backbone with a registered adapter works (the model directory's config picks it), from a Hub id or a local
directory, a RankE output (policy + co-evolved VQ) or a LoRA output (base + adapter + `decoder/`). Sampling settings
default to those saved with the run (`sampling_config.json`), else the library defaults; any given here win. Each
image has its own seed, derived from `(seed, prompt index, image index)`, so an image does not depend on the batch.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from .policy import load_policy_model, make_policy
from .policy.static_sampler import check_sampler
from .sampling import SAMPLING_DEFAULTS, SamplingArguments, check_sampling, describe_sampling, load_sampling


def image_seed(seed: int, prompt_index: int, image_index: int) -> int:
    """The sampling seed of one image, in [0, 2^63): a hash of `(seed, prompt_index, image_index)`."""
    state = np.random.SeedSequence([seed, prompt_index, image_index]).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


def to_pil(images01: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) float in [0, 1] -> B RGB PIL images."""
    array = (images01.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(image) for image in array]


class TextToImagePipeline:
    """A policy, its adapter, the VQ that renders its codes, and the run's sampling settings.

    Args:
        model: the policy (`PreTrainedModel` of a registered backbone), with its VQ tokenizer attached.
        processor: its processor or tokenizer.
        sampling: the default sampling settings (`guidance_scale`, `temperature`, `top_k`, `top_p`, ...).
    """

    def __init__(self, model, processor, sampling: dict | None = None):
        self.model, self.processor = model.eval(), processor
        self.policy = make_policy(model, processor)
        self.codec = self.policy.codec(model)
        self.sampling = {**SAMPLING_DEFAULTS, **(sampling or {})}

    @classmethod
    def from_pretrained(cls, name_or_path: str, dtype: str = "float32", device=None, trust_remote_code: bool = False,
                        revision: str | None = None) -> "TextToImagePipeline":
        """Load a model directory or Hub id; its saved sampling settings become the defaults (and are printed
        by `ranke-trl generate`)."""
        init = {"dtype": dtype} | ({"revision": revision} if revision else {})
        model, processor = load_policy_model(
            name_or_path, SimpleNamespace(model_init_kwargs=init, trust_remote_code=trust_remote_code)
        )
        if device is not None:
            model.to(device)
        saved = SamplingArguments(**(load_sampling(name_or_path) or {}))
        saved.resolve_sampling()
        return cls(model, processor, saved.sampling_settings())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def __call__(self, prompts: str | list[str], *, images_per_prompt: int = 1, seed: int = 0,
                 batch_size: int = 8, output_type: str = "pil", **sampling) -> list:
        """Images for `prompts`, prompt-major (`images_per_prompt` per prompt).

        `sampling` overrides the defaults (`guidance_scale`, `temperature`, `top_k`, `top_p`, `do_sample`);
        `sampler` picks the implementation ("eager", "static" or "compiled"; `SamplingArguments.sampler`).
        `output_type`: "pil" (a list of PIL images) or "pt" (a (B, 3, H, W) tensor in [0, 1]).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if images_per_prompt < 1 or batch_size < 1:
            raise ValueError("images_per_prompt and batch_size must be >= 1.")
        do_sample = sampling.pop("do_sample", True)
        sampler = check_sampler(sampling.pop("sampler", "eager"))
        unknown = sorted(set(sampling) - set(SAMPLING_DEFAULTS))
        if unknown:
            raise TypeError(f"Unknown sampling settings {unknown}; known: {sorted(SAMPLING_DEFAULTS)} and do_sample.")
        settings = {**self.sampling, **{k: v for k, v in sampling.items() if v is not None}}
        check_sampling(settings)
        rows = [(i, j) for i in range(len(prompts)) for j in range(images_per_prompt)]
        images = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            generators = [torch.Generator(device=self.device).manual_seed(image_seed(seed, i, j)) for i, j in chunk]
            batch = self.policy.encode_prompts([prompts[i] for i, _ in chunk], self.device)
            codes = self.policy.sample_codes(
                self.model, batch, sampler=sampler, guidance_scale=settings["guidance_scale"],
                temperature=settings["temperature"], top_k=settings["top_k"], top_p=settings["top_p"],
                do_sample=do_sample, generator=generators,
            )
            images.append(self.codec.decode_images(codes))
        images = torch.cat(images)
        return images if output_type == "pt" else to_pil(images)

    def describe(self) -> str:
        return describe_sampling(self.sampling)


def generate(name_or_path: str, prompts: str | list[str], **kwargs) -> list:
    """Load `name_or_path` and return its images for `prompts` (see `TextToImagePipeline.__call__`)."""
    load = {k: kwargs.pop(k) for k in ("dtype", "device", "trust_remote_code", "revision") if k in kwargs}
    return TextToImagePipeline.from_pretrained(name_or_path, **load)(prompts, **kwargs)


def save_images(images: list[Image.Image], prompts: list[str], output_dir: str, images_per_prompt: int) -> list[str]:
    """Write `<output_dir>/<prompt index>_<image index>.png` and a `prompts.txt` index; returns the PNG paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for k, image in enumerate(images):
        path = os.path.join(output_dir, f"{k // images_per_prompt:04d}_{k % images_per_prompt:02d}.png")
        image.save(path)
        paths.append(path)
    with open(os.path.join(output_dir, "prompts.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{i:04d}\t{prompt}\n" for i, prompt in enumerate(prompts))
    return paths
