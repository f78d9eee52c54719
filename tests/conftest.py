"""Shared fixtures: tiny models built from configs (64 px, 8x8 codes, codebook 256, two-layer transformers)."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach the Hub
os.environ.setdefault("WANDB_MODE", "disabled")
# Tiny models run several times faster on one thread than on two (contended) cores; subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture
def tiny_janus():
    """A fresh, randomly initialised tiny `JanusForConditionalGeneration` in fp32 (seeded: the same every call)."""
    from ranke_trl.tiny import build_tiny_janus

    return build_tiny_janus(seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from ranke_trl.tiny import build_tiny_janus_tokenizer

    return build_tiny_janus_tokenizer()


@pytest.fixture(scope="session")
def tiny_processor():
    from ranke_trl.tiny import build_tiny_janus_processor

    return build_tiny_janus_processor()


@pytest.fixture(scope="session")
def tiny_janus_dir(tmp_path_factory):
    """A tiny Janus and its processor saved with `save_pretrained`, as a local 'Hub' directory."""
    from ranke_trl.tiny import save_tiny_janus

    return save_tiny_janus(tmp_path_factory.mktemp("tiny_janus"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A tiny ShapesWorld preparation (seconds of training, poor models), shared by every test that needs one."""
    from shapes_world.pretrain import prepare_shapes_world

    return prepare_shapes_world(tmp_path_factory.mktemp("shapes_world"), tiny=True, seed=0, show_progress=False)


@pytest.fixture(scope="session")
def zero2_launch(tmp_path_factory):
    """One 2-process DeepSpeed ZeRO-2 launch (`tests/distributed_worker.py`) running a Janus job, then a LlamaGen job,
    read by test_distributed.py and test_llamagen_distributed.py: `{backbone: (out_dir, [rank0, rank1])}`."""
    pytest.importorskip("deepspeed")
    from test_distributed import CONFIGS, launch_jobs

    config, extra = CONFIGS["zero2"]
    outs = {backbone: str(tmp_path_factory.mktemp(f"zero2_{backbone}")) for backbone in ("janus", "llamagen")}
    ranks = launch_jobs(config, [(outs["janus"], extra), (outs["llamagen"], ["--backbone", "llamagen", *extra])])
    return {backbone: (outs[backbone], r) for backbone, r in zip(outs, ranks)}
