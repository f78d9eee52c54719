"""LlamaGen's text processor: caption cleaning, then T5 tokens (at most 120, ending with `</s>`), left-padded."""

from __future__ import annotations

import html
import re
import urllib.parse

import torch
from transformers import BatchFeature, ProcessorMixin

from .configuration_llamagen import CAPTION_MAX_LENGTH

_URL = re.compile(r"\b(?:https?://|www\.)\S+|\b\S+\.(?:com|net|org|co|io|ru|de|jp|uk)(?:/\S*)?\b", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^>]{1,200}>")
_HANDLE = re.compile(r"@[\w-]+")
_DASHES = re.compile(r"[\u2010-\u2015\u2212\uFE58\uFE63\uFF0D]")
_QUOTES = {re.compile(r"[\u2018\u2019\u201a\u201b`´]"): "'", re.compile(r"[\u201c\u201d\u201e\u201f«»]"): '"'}
_BAD_PUNCTUATION = re.compile(r"[#®•©™&@·º½¾¿¡§~()\[\]{}|\\/*]+")
_SPACES = re.compile(r"\s+")
_QUOTED = re.compile(r"^[\"']([\s\S]+)[\"']$")  # a caption wrapped in quotes
_LEADING = re.compile(r"^['_,:;-]")
_TRAILING = re.compile(r"['_,:+-]$")


def clean_caption(caption: str) -> str:
    """A caption as LlamaGen's T5 saw it in training, approximately: lower case, no URLs, markup, @handles or stray
    symbols, normalised quotes and dashes, single spaces.

    Upstream (`language/t5.py`, after DeepFloyd IF) runs a longer list of web-caption rules, twice, with ftfy and
    BeautifulSoup; this re-implementation keeps the rules that change ordinary prompts and needs only ftfy (optional).
    """
    text = urllib.parse.unquote_plus(str(caption)).strip().lower()
    text = _URL.sub("", text)
    text = html.unescape(_HTML_TAG.sub(" ", text))
    try:  # mojibake repair, as upstream; ftfy ships with open_clip
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = _HANDLE.sub("", text)
    text = _DASHES.sub("-", text)
    for pattern, replacement in _QUOTES.items():
        text = pattern.sub(replacement, text)
    text = _QUOTED.sub(r"\1", _SPACES.sub(" ", _BAD_PUNCTUATION.sub(" ", text)).strip())
    text = _LEADING.sub("", text)
    return _TRAILING.sub("", text).strip()


class LlamaGenProcessor(ProcessorMixin):
    """Prompts -> LlamaGen caption tokens: cleaned twice (as upstream), T5-tokenised with `</s>`, truncated to
    `caption_max_length` tokens and **left**-padded, the layout LlamaGen was trained with.

    Args:
        tokenizer: a T5 tokenizer (`google/flan-t5-xl`'s for the released models).
        caption_max_length: at most this many tokens per caption, `</s>` included (120).
        clean_captions: apply [`clean_caption`] (upstream always does).
    """

    def __init__(
        self, tokenizer=None, caption_max_length: int = CAPTION_MAX_LENGTH, clean_captions: bool = True, **kwargs
    ):
        super().__init__(tokenizer, **kwargs)
        self.caption_max_length = caption_max_length
        self.clean_captions = clean_captions

    def prepare_caption(self, prompt: str) -> str:
        """The text the tokenizer sees."""
        return clean_caption(clean_caption(prompt)) if self.clean_captions else prompt

    def token_ids(self, prompts: list[str]) -> list[list[int]]:
        """Unpadded T5 ids per prompt, each ending with `</s>` and at most `caption_max_length` long."""
        texts = [self.prepare_caption(p) for p in prompts]
        out = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.caption_max_length)
        return out["input_ids"]

    def pad(self, rows: list[list[int]], padding: str = "max_length", return_tensors: str = "pt") -> BatchFeature:
        """Left-pad id rows to `caption_max_length` (`padding="max_length"`, upstream) or to the longest row."""
        length = self.caption_max_length if padding == "max_length" else max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            if len(row) > length:
                raise ValueError(f"Caption {i} has {len(row)} tokens, more than {length}.")
            if row:
                input_ids[i, length - len(row) :] = torch.tensor(row)
                attention_mask[i, length - len(row) :] = 1
        return BatchFeature({"input_ids": input_ids, "attention_mask": attention_mask}, tensor_type=return_tensors)

    def __call__(self, text: str | list[str] = None, padding: str = "max_length", return_tensors: str = "pt", **kwargs):
        """Prompts -> `input_ids`, `attention_mask` (B, L) left-padded T5 tokens, L = 120 or the longest caption."""
        prompts = [text] if isinstance(text, str) else list(text)
        return self.pad(self.token_ids(prompts), padding=padding, return_tensors=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


__all__ = ["LlamaGenProcessor", "clean_caption"]
