"""ShapesWorld: deterministic scenes, GenEval-style captions that parse back, and `datasets` splits."""

import json

import numpy as np
import pytest
from datasets import Features, Image, Value

from shapes_world import (
    BACKGROUND,
    FAMILIES,
    PALETTE,
    make_split,
    parse_prompt,
    render_scene,
    sample_scene,
    sample_scenes,
    scene_split,
)
from shapes_world.data import family_counts
from shapes_world.vocab import GAP, SIZES


@pytest.fixture(scope="module")
def scenes():
    """600 training scenes, every family present."""
    return sample_scenes("train", 600, seed=0)


def png_bytes(dataset):
    return [row["bytes"] for row in dataset.cast_column("image", Image(decode=False))["image"]]


def extent(shape):
    """Half width and half height of a shape's box, in canvas units."""
    half = SIZES[shape.size] / 2
    return half, half / 2 if shape.kind == "rectangle" else half


# --- determinism and splits ----------------------------------------------------------------------------------------


def test_same_seed_gives_identical_png_bytes():
    assert png_bytes(make_split("train", 16, seed=3)) == png_bytes(make_split("train", 16, seed=3))


def test_different_seeds_give_different_scenes():
    first = {scene.key() for scene in sample_scenes("train", 100, seed=0)}
    second = {scene.key() for scene in sample_scenes("train", 100, seed=1)}
    assert len(first & second) < 10


def test_splits_drawn_from_one_seed_share_no_scene():
    keys = {split: {s.key() for s in sample_scenes(split, 400, seed=0)} for split in ("train", "validation", "test")}
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]


def test_every_scene_belongs_to_the_split_that_drew_it():
    for split in ("train", "validation", "test"):
        assert all(scene_split(scene) == split for scene in sample_scenes(split, 60, seed=4))


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="Unknown split 'val'"):
        sample_scenes("val", 4)


# --- families ------------------------------------------------------------------------------------------------------


def test_every_family_appears_in_a_split_of_twelve():
    assert sorted(make_split("validation", 12)["tag"]) == sorted(FAMILIES * 2)


def test_family_counts_follow_the_mix_and_sum_to_the_request():
    counts = family_counts(1000, {"counting": 3, "position": 1})
    assert counts == {"counting": 750, "position": 250}
    assert sum(family_counts(101).values()) == 101


def test_family_mix_restricts_the_split_to_its_families():
    assert set(make_split("train", 20, family_mix={"color_attr": 1.0})["tag"]) == {"color_attr"}


def test_unknown_family_in_the_mix_is_rejected():
    with pytest.raises(ValueError, match="unknown families"):
        family_counts(10, {"spatial": 1.0})


def test_each_family_has_as_many_shapes_as_its_caption_needs(scenes):
    for scene in scenes:
        expected = sum(entry["count"] for entry in scene.metadata["include"])
        assert len(scene.shapes) == expected, scene.prompt
        assert 1 <= len(scene.shapes) <= 4


def test_captions_name_the_rendered_kinds_and_colours(scenes):
    for scene in scenes:
        drawn = [(s.kind, s.color) for s in scene.shapes]
        for entry in scene.metadata["include"]:
            matches = [d for d in drawn if d[0] == entry["class"] and entry.get("color", d[1]) == d[1]]
            assert len(matches) >= entry["count"], scene.prompt


def test_position_scenes_place_the_subject_on_the_named_side(scenes):
    position_scenes = [s for s in scenes if s.tag == "position"]
    assert position_scenes
    for scene in position_scenes:
        subject, target = scene.shapes  # sampled subject first
        relation = scene.metadata["include"][1]["position"][0]
        dx, dy = subject.x - target.x, subject.y - target.y
        assert {"left of": dx < 0, "right of": dx > 0, "above": dy < 0, "below": dy > 0}[relation], scene.prompt


# --- captions and metadata -----------------------------------------------------------------------------------------


def test_captions_parse_back_to_their_metadata(scenes):
    for scene in scenes:
        assert parse_prompt(scene.prompt) == scene.metadata


def test_metadata_is_geneval_style_json(scenes):
    for scene in scenes:
        meta = json.loads(json.dumps(scene.metadata))
        assert meta["tag"] in FAMILIES and meta["prompt"] == scene.prompt
        assert all(set(entry) <= {"class", "count", "color", "position"} for entry in meta["include"])


def test_parser_reads_geneval_phrasing():
    assert parse_prompt("A photo of a red circle.")["tag"] == "colors"
    meta = parse_prompt("a photo of a triangle left of a square")
    assert meta["tag"] == "position"
    subject = {"class": "triangle", "count": 1, "position": ["left of", 0]}
    assert meta["include"] == [{"class": "square", "count": 1}, subject]


def test_parser_tags_counts_and_bindings():
    assert parse_prompt("three circles")["exclude"] == [{"class": "circle", "count": 4}]
    assert parse_prompt("a circle and a square")["tag"] == "two_object"
    assert parse_prompt("a red circle and a square")["tag"] == "color_attr"


def test_parser_rejects_words_outside_the_world():
    with pytest.raises(ValueError, match="Cannot parse ShapesWorld prompt 'a pink hexagon'"):
        parse_prompt("a pink hexagon")


def test_parser_rejects_a_number_that_disagrees_with_its_noun():
    with pytest.raises(ValueError, match="does not agree in number"):
        parse_prompt("three circle")


# --- rendering -----------------------------------------------------------------------------------------------------


def test_renders_hold_only_palette_and_background_colours(scenes):
    allowed = {BACKGROUND, *PALETTE.values()}
    for scene in scenes[:100]:
        image = render_scene(scene)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert {tuple(c) for c in image.reshape(-1, 3)} <= allowed


def test_shapes_keep_a_gap_between_them_and_from_the_border(scenes):
    for scene in scenes:
        boxes = []
        for shape in scene.shapes:
            half_w, half_h = extent(shape)
            box = (shape.x - half_w, shape.y - half_h, shape.x + half_w, shape.y + half_h)
            assert min(box) >= GAP / 2 and max(box) <= 64 - GAP / 2, scene.prompt
            boxes.append(box)
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3]) >= GAP, scene.prompt


def test_renders_scale_to_other_image_sizes():
    scene = sample_scene(np.random.default_rng(0), "counting")
    assert render_scene(scene, 96).shape == (96, 96, 3)
    assert make_split("test", 2, image_size=96)[0]["image"].size == (96, 96)


# --- the datasets split --------------------------------------------------------------------------------------------


def test_make_split_has_the_documented_columns_and_features():
    dataset = make_split("train", 8, seed=0)
    assert dataset.features == Features(
        {"prompt": Value("string"), "image": Image(), "tag": Value("string"), "metadata": Value("string")}
    )
    row = dataset[0]
    assert row["image"].mode == "RGB" and row["image"].size == (64, 64)
    meta = json.loads(row["metadata"])
    assert meta["prompt"] == row["prompt"] and meta["tag"] == row["tag"]
