"""Caption compression (`ranke_trl.data.compress`): the model call, the post-processing and the cache."""

import pytest

from ranke_trl.data.compress import (
    CaptionCache, CompressionSettings, TransformersChatBackend, cache_key, clean_tags, clip_token_counter,
    compress_captions, postprocess_tags,
)

CAPTIONS = [
    "A majestic red fox sits on a mossy log in a misty forest at dawn, soft golden light filtering through the trees.",
    "Two dogs on a beach",
    "A neon city street at night with rain reflections and a lone figure holding a blue umbrella.",
]


@pytest.fixture(scope="module")
def count_tokens():
    return clip_token_counter()


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory):
    from ranke_trl.data.tiny_chat import save_tiny_chat_model

    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny_chat"))


class FakeBackend:
    """Echoes a tagged version of each caption and counts the captions it was asked for."""

    def __init__(self):
        self.asked = []

    def generate(self, conversations):
        captions = [c[-1]["content"].split("Caption: ")[1].split("\n")[0] for c in conversations]
        self.asked += captions
        return [f"Visual Tags: {caption.lower()}" for caption in captions]


def test_the_tiny_chat_model_decodes_greedily_the_same_batched_or_alone(chat_model_dir):
    settings = CompressionSettings(model=chat_model_dir, max_new_tokens=24)
    backend = TransformersChatBackend(settings, dtype="float32", device="cpu")
    conversations = [settings.messages(caption) for caption in CAPTIONS]
    batched = backend.generate(conversations)
    assert batched == backend.generate(conversations)
    assert batched == [backend.generate([conversation])[0] for conversation in conversations]
    assert all(len(text.split()) >= 10 for text in batched)


def test_labels_bullets_quotes_and_line_breaks_are_removed():
    assert clean_tags("Visual Tags:\n- red fox\n- misty forest\n* dawn light\n") == "red fox, misty forest, dawn light"
    assert clean_tags('**Visual Tags:** "fox, forest"') == "fox, forest"
    assert clean_tags("1. fox\n2) forest\x07\ufffd") == "fox, forest"


def test_a_long_output_is_cut_to_50_words_and_flagged(count_tokens):
    prompt, flags = postprocess_tags(" ".join(["fox"] * 80), "a fox", 50, count_tokens)
    assert len(prompt.split()) == 50 and flags == {"tags_truncated": True, "clip_truncated": False,
                                                    "tags_fallback": False}


def test_a_prompt_over_77_clip_tokens_loses_whole_tags_from_the_end(count_tokens):
    tags = ", ".join(f"hyperrealistic bioluminescent tag{i}" for i in range(12))  # 36 words, ~100 CLIP tokens
    assert count_tokens(tags) > 77
    prompt, flags = postprocess_tags(tags, "caption", 50, count_tokens)
    assert count_tokens(prompt) <= 77 and flags["clip_truncated"] and not flags["tags_truncated"]
    assert tags.startswith(prompt + ", ") and prompt.endswith(f"tag{len(prompt.split(', ')) - 1}")


def test_a_single_overlong_word_is_cut_to_fit(count_tokens):
    prompt, flags = postprocess_tags("x" * 400, "caption", 50, count_tokens)
    assert 0 < count_tokens(prompt) <= 77 and flags["clip_truncated"]


def test_an_empty_output_falls_back_to_the_cut_caption(count_tokens):
    prompt, flags = postprocess_tags("Visual Tags:\n \n", CAPTIONS[0], 10, count_tokens)
    assert prompt == " ".join(CAPTIONS[0].split()[:10]) and flags["tags_fallback"] and flags["tags_truncated"]


def test_the_cache_key_changes_with_model_revision_template_generation_and_caption():
    base = CompressionSettings()
    key = cache_key(base.identity(), "a fox")
    for changed in (CompressionSettings(model="Qwen/Qwen2.5-1.5B-Instruct"), CompressionSettings(revision="abc"),
                    CompressionSettings(template="Tags for: {original_caption}"),
                    CompressionSettings(max_new_tokens=64), CompressionSettings(repetition_penalty=1.0),
                    CompressionSettings(system_prompt="Be brief."), CompressionSettings(backend="vllm")):
        assert cache_key(changed.identity(), "a fox") != key
    assert cache_key(base.identity(), "a fox.") != key
    assert cache_key(CompressionSettings(max_words=20).identity(), "a fox") == key  # post-processing is not cached


def test_only_cache_misses_reach_the_model(tmp_path):
    settings, backend = CompressionSettings(), FakeBackend()
    cache = CaptionCache(tmp_path / "cache.jsonl")
    compress_captions(CAPTIONS[:2], settings, backend, cache, batch_size=1, show_progress=False)
    outputs, counts = compress_captions(CAPTIONS, settings, backend, CaptionCache(tmp_path / "cache.jsonl"),
                                        batch_size=1, show_progress=False)
    assert backend.asked == CAPTIONS  # longest first (fox, dogs), then only the new caption
    assert counts == {"generated": 1, "cached": 2} and outputs[1] == "Visual Tags: two dogs on a beach"


def test_a_torn_last_line_is_dropped_when_the_cache_opens(tmp_path):
    settings = CompressionSettings()
    path = tmp_path / "cache.jsonl"
    compress_captions(CAPTIONS[:2], settings, FakeBackend(), CaptionCache(path), batch_size=1, show_progress=False)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"key": "abc", "capt')  # a crash in the middle of a write
    assert len(CaptionCache(path)) == 2 and path.read_bytes() == whole


def test_the_template_must_hold_the_caption_slot():
    with pytest.raises(ValueError, match="original_caption"):
        CompressionSettings(template="Summarize this caption.")
