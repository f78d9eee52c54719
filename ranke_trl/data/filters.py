"""The filter stage: which ingested rows may enter the training set, and how many each rule dropped.

Rules, applied in this order to the ingested rows (each row is dropped by the first rule it fails, and counted
under it, per source):

- `undecodable`: the image did not decode (ingest stored no image);
- `short_caption`: fewer than `min_caption_words` words (an empty caption has 0);
- `duplicate_caption` / `duplicate_image`: the same caption text, or the same image bytes, as an earlier row;
- `eval_leak`: the caption equals an evaluation prompt (GenEval, HPSv2 benchmark, COCO-30K) after
  `normalize_caption`; the risky shards are `mscoco_human` and `geneval_train`.

Only the text and hash columns are read, never the images.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping

DROP_REASONS = ("undecodable", "short_caption", "duplicate_caption", "duplicate_image", "eval_leak")
_NON_WORD = re.compile(r"[\W_]+", flags=re.UNICODE)


def normalize_caption(text: str) -> str:
    """The form in which captions and evaluation prompts are compared: Unicode NFKC, lower case, every run of
    punctuation or whitespace a single space, trimmed. `"A photo of a Cat."` and `"a photo of a cat"` match."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def filter_rows(
    sources: list[str],
    captions: list[str | None],
    image_hashes: list[str | None],
    eval_prompts: Mapping[str, Iterable[str]] | None = None,
    min_caption_words: int = 3,
) -> tuple[list[int], dict[str, dict[str, int]], dict[str, int]]:
    """Apply the rules (module docstring) to ingested rows given column-wise.

    `image_hashes[i]` is None for a row whose image did not decode. `eval_prompts`: `{set name: prompts}`.
    Returns `(kept row indices, {reason: {source: dropped}}, {eval set: training rows that matched it})`.
    """
    leaks: dict[str, str] = {}
    for name, prompts in (eval_prompts or {}).items():
        for prompt in prompts:
            leaks.setdefault(normalize_caption(prompt), name)
    dropped = {reason: {} for reason in DROP_REASONS}
    leaked_by_set: dict[str, int] = {name: 0 for name in (eval_prompts or {})}
    seen_captions, seen_images, kept = set(), set(), []
    for index, (source, caption, image_hash) in enumerate(zip(sources, captions, image_hashes)):
        caption = (caption or "").strip()
        reason = None
        if image_hash is None:
            reason = "undecodable"
        elif len(caption.split()) < min_caption_words:
            reason = "short_caption"
        elif caption in seen_captions:
            reason = "duplicate_caption"
        elif image_hash in seen_images:
            reason = "duplicate_image"
        elif normalize_caption(caption) in leaks:
            reason = "eval_leak"
            leaked_by_set[leaks[normalize_caption(caption)]] += 1
        if reason is None:
            kept.append(index)
            seen_captions.add(caption)
            seen_images.add(image_hash)
        else:
            dropped[reason][source] = dropped[reason].get(source, 0) + 1
    return kept, dropped, leaked_by_set


def matches_eval_prompt(texts: Iterable[str], eval_prompts: Mapping[str, Iterable[str]]) -> list[bool]:
    """Whether each text equals some evaluation prompt after `normalize_caption` (e.g. a compressed prompt)."""
    normalized = {normalize_caption(p) for prompts in eval_prompts.values() for p in prompts}
    return [normalize_caption(text) in normalized for text in texts]


__all__ = ["DROP_REASONS", "filter_rows", "matches_eval_prompt", "normalize_caption"]
