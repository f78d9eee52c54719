"""The compress stage: long captions -> concise visual tags by an instruct LLM (Appendix H), cached and resumable.

The paper prompts Qwen2.5-7B-Instruct with `PAPER_TEMPLATE` and keeps tags of at most 50 words, so that a prompt
fits CLIP's 77-token context. Here any chat model id works, through transformers (batched greedy `generate`, left
padding, batches of similar length) or vLLM (`backend="vllm"`, imported on use).

**Post-processing** (`postprocess_tags`): labels ("Visual Tags:"), bullets, control characters and line breaks go;
the text is cut to `max_words` words (`tags_truncated`), then tags are dropped from the end until it fits
`max_clip_tokens` CLIP tokens, start and end tokens included (`clip_truncated`; ≤ 50 words does not guarantee it:
33 tag words can take 50 tokens). An empty output falls back to the original caption, cut the same way
(`tags_fallback`).

**Cache** (`CaptionCache`): an append-only JSONL file of raw outputs keyed by `sha256(backend, model, revision,
template, system prompt, generation settings, caption)`. Captions are generated in fixed batches (sorted by
length), each batch appended and fsynced at once, so a rerun after a crash generates only the batches that are
missing and ends with the same file, byte for byte, as an uninterrupted run. Post-processing is not cached: changing
`max_words` needs no model call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

#: Appendix H's prompt ("≤" restored where the paper's text extraction lost it); `{original_caption}` is filled in
PAPER_TEMPLATE = (
    "Summarize the following image caption into concise visual tags (≤50 words). Preserve: subjects, styles, "
    "lighting, colors, composition. Remove: narrative prose, subjective descriptions, filler words\n"
    "Caption: {original_caption}\nVisual Tags:"
)
BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class CompressionSettings:
    """What determines a compressed caption: the model, its prompt and decoding (all keyed in the cache), and the
    post-processing limits (applied to cached outputs)."""

    backend: str = "hf"
    model: str = "Qwen/Qwen2.5-7B-Instruct"
    revision: str | None = "main"
    template: str = PAPER_TEMPLATE
    system_prompt: str | None = None
    max_new_tokens: int = 128
    repetition_penalty: float = 1.05
    max_words: int = 50
    max_clip_tokens: int = 77

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"compress_backend={self.backend!r}; choose from {BACKENDS}.")
        if "{original_caption}" not in self.template:
            raise ValueError("compress_template must contain '{original_caption}', where the caption goes.")
        if self.max_words < 1 or self.max_clip_tokens < 3 or self.max_new_tokens < 1:
            raise ValueError("max_words, max_new_tokens must be >= 1 and max_clip_tokens >= 3.")

    def generation(self) -> dict:
        """The decoding settings, stated in full (the model's own `generation_config.json` is not consulted)."""
        return {"do_sample": False, "max_new_tokens": self.max_new_tokens,
                "repetition_penalty": self.repetition_penalty}

    def identity(self) -> dict:
        """Everything a raw output depends on besides the caption: the cache key's fields."""
        return {"backend": self.backend, "model": self.model, "revision": self.revision, "template": self.template,
                "system_prompt": self.system_prompt, "generation": self.generation()}

    def messages(self, caption: str) -> list[dict]:
        """The chat conversation for one caption (the system turn only if `system_prompt` is set, else the chat
        template's own default, e.g. Qwen2.5's)."""
        user = {"role": "user", "content": self.template.format(original_caption=caption)}
        return ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [user]


def cache_key(identity: dict, caption: str) -> str:
    """The cache key of `caption` under `CompressionSettings.identity()`: a sha256 hex digest."""
    payload = json.dumps({**identity, "caption": caption}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class CaptionCache:
    """An append-only JSONL file of `{"key", "caption", "output"}` lines (see the module docstring).

    A torn last line (a crash mid-write) is cut off when the file is opened; every complete line is kept.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.entries: dict[str, str] = {}
        if os.path.exists(self.path):
            with open(self.path, "rb") as handle:
                data = handle.read()
            complete = data[: data.rfind(b"\n") + 1]
            if len(complete) != len(data):
                logger.warning("Dropping a torn last line of the caption cache %s.", self.path)
                with open(self.path, "r+b") as handle:
                    handle.truncate(len(complete))
            for line in complete.decode("utf-8").splitlines():
                entry = json.loads(line)
                self.entries[entry["key"]] = entry["output"]

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def extend(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """Append `(key, caption, output)` rows in one write, then flush and fsync."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        lines = "".join(
            json.dumps({"key": k, "caption": c, "output": o}, ensure_ascii=False, sort_keys=True) + "\n"
            for k, c, o in rows
        )
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())
        self.entries.update((k, o) for k, _, o in rows)


# ---------------------------------------------------------------------------------------------- backends


class TransformersChatBackend:
    """Batched greedy decoding with a transformers chat model, loaded on the first call (a rerun whose captions are
    all cached loads nothing). `generate(conversations) -> texts`, the new tokens only, special tokens removed."""

    def __init__(self, settings: CompressionSettings, dtype: str = "bfloat16", device: str | None = None):
        self.settings, self.dtype, self.device = settings, dtype, device
        self.model = self.tokenizer = None
        self.resolved_revision: str | None = None

    def load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        s = self.settings
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(s.model, revision=s.revision)
        self.tokenizer.padding_side = "left"  # a decoder-only model continues after the last real token
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(s.model, revision=s.revision, dtype=dtype).to(device).eval()
        self.resolved_revision = getattr(self.model.config, "_commit_hash", None)

    def generate(self, conversations: list[list[dict]]) -> list[str]:
        import torch
        from transformers import GenerationConfig

        if self.model is None:
            self.load()
        inputs = self.tokenizer.apply_chat_template(
            conversations, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
        ).to(self.model.device)
        config = GenerationConfig(
            **self.settings.generation(), pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id,
        )
        with torch.inference_mode():
            output = self.model.generate(**inputs, generation_config=config)
        return self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


class VLLMChatBackend:
    """The same decoding with vLLM (`pip install vllm`), which batches internally; loaded on the first call."""

    def __init__(self, settings: CompressionSettings, dtype: str = "bfloat16", device: str | None = None):
        self.settings, self.dtype = settings, dtype
        self.llm = None
        self.resolved_revision: str | None = None

    def generate(self, conversations: list[list[dict]]) -> list[str]:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as error:
            raise ImportError("compress_backend='vllm' needs vLLM: pip install vllm (or use 'hf').") from error
        s = self.settings
        if self.llm is None:
            self.llm = LLM(model=s.model, revision=s.revision, dtype=self.dtype, seed=0)
        params = SamplingParams(temperature=0.0, max_tokens=s.max_new_tokens, repetition_penalty=s.repetition_penalty)
        return [result.outputs[0].text for result in self.llm.chat(conversations, params, use_tqdm=False)]


def make_backend(settings: CompressionSettings, dtype: str = "bfloat16", device: str | None = None):
    """The backend named by `settings.backend`, not loaded yet."""
    cls = TransformersChatBackend if settings.backend == "hf" else VLLMChatBackend
    return cls(settings, dtype=dtype, device=device)


def compress_captions(
    captions: Sequence[str],
    settings: CompressionSettings,
    backend,
    cache: CaptionCache,
    batch_size: int = 32,
    show_progress: bool = True,
) -> tuple[list[str], dict]:
    """Raw model outputs, one per caption, and `{"generated", "cached"}` counts of distinct captions.

    Distinct captions are sorted longest first and cut into batches of `batch_size`; a batch already in the cache is
    skipped, any other is generated (its cached members left out) and appended to the cache in one write.
    """
    identity = settings.identity()
    unique = sorted(set(captions), key=lambda caption: (-len(caption), caption))
    batches = [unique[i : i + batch_size] for i in range(0, len(unique), batch_size)]
    generated = 0
    for batch in tqdm(batches, desc="Compressing captions", unit="batch", disable=not show_progress):
        missing = [(cache_key(identity, c), c) for c in batch if cache_key(identity, c) not in cache]
        if not missing:
            continue
        outputs = backend.generate([settings.messages(caption) for _, caption in missing])
        if len(outputs) != len(missing):
            raise RuntimeError(f"The backend returned {len(outputs)} outputs for {len(missing)} captions.")
        cache.extend([(key, caption, output) for (key, caption), output in zip(missing, outputs)])
        generated += len(missing)
    outputs = [cache.get(cache_key(identity, caption)) for caption in captions]
    return outputs, {"generated": generated, "cached": len(unique) - generated}


# ---------------------------------------------------------------------------------------------- post-processing

_LABEL = re.compile(r"^\W*(?:visual\s+)?tags\W*:\W*", flags=re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•·]+|\d+[.)])\s*")


def clip_token_counter() -> Callable[[str], int]:
    """`text -> CLIP tokens`, start and end tokens included, with open_clip's offline BPE tokenizer (the one its
    CLIP models and HPSv2 use)."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    return lambda text: len(tokenizer.encode(text)) + 2


def clean_tags(text: str) -> str:
    """One line of tags: labels, bullets, quotes, control characters and line breaks removed, spaces collapsed."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch if unicodedata.category(ch)[0] != "C" or ch == "\n" else " " for ch in text)
    text = text.replace("\ufffd", " ")
    lines = [_BULLET.sub("", _LABEL.sub("", line.strip())).strip() for line in text.split("\n")]
    text = ", ".join(line.strip(" ,;") for line in lines if line.strip(" ,;"))
    text = text.strip().strip("\"'`*").strip()
    text = re.sub(r"\s*,(\s*,)+", ",", re.sub(r"\s+", " ", text))
    return text.strip(" ,;:")


def fit_tags(text: str, max_words: int, count_tokens: Callable[[str], int], max_tokens: int) -> tuple[str, bool, bool]:
    """`(text, words_cut, tokens_cut)`: at most `max_words` words, then tags dropped from the end (whole tags; words
    of a single remaining tag) until `count_tokens(text) <= max_tokens`."""
    words = text.split()
    words_cut = len(words) > max_words
    if words_cut:
        text = " ".join(words[:max_words]).strip(" ,;:")
    tokens_cut = False
    while text and count_tokens(text) > max_tokens:
        tokens_cut = True
        tags = [tag.strip() for tag in text.split(",") if tag.strip()]
        text = ", ".join(tags[:-1]) if len(tags) > 1 else " ".join(text.split()[:-1])
        if not text.split() and tags:  # one word longer than the context: keep what fits of its characters
            word = tags[0].split()[0]
            while word and count_tokens(word) > max_tokens:
                word = word[:-1]
            text = word
            break
    return text, words_cut, tokens_cut


def postprocess_tags(
    output: str, caption: str, max_words: int, count_tokens: Callable[[str], int], max_tokens: int = 77
) -> tuple[str, dict[str, bool]]:
    """The training prompt from a raw model output: `(prompt, {"tags_truncated", "clip_truncated",
    "tags_fallback"})`; the prompt has 1 to `max_words` words, one line and at most `max_tokens` CLIP tokens."""
    tags = clean_tags(output or "")
    fallback = not tags.split()
    if fallback:
        tags = clean_tags(caption)
    prompt, words_cut, tokens_cut = fit_tags(tags, max_words, count_tokens, max_tokens)
    return prompt, {"tags_truncated": words_cut, "clip_truncated": tokens_cut, "tags_fallback": fallback}


FLAGS = ("tags_truncated", "clip_truncated", "tags_fallback")


def settings_record(settings: CompressionSettings) -> dict:
    """The settings as recorded in the manifest and card, with the template's sha256."""
    record = asdict(settings)
    record["template_sha256"] = hashlib.sha256(settings.template.encode("utf-8")).hexdigest()
    record["generation"] = settings.generation()
    return record


__all__ = [
    "BACKENDS",
    "CaptionCache",
    "CompressionSettings",
    "FLAGS",
    "PAPER_TEMPLATE",
    "TransformersChatBackend",
    "VLLMChatBackend",
    "cache_key",
    "clean_tags",
    "clip_token_counter",
    "compress_captions",
    "fit_tags",
    "make_backend",
    "postprocess_tags",
    "settings_record",
]
