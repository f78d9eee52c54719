"""A tiny random chat model (`Qwen2ForCausalLM`, hidden 32) for offline tests and the compression benchmark.

It stands in for Qwen2.5-7B-Instruct in caption compression: the same architecture and tokenizer classes, a chat
template, left padding, greedy decoding through `generate`. Its tokenizer has whole-word tokens for the paper's
template and a few hundred caption words (anything else falls back to bytes). Random weights emit the same words
for the same inputs, so a test can check determinism, batching, the post-processing and the cache offline.
"""

from __future__ import annotations

import os

#: A minimal Jinja chat template: role and content between the two special tokens, then the assistant's turn.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|> {{ message['role'] }} {{ message['content'] }} <|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)
TINY_CHAT_WORDS = (
    "summarize the following image caption into concise visual tags words preserve subjects styles lighting colors "
    "composition remove narrative prose subjective descriptions filler caption : , . ( ) <= 50 system user assistant "
    "a an of in on at with and to is are by from for two three four five photo painting portrait close-up wide shot "
    "red blue green yellow black white orange purple pink brown gray golden silver bright dark soft warm cool neon "
    "cat dog horse bird person man woman child people group crowd hand hands fingers gesture pointing waving holding "
    "thumbs up sign text letters word poster book street city building house room kitchen table chair bench car bus "
    "train boat tree trees flower flowers grass mountain mountains river lake sea ocean beach sky clouds sun moon "
    "night day sunset sunrise rain snow fog forest garden field road bridge window door wall floor light shadow "
    "cinematic dramatic vibrant pastel minimalist detailed realistic surreal fantasy futuristic vintage retro "
    "watercolor oil digital art illustration 3d render anime style lens bokeh background foreground center left right "
    "top bottom behind front next above below large small tall short old young happy smiling standing sitting walking "
    "running looking wearing dress shirt hat glasses jacket coat shoes bag cup bottle plate food pizza cake fruit apple"
).split()


def build_tiny_chat_tokenizer():
    """A byte-level BPE tokenizer (learned offline from `TINY_CHAT_WORDS`, left padding) with `TINY_CHAT_TEMPLATE`.

    Byte-level BPE with Qwen's special tokens, so `AutoTokenizer` reloads it as a `Qwen2Tokenizer` (transformers
    builds Qwen2 tokenizers from vocab and merges), as it does the real model's.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([" ".join(TINY_CHAT_WORDS)] * 3 + list(TINY_CHAT_WORDS), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny_chat_model(seed: int = 0, hidden_size: int = 32, num_layers: int = 2):
    """`(model, tokenizer)`: a random `Qwen2ForCausalLM` (hidden 32, 2 layers, fp32, eval mode) and its tokenizer.

    Its weights are drawn wide (std 0.5) and every embedding row but those of whole words (" cat", " red") is
    scaled down, so greedy decoding writes varied words rather than one repeated token or stray bytes: about 128
    words for `max_new_tokens=128` (it never emits EOS), enough to exercise the 50-word cap.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tiny_chat_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        initializer_range=0.5,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    words = [i for token, i in tokenizer.get_vocab().items() if token.startswith("\u0120") and len(token) > 2]
    damp = torch.ones(len(tokenizer))
    damp[words] = 0.0
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(1 - 0.95 * damp[:, None])
    return model, tokenizer


def save_tiny_chat_model(path: str | os.PathLike, seed: int = 0) -> str:
    """Save the tiny chat model and its tokenizer to `path` (a local model id for `compress_model`); returns it."""
    model, tokenizer = build_tiny_chat_model(seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


__all__ = ["TINY_CHAT_TEMPLATE", "build_tiny_chat_model", "build_tiny_chat_tokenizer", "save_tiny_chat_model"]
