"""Curation of the paper's training set (`python -m ranke_trl.data.curate`), end to end on tiny offline stand-ins:
WebDataset tars with BLIP3o-60k's real shard names, a tiny random chat model for caption compression, a random tiny
Janus VQ for the ground-truth codes, and a local copy of the evaluation sets."""

import io
import json
import os
import tarfile
import zlib

import pytest
import torch
from datasets import Dataset
from PIL import Image

from ranke_trl.corpus import image_to_tensor, stored_codes
from ranke_trl.data.arguments import CurationArguments
from ranke_trl.data.compress import TransformersChatBackend, clip_token_counter
from ranke_trl.data.curate import Curation, curate, main
from ranke_trl.data.shards import ingest, list_shards, source_of
from ranke_trl.data.stratify import InsufficientSourceError

#: shard file -> rows; the 7 shards the paper's mix reads, with Human_gestures.tar as uploaded, and an unused one
SHARDS = {"journeyDB.tar": 8, "dalle3.tar": 6, "mscoco_human.tar": 6, "Human_gestures.tar": 6, "geneval_train.tar": 3,
          "text_1.tar": 2, "text_2.tar": 2, "object_1.tar": 3}
WORDS = "red blue cat dog horse bench street beach sunset neon watercolor portrait city forest".split()
LEAKED = "A photo of a bench."  # a GenEval prompt, up to case and punctuation
MIX = {"journeydb": 4, "dalle3": 2, "mscoco": 2, "human_gestures": 2, "geneval": 1, "typography": 1}


def _caption(shard: str, i: int) -> str:
    words = [WORDS[(i * 7 + j * 3 + len(shard)) % len(WORDS)] for j in range(6 + i % 5)]
    return f"{shard.split('.')[0]} {i}: " + " ".join(words) + ", golden hour lighting, cinematic composition"


def _jpeg(colour, size=(48, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_shards(folder, shards=SHARDS) -> str:
    """Tiny BLIP3o-60k look-alikes: `{key}.jpg` + `{key}.txt` per sample. In Human_gestures.tar row 1 does not decode,
    row 2 has an empty caption, row 3 repeats row 0's caption and row 4 is a GenEval prompt."""
    os.makedirs(folder, exist_ok=True)
    for file, rows in shards.items():
        with tarfile.open(os.path.join(folder, file), "w") as tar:
            for i in range(rows):
                colour = (20 * i, zlib.crc32(file.encode()) % 256, 255 - 20 * i)
                image, caption = _jpeg(colour, (48 + i, 32)), _caption(file, i)
                if file == "Human_gestures.tar":
                    image = b"not a jpeg" if i == 1 else image
                    caption = {2: "", 3: _caption(file, 0), 4: LEAKED}.get(i, caption)
                for ext, payload in (("jpg", image), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return str(folder)


def write_eval_sets(folder) -> str:
    """A local copy of the evaluation sets in `snapshot_eval_sets`' layout."""
    os.makedirs(os.path.join(folder, "geneval"), exist_ok=True)
    with open(os.path.join(folder, "geneval", "evaluation_metadata.jsonl"), "w") as handle:
        for prompt in ("a photo of a bench", "a photo of two cats"):
            handle.write(json.dumps({"tag": "single_object", "include": [], "prompt": prompt}) + "\n")
    os.makedirs(os.path.join(folder, "hps", "benchmark"), exist_ok=True)
    for subset in ("photo", "concept-art", "anime"):
        with open(os.path.join(folder, "hps", "benchmark", f"{subset}.json"), "w") as handle:
            json.dump([f"a {subset} of a lighthouse", f"a {subset} of a fox"], handle)
    Dataset.from_dict({"caption": ["A man riding a wave.", "Two dogs on a couch."]}).save_to_disk(
        os.path.join(folder, "coco30k"))
    return str(folder)


class CountingBackend:
    """The real transformers backend, counting the captions it is asked for; it fails once at call `fail_at`."""

    def __init__(self, chat_model_dir, fail_at=None, **settings):
        self.inner = TransformersChatBackend(CurationArguments(compress_model=chat_model_dir, **settings).compression(),
                                             dtype="float32", device="cpu")
        self.calls, self.captions, self.fail_at = 0, [], fail_at

    def generate(self, conversations):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("injected failure")
        self.captions += [c[-1]["content"] for c in conversations]
        return self.inner.generate(conversations)


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("blip3o"))


@pytest.fixture(scope="module")
def eval_sets_dir(tmp_path_factory):
    return write_eval_sets(tmp_path_factory.mktemp("eval_sets"))


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory):
    from ranke_trl.data.tiny_chat import save_tiny_chat_model

    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny_chat"))


def _args(out, shards_dir, eval_sets_dir, chat_model_dir, codec_dir, **overrides) -> CurationArguments:
    settings = dict(
        source_dataset=shards_dir, eval_sets_dir=eval_sets_dir, mix=dict(MIX), total=None, seed=0,
        compress_model=chat_model_dir, compress_dtype="float32", compress_device="cpu", compress_batch_size=4,
        compress_max_new_tokens=64, codec_model=codec_dir, encode_device="cpu", output_dir=str(out),
        show_progress=False,
    )
    return CurationArguments(**{**settings, **overrides})


@pytest.fixture(scope="module")
def curated(tmp_path_factory, shards_dir, eval_sets_dir, chat_model_dir, tiny_janus_dir_module):
    out = tmp_path_factory.mktemp("curated")
    backend = CountingBackend(chat_model_dir, compress_max_new_tokens=64)
    args = _args(out, shards_dir, eval_sets_dir, chat_model_dir, tiny_janus_dir_module)
    return curate(args, backend=backend), args, backend


@pytest.fixture(scope="module")
def tiny_janus_dir_module(tmp_path_factory):
    from ranke_trl.tiny import save_tiny_janus

    return save_tiny_janus(tmp_path_factory.mktemp("tiny_janus"))


# ---------------------------------------------------------------------------------------------------- ingest


def test_shard_names_map_to_their_paper_source_case_insensitively():
    assert source_of("Human_gestures.tar") == source_of("human_gestures.tar") == "human_gestures"
    assert source_of("journeyDB.tar") == "journeydb" and source_of("mscoco_human.tar") == "mscoco"
    assert source_of("text_1.tar") == source_of("text_2.tar") == "typography"
    assert source_of("object_1.tar") is None and source_of("occupation_2.tar") is None


def test_ingest_reads_only_the_needed_shards_with_source_from_the_name_and_square_images(shards_dir):
    _, shards = list_shards(shards_dir, ["typography", "human_gestures"])
    assert [s.file for s in shards] == ["text_1.tar", "text_2.tar", "Human_gestures.tar"]
    rows = ingest(shards, image_size=16)
    assert rows["source"] == ["typography"] * 4 + ["human_gestures"] * 6
    assert rows[0]["key"] == "text_1/000000" and rows[2]["key"] == "text_2/000000"
    assert rows[4]["image"].size == (16, 16) and rows[5]["image"] is None  # row 1 of Human_gestures does not decode


def test_a_missing_shard_is_named(tmp_path):
    folder = write_shards(tmp_path / "partial", {"dalle3.tar": 1, "text_1.tar": 1})
    with pytest.raises(FileNotFoundError, match=r"typography \(needs \['text_1', 'text_2'\]"):
        list_shards(folder, ["dalle3", "typography"])


# ---------------------------------------------------------------------------------------------------- the set


def test_the_curated_set_has_the_mix_counts_and_the_columns(curated):
    dataset, _, _ = curated
    assert dataset.column_names == ["prompt", "original_caption", "source", "key", "image", "gt_codes",
                                    "tags_truncated", "clip_truncated", "tags_fallback"]
    assert {s: dataset["source"].count(s) for s in MIX} == MIX


def test_every_prompt_is_one_line_of_1_to_50_words_within_77_clip_tokens(curated):
    count = clip_token_counter()
    for prompt in curated[0]["prompt"]:
        assert 1 <= len(prompt.split()) <= 50 and "\n" not in prompt and count(prompt) <= 77
    assert any(curated[0]["tags_truncated"])  # the tiny model writes 64 words: cut to 50, flagged


def test_filtered_rows_are_counted_and_never_taken(curated):
    dataset, args, _ = curated
    with open(os.path.join(args.output_dir, "curation_manifest.json")) as handle:
        manifest = json.load(handle)
    dropped = manifest["filter"]["dropped"]
    assert dropped["undecodable"] == {"human_gestures": 1} and dropped["short_caption"] == {"human_gestures": 1}
    assert dropped["duplicate_caption"] == {"human_gestures": 1} and dropped["eval_leak"] == {"human_gestures": 1}
    assert manifest["filter"]["eval_leaks"]["geneval"] == 1
    assert LEAKED not in dataset["original_caption"]
    assert manifest["stratify"]["available"]["human_gestures"] == 2


def test_the_manifest_and_card_record_source_counts_seed_model_template_and_generation(curated):
    _, args, _ = curated
    with open(os.path.join(args.output_dir, "curation_manifest.json")) as handle:
        manifest = json.load(handle)
    assert manifest["stratify"]["requested"] == MIX and manifest["stratify"]["taken"] == MIX
    assert manifest["stratify"]["available"]["journeydb"] == 8 and manifest["seed"] == 0
    assert manifest["compress"]["model"] == args.compress_model
    assert manifest["compress"]["template"] == args.compress_template
    assert manifest["compress"]["generation"] == {"do_sample": False, "max_new_tokens": 64,
                                                  "repetition_penalty": 1.05}
    assert manifest["encode"]["num_tokens"] == 64 and manifest["encode"]["model_type"] == "janus"
    assert set(manifest["eval_sets"]) == {"geneval", "hps", "coco30k"}
    assert set(manifest["source"]["shards"]) == set(SHARDS) - {"object_1.tar"}
    card = open(os.path.join(args.output_dir, "README.md")).read()
    assert "| journeydb | 4 | 8 | 4 |" in card and "Visual Tags:" in card and "license: apache-2.0" in card


def test_gt_codes_are_the_codecs_encoding_of_the_stored_image(curated, tiny_janus_dir_module):
    from ranke_trl.data.encode import load_codec

    dataset, _, _ = curated
    codec, model_type = load_codec(tiny_janus_dir_module, device="cpu")
    pixels = torch.stack([image_to_tensor(image, codec.image_size) for image in dataset["image"]])
    assert dataset[0]["image"].size == (64, 64) and model_type == "janus"
    assert torch.equal(torch.tensor(dataset["gt_codes"]), codec.encode(pixels))
    assert torch.equal(stored_codes(dataset, codec), codec.encode(pixels))  # what the trainer reads


def test_a_rerun_reuses_every_stage_and_calls_no_model(curated, shards_dir, eval_sets_dir, chat_model_dir,
                                                       tiny_janus_dir_module):
    dataset, args, _ = curated
    backend = CountingBackend(chat_model_dir)
    log = []
    again = Curation(args, backend=backend, log=log.append).run()
    assert backend.calls == 0 and again["prompt"] == dataset["prompt"]
    assert sum("reusing" in line for line in log) == 5 and not any("loading the VQ" in line for line in log)


def test_the_shortfall_error_names_requested_and_available_before_any_model_call(
    tmp_path, shards_dir, eval_sets_dir, chat_model_dir, tiny_janus_dir_module
):
    backend = CountingBackend(chat_model_dir)
    args = _args(tmp_path, shards_dir, eval_sets_dir, chat_model_dir, tiny_janus_dir_module,
                 mix={**MIX, "human_gestures": 3, "geneval": 5})
    with pytest.raises(InsufficientSourceError) as error:
        curate(args, backend=backend)
    message = str(error.value)
    assert "human_gestures: requested 3, available 2  <- short" in message
    assert "geneval: requested 5, available 3  <- short" in message
    assert "journeydb: requested 4, available 8\n" in message
    assert backend.calls == 0 and not os.path.exists(tmp_path / "stages" / "compress")


def test_redistribute_fills_the_total_from_the_other_sources(tmp_path, shards_dir, eval_sets_dir, chat_model_dir,
                                                             tiny_janus_dir_module):
    args = _args(tmp_path, shards_dir, eval_sets_dir, chat_model_dir, tiny_janus_dir_module,
                 mix={"journeydb": 0.5, "human_gestures": 0.5}, total=6, on_shortfall="redistribute")
    dataset = curate(args, backend=CountingBackend(chat_model_dir))
    assert dataset["source"].count("human_gestures") == 2 and dataset["source"].count("journeydb") == 4
    manifest = json.load(open(tmp_path / "curation_manifest.json"))
    assert manifest["stratify"]["notes"] == ["redistribute: journeydb +1, human_gestures -1"]


def test_a_rerun_after_a_crash_generates_only_the_misses_and_ends_byte_identical(
    tmp_path, shards_dir, eval_sets_dir, chat_model_dir, tiny_janus_dir_module
):
    mix = {"journeydb": 6, "dalle3": 3}  # 9 captions: batches of 4, 4 and 1
    straight = _args(tmp_path / "straight", shards_dir, eval_sets_dir, chat_model_dir, tiny_janus_dir_module, mix=mix)
    curate(straight, backend=CountingBackend(chat_model_dir))
    crashed = _args(tmp_path / "crashed", shards_dir, eval_sets_dir, chat_model_dir, tiny_janus_dir_module, mix=mix)
    first = CountingBackend(chat_model_dir, fail_at=2)
    with pytest.raises(RuntimeError, match="injected failure"):
        curate(crashed, backend=first)
    resumed = CountingBackend(chat_model_dir)
    curate(crashed, backend=resumed)
    assert len(first.captions) == 4 and len(resumed.captions) == 5  # only the batches the crash lost
    assert not set(first.captions) & set(resumed.captions)

    def files(root):
        return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
                for d, _, names in os.walk(root) for f in names if not f.startswith("curation_")}

    for part in ("cache", "stages/compress", "stages/encode"):
        assert files(tmp_path / "straight" / part) == files(tmp_path / "crashed" / part), part
    dataset_files = [f for f in os.listdir(tmp_path / "straight") if f.endswith((".arrow", "state.json", "info.json"))]
    for name in dataset_files:
        assert (tmp_path / "straight" / name).read_bytes() == (tmp_path / "crashed" / name).read_bytes(), name


def test_the_same_seed_draws_the_same_rows_and_another_seed_other_rows(
    tmp_path, shards_dir, eval_sets_dir, chat_model_dir, tiny_janus_dir_module, curated
):
    from ranke_trl.data.stratify import allocate, select_rows

    sources = ["a"] * 50 + ["b"] * 50
    allocation = allocate({"a": 5, "b": 5}, {"a": 50, "b": 50})
    assert select_rows(sources, allocation, seed=0) == select_rows(sources, allocation, seed=0)
    assert select_rows(sources, allocation, seed=0) != select_rows(sources, allocation, seed=1)
    # the curation: the stratify stage of a fresh run with the same recipe takes the same rows
    args = _args(tmp_path, shards_dir, eval_sets_dir, chat_model_dir, tiny_janus_dir_module)
    run = Curation(args, backend=CountingBackend(chat_model_dir))
    filtered = run.filter(run.ingest(), run.eval_prompts())
    taken = run.stratify(filtered, dict(MIX)).dataset["key"]
    assert taken == curated[0]["key"]


def test_the_cli_reads_a_recipe_with_overrides(tmp_path, shards_dir, eval_sets_dir, chat_model_dir,
                                               tiny_janus_dir_module, monkeypatch):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"source_dataset: {shards_dir}\neval_sets_dir: {eval_sets_dir}\nmix: {{dalle3: 1, text_typo: 1}}\n"
        f"total: null\ncodec_model: {tiny_janus_dir_module}\n"
    )
    with pytest.raises(ValueError, match="Sources \\['text_typo'\\] have no shards"):
        main(["--recipe", str(recipe), "--output_dir", str(tmp_path / "out"), "--compress_model", chat_model_dir])


def test_llamagen_codes_come_through_the_same_adapter_interface(tmp_path):
    from ranke_trl.data import colour_squares
    from ranke_trl.data.encode import add_gt_codes, load_codec
    from ranke_trl.models.llamagen.tiny_llamagen import save_tiny_llamagen

    codec, model_type = load_codec(save_tiny_llamagen(tmp_path / "llamagen"), device="cpu")
    images = colour_squares(3, image_size=codec.image_size)
    coded = add_gt_codes(images, codec, batch_size=2, show_progress=False)
    pixels = torch.stack([image_to_tensor(image, codec.image_size) for image in images["image"]])
    assert model_type == "llamagen" and len(coded[0]["gt_codes"]) == codec.num_tokens
    assert torch.equal(torch.tensor(coded["gt_codes"]), codec.encode(pixels))


# ---------------------------------------------------------------------------------------------------- eval sets


def test_the_evaluation_sets_load_offline_from_a_local_copy(eval_sets_dir):
    from ranke_trl.evaluation.eval_sets import EVAL_SET_SOURCES, eval_set_prompts, load_eval_prompts

    assert eval_set_prompts("geneval", eval_sets_dir) == ["a photo of a bench", "a photo of two cats"]
    assert len(eval_set_prompts("hps", eval_sets_dir)) == 6  # photo, concept-art, anime: 2 each here, 800 on the Hub
    coco = load_eval_prompts("coco30k", source=os.path.join(eval_sets_dir, "coco30k"))
    assert [record.prompt for record in coco] == ["A man riding a wave.", "Two dogs on a couch."]
    assert {name: info["prompts"] for name, info in EVAL_SET_SOURCES.items()} == {
        "geneval": 553, "hps": 800, "coco30k": 30000}


def test_a_missing_local_copy_says_how_to_make_one(tmp_path):
    from ranke_trl.evaluation.eval_sets import eval_set_prompts

    with pytest.raises(FileNotFoundError, match="python -m ranke_trl.evaluation.eval_sets snapshot"):
        eval_set_prompts("geneval", tmp_path)


@pytest.mark.parametrize("name", ["blip3o_15k.yaml", "blip3o_15k_llamagen.yaml"])
def test_the_shipped_curation_recipes_parse_to_the_papers_mix(name):
    from ranke_trl.data.stratify import requested_counts
    from ranke_trl.recipes import RecipeParser

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (args,) = RecipeParser((CurationArguments,)).parse_args_and_config(
        ["--recipe", os.path.join(repo, "recipes", "data", name)])
    assert sum(requested_counts(args.mix, args.total).values()) == 15000 and args.on_shortfall == "error"
    assert args.compress_model == "Qwen/Qwen2.5-7B-Instruct" and args.compress_max_words == 50


def test_push_to_hub_sends_the_dataset_its_card_and_the_manifest(curated, monkeypatch):
    from huggingface_hub import DatasetCard, HfApi

    from ranke_trl.data.publish import push_dataset

    dataset, args, _ = curated
    sent = {}
    monkeypatch.setattr(Dataset, "push_to_hub", lambda self, repo, **kw: sent.update(data=(repo, self.column_names)))
    monkeypatch.setattr(DatasetCard, "push_to_hub", lambda self, repo, **kw: sent.update(card=(repo, self.content)))
    monkeypatch.setattr(HfApi, "upload_file", lambda self, **kw: sent.update(manifest=kw))
    manifest = json.load(open(os.path.join(args.output_dir, "curation_manifest.json")))
    push_dataset(dataset, manifest, "someone/blip3o-15k")
    assert sent["data"] == ("someone/blip3o-15k", dataset.column_names)
    assert sent["card"][0] == "someone/blip3o-15k" and "| journeydb | 4 | 8 | 4 |" in sent["card"][1]
    assert sent["manifest"]["path_in_repo"] == "curation_manifest.json"
