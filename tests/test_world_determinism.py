"""A ShapesWorld preparation is deterministic: the same seed, settings, library versions and thread count give the
same weights and the same quality figures, whatever state the process's random generators were left in."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from shapes_world.pretrain import STAGES, prepare_shapes_world

# Differ by design: wall times and the command line (manifest), and the lock of concurrent preparers.
NOT_COMPARED = {"manifest.json", ".prepare.lock"}


@pytest.fixture(scope="module")
def two_caches(tmp_path_factory):
    """The tiny world prepared twice in one process on one thread, into two fresh caches."""
    assert torch.get_num_threads() == 1  # conftest.py; the figures are only promised per thread count
    first = prepare_shapes_world(tmp_path_factory.mktemp("first"), tiny=True, seed=0, show_progress=False)
    torch.manual_seed(1234), np.random.seed(1234), random.seed(1234)  # global generators left elsewhere
    torch.rand(7), np.random.rand(7), random.random()
    second = prepare_shapes_world(tmp_path_factory.mktemp("second"), tiny=True, seed=0, show_progress=False)
    return Path(first), Path(second)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name not in NOT_COMPARED)


def _safetensors(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}


def test_two_preparations_record_the_same_quality_figures(two_caches):
    first, second = (json.loads((root / "manifest.json").read_text()) for root in two_caches)
    assert first["quality"] == second["quality"]
    for stage in STAGES:
        for key in ("quality", "train_log"):
            assert first["stages"][stage].get(key) == second["stages"][stage].get(key), (stage, key)
    assert first["identity"] == second["identity"] and first["versions"] == second["versions"]


def test_two_preparations_save_the_same_weights(two_caches):
    first, second = two_caches
    assert _files(first) == _files(second)
    weights = [name for name in _files(first) if name.endswith(".safetensors")]
    assert len(weights) >= 5  # feature net, FID reference, VQ, CLIP, policy
    for name in weights:
        (tensors_a, meta_a), (tensors_b, meta_b) = _safetensors(first / name), _safetensors(second / name)
        # Compared as tensors and a dict: safetensors writes its metadata in hash-map order, which varies by process.
        assert meta_a == meta_b and tensors_a.keys() == tensors_b.keys(), name
        for key, tensor in tensors_a.items():
            assert torch.equal(tensor, tensors_b[key]), (name, key)


def test_two_preparations_write_the_same_configs_byte_for_byte(two_caches):
    first, second = two_caches
    others = [name for name in _files(first) if not name.endswith(".safetensors")]
    assert "policy/config.json" in others and "vq/config.json" in others
    for name in others:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
