"""GenEval export: the official folder layout, byte for byte, and the reading of the evaluator's results."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ranke_trl.evaluation.geneval import GenEvalWriter, read_geneval_prompts, read_geneval_results

TWO_OBJECT = {
    "tag": "two_object",
    "include": [{"class": "bench", "count": 1}, {"class": "dog", "count": 1}],
    "prompt": "a photo of a bench and a dog",
}
COUNTING = {
    "tag": "counting",
    "include": [{"class": "cup", "count": 3}],
    "exclude": [{"class": "cup", "count": 4}],
    "prompt": "a photo of three cups",
}


def png_bytes(pixels: np.ndarray) -> bytes:
    """Expected file bytes: PIL's PNG encoder with default zlib level 6 and no optimisation."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=6, optimize=False)
    return buffer.getvalue()


def test_layout_and_metadata_bytes_for_two_prompts(tmp_path):
    pixels = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5
    writer = GenEvalWriter(tmp_path)
    writer.add(0, TWO_OBJECT, [Image.fromarray(pixels), Image.fromarray(255 - pixels)])
    writer.add(1, COUNTING, [Image.fromarray(pixels)])

    files = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if path.is_file())
    assert files == [
        "00000/metadata.jsonl",
        "00000/samples/00000.png",
        "00000/samples/00001.png",
        "00001/metadata.jsonl",
        "00001/samples/00000.png",
    ]
    assert (tmp_path / "00000/metadata.jsonl").read_bytes() == (
        b'{"tag": "two_object", "include": [{"class": "bench", "count": 1}, {"class": "dog", "count": 1}], '
        b'"prompt": "a photo of a bench and a dog"}\n'
    )
    assert (tmp_path / "00001/metadata.jsonl").read_bytes() == (
        b'{"tag": "counting", "include": [{"class": "cup", "count": 3}], "exclude": [{"class": "cup", "count": 4}], '
        b'"prompt": "a photo of three cups"}\n'
    )
    assert (tmp_path / "00000/samples/00000.png").read_bytes() == png_bytes(pixels)
    assert (tmp_path / "00000/samples/00001.png").read_bytes() == png_bytes(255 - pixels)


def test_metadata_file_parses_as_one_json_object_like_the_evaluator_reads_it(tmp_path):
    GenEvalWriter(tmp_path).add(3, COUNTING, [Image.new("RGB", (2, 2))])
    with open(tmp_path / "00003/metadata.jsonl") as handle:
        assert json.load(handle) == COUNTING


def test_tensor_images_in_zero_one_are_written_as_rounded_uint8(tmp_path):
    image = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1).expand(3, 2, 2)
    GenEvalWriter(tmp_path).add(0, TWO_OBJECT, image.unsqueeze(0))
    written = np.asarray(Image.open(tmp_path / "00000/samples/00000.png"))
    assert written.shape == (2, 2, 3)
    assert written[0, 0].tolist() == [0, 128, 255]


def test_adding_more_images_to_a_prompt_continues_the_numbering(tmp_path):
    writer = GenEvalWriter(tmp_path)
    writer.add(0, TWO_OBJECT, [Image.new("RGB", (2, 2))])
    paths = writer.add(0, TWO_OBJECT, [Image.new("RGB", (2, 2)), Image.new("RGB", (2, 2))])
    assert [path.name for path in paths] == ["00001.png", "00002.png"]


def test_adding_another_prompt_under_a_used_index_is_an_error(tmp_path):
    writer = GenEvalWriter(tmp_path)
    writer.add(0, TWO_OBJECT, [Image.new("RGB", (2, 2))])
    with pytest.raises(ValueError, match="another prompt"):
        writer.add(0, COUNTING, [Image.new("RGB", (2, 2))])


def test_metadata_without_tag_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="tag"):
        GenEvalWriter(tmp_path).add(0, {"prompt": "a dog"}, [Image.new("RGB", (2, 2))])


def test_read_geneval_prompts_keeps_file_order(tmp_path):
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text(json.dumps(TWO_OBJECT) + "\n" + json.dumps(COUNTING) + "\n")
    assert read_geneval_prompts(path) == [TWO_OBJECT, COUNTING]


def test_results_reader_averages_per_tag_accuracies_not_images(tmp_path):
    # two_object: 3 of 4 images correct; counting: 0 of 2. Overall = (0.75 + 0) / 2, not 3 / 6.
    rows = [("two_object", True)] * 3 + [("two_object", False)] + [("counting", False)] * 2
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps({"tag": tag, "correct": ok, "reason": ""}) + "\n" for tag, ok in rows))
    assert read_geneval_results(path) == {
        "geneval/overall": pytest.approx(0.375),
        "geneval/two_object": pytest.approx(0.75),
        "geneval/counting": pytest.approx(0.0),
    }


def test_results_reader_rejects_lines_without_correct(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"tag": "counting"}) + "\n")
    with pytest.raises(ValueError, match="line 1"):
        read_geneval_results(path)
