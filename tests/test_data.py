"""Datasets by name, path or Hub id: one opener (`ranke_trl.data.open_dataset`) for training and evaluation."""

import json

import pytest
from datasets import Dataset, DatasetDict
from PIL import Image

from ranke_trl.data import DATASETS, colour_squares, load_prompt_dataset, open_dataset, register_dataset


def test_the_builtin_tiny_dataset_is_64_coloured_squares_with_prompts_and_images():
    dataset = open_dataset("tiny")
    assert len(dataset) == 64 and dataset.column_names == ["prompt", "image"]
    assert dataset[1]["prompt"] == "a blue square" and dataset[1]["image"].getpixel((10, 10)) == (0, 0, 255)
    assert dataset[1]["image"].size == (64, 64)


def test_num_rows_asks_a_registered_dataset_for_that_many():
    assert load_prompt_dataset("tiny", max_samples=5)["prompt"] == colour_squares(5)["prompt"]


def test_a_saved_dataset_dict_opens_by_split_and_names_a_missing_one(tmp_path):
    DatasetDict({"train": colour_squares(3), "test": colour_squares(2)}).save_to_disk(str(tmp_path / "saved"))
    assert len(open_dataset(str(tmp_path / "saved"), "test")) == 2
    assert len(open_dataset(str(tmp_path / "saved"))) == 3  # no split named: train
    with pytest.raises(ValueError, match="no split 'validation'"):
        open_dataset(str(tmp_path / "saved"), "validation")


def test_data_files_and_image_folders_open_with_load_dataset(tmp_path):
    rows = [{"caption": "a red square"}, {"caption": "a blue square"}]
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    assert open_dataset(str(tmp_path / "prompts.jsonl"))["caption"] == ["a red square", "a blue square"]
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), "red").save(tmp_path / "images" / f"{i}.png")
    assert len(open_dataset(str(tmp_path / "images"), num_rows=2)) == 2


def test_an_unreadable_file_type_is_refused(tmp_path):
    (tmp_path / "prompts.txt").write_text("a red square\n")
    with pytest.raises(ValueError, match="use a .json, .jsonl, .csv or .parquet file"):
        open_dataset(str(tmp_path / "prompts.txt"))


def test_the_prompt_column_is_renamed_to_prompt_and_a_missing_one_is_named(tmp_path):
    Dataset.from_dict({"caption": ["a", "b"], "prompt": ["x", "y"]}).save_to_disk(str(tmp_path / "d"))
    assert load_prompt_dataset(str(tmp_path / "d"), prompt_column="caption")["prompt"] == ["a", "b"]
    with pytest.raises(ValueError, match="no column 'text'.*set `prompt_column`"):
        load_prompt_dataset(str(tmp_path / "d"), prompt_column="text")


def test_a_registered_dataset_gets_its_split_rows_and_seed(monkeypatch):
    monkeypatch.setitem(DATASETS, "placeholder", None)  # restored after the test
    calls = []

    def factory(split, num_rows, seed):
        calls.append((split, num_rows, seed))
        return Dataset.from_dict({"prompt": [f"{split} {seed}"] * (num_rows or 3)})

    register_dataset("placeholder", factory, default_split="test")
    assert load_prompt_dataset("placeholder", split="train", max_samples=2, seed=7)["prompt"] == ["train 7"] * 2
    assert len(open_dataset("placeholder")) == 3
    assert calls == [("train", 2, 7), ("test", None, 0)]


def test_shapes_comes_from_the_shapesworld_plugin():
    dataset = open_dataset("shapes", num_rows=4, seed=1)  # the plugin's default split: test
    assert len(dataset) == 4 and {"prompt", "image", "metadata"} <= set(dataset.column_names)
    train = load_prompt_dataset("shapes", split="train", max_samples=4, seed=1)
    assert train["prompt"] != dataset["prompt"] or train["metadata"] != dataset["metadata"]
