"""A tiny, randomly initialised Janus built from configs, for tests, recipes and CPU smoke runs.

Nothing here touches the network: the tokenizer is a byte-level BPE with no merges. Sizes follow the project's test
scale: 64 px images, 8x8 codes, a codebook of 256 and two-layer transformers.
"""

from __future__ import annotations

import math
import os

import torch

JANUS_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|User|>: ' + message['content'] + '\n\n<|Assistant|>:' }}{% endfor %}"
)
_SPECIAL_TOKENS = {
    "bos_token": "<|begin▁of▁sentence|>",
    "eos_token": "<|end▁of▁sentence|>",
    "pad_token": "<|▁pad▁|>",
}
_EXTRA_TOKENS = ["<|User|>", "<|Assistant|>", "<image_placeholder>", "<begin_of_image>", "<end_of_image>"]


def build_tiny_janus_tokenizer():
    """A Janus-compatible fast tokenizer: byte-level BPE without merges, with Janus's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        extra_special_tokens={
            "image_token": "<image_placeholder>",
            "boi_token": "<begin_of_image>",
            "eoi_token": "<end_of_image>",
        },
        **_SPECIAL_TOKENS,
    )
    tokenizer.add_tokens(_EXTRA_TOKENS, special_tokens=True)
    tokenizer.padding_side = "left"
    tokenizer.chat_template = JANUS_CHAT_TEMPLATE
    # Janus's tokenizer prepends BOS; a BPE model does not, so add it through the post-processor.
    from tokenizers import processors

    bos = tokenizer.bos_token
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    tokenizer._tokenizer.post_processor = backend.post_processor
    return tokenizer


def tiny_janus_config(
    image_size: int = 64,
    patch_size: int = 8,
    codebook_size: int = 256,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int | None = None,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    **vq_overrides,
):
    """A `JanusConfig` at test scale: `image_size / patch_size` codes per side, `num_layers` Llama layers of
    `num_heads` heads and an MLP of `intermediate_size` (default `2 * hidden_size`); `vq_overrides` go to the VQ."""
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    tokenizer_len = len(build_tiny_janus_tokenizer())
    vocab_size = vocab_size or tokenizer_len
    num_downsamples = round(math.log2(patch_size))  # not a tensor: the config may be built on the meta device
    text_config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max(512, (image_size // patch_size) ** 2 + 128),
        pad_token_id=tokenizer_len - len(_EXTRA_TOKENS) - 1,
    )
    vision_config = JanusVisionConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=hidden_size,
        num_image_tokens=(image_size // patch_size) ** 2,
        mlp_ratio=2.0,
    )
    vq_kwargs = dict(
        embed_dim=8,
        num_embeddings=codebook_size,
        latent_channels=32,
        base_channels=32,
        channel_multiplier=[1] * num_downsamples + [2],
        num_res_blocks=1,
        projection_dim=hidden_size,
        image_token_embed_dim=hidden_size,
        num_patches=image_size // patch_size,
    )
    vq_kwargs.update(vq_overrides)
    return JanusConfig(
        text_config=text_config,
        vision_config=vision_config,
        vq_config=JanusVQVAEConfig(**vq_kwargs),
        image_token_id=build_tiny_janus_tokenizer().convert_tokens_to_ids("<image_placeholder>"),
    )


def build_tiny_janus(seed: int = 0, **config_kwargs):
    """A randomly initialised `JanusForConditionalGeneration` with a working image-generation config."""
    from transformers import JanusForConditionalGeneration

    tokenizer = build_tiny_janus_tokenizer()
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(tiny_janus_config(**config_kwargs))
    model.eval()
    # The text config's special tokens are the tokenizer's, so a trainer has nothing to realign (and warns of nothing).
    text_config = model.config.get_text_config()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(text_config, name, getattr(tokenizer, name))
    gen = model.generation_config
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.generation_kwargs = {"boi_token_id": tokenizer.convert_tokens_to_ids("<begin_of_image>")}
    gen._from_model_config = False  # otherwise boi_token_id is lost on reload (see NOTES.md)
    return model


def build_tiny_janus_processor(image_size: int = 64, num_image_tokens: int = 64):
    """A `JanusProcessor` around the tiny tokenizer, at `image_size` px with `num_image_tokens` image tokens."""
    from transformers import JanusImageProcessor, JanusProcessor

    image_processor = JanusImageProcessor(size={"height": image_size, "width": image_size}, min_size=8)
    return JanusProcessor(
        image_processor=image_processor,
        tokenizer=build_tiny_janus_tokenizer(),
        chat_template=JANUS_CHAT_TEMPLATE,
        num_image_tokens=num_image_tokens,
    )


def save_tiny_janus(path: str | os.PathLike, seed: int = 0, **config_kwargs) -> str:
    """Save a tiny Janus and its processor to `path`, loadable with `from_pretrained(path)`."""
    model = build_tiny_janus(seed=seed, **config_kwargs)
    model.save_pretrained(path)
    build_tiny_janus_processor().save_pretrained(path)
    return str(path)
