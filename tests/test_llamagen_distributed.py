"""RankE on a tiny LlamaGen on two processes under DeepSpeed ZeRO-2 (CPU, gloo), with the shipped accelerate config.

One job of the ZeRO-2 launch (`accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 2
tests/distributed_worker.py ... --then --backbone llamagen --ddp_backend gloo`, the `zero2_launch` fixture in
conftest.py, which runs Janus's ZeRO-2 job of `tests/test_distributed.py` in the same processes) runs the
`tiny_llamagen_clip` recipe: 2 steps with a decoder phase after each and a checkpoint at step 2, a save of the whole
system, then a fresh trainer resuming to step 3. The tests compare what the two ranks wrote (see
`tests/test_distributed.py` for Janus on DDP, ZeRO-2 and ZeRO-3).
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.distributed

HEAD = "lm_head.weight"  # LlamaGen's code classifier


@pytest.fixture(scope="module")
def ranks(zero2_launch):
    """`(out_dir, [rank0, rank1])` of the LlamaGen job of the ZeRO-2 launch."""
    return zero2_launch["llamagen"]


@pytest.fixture(scope="module")
def initial():
    """The model the run starts from: the recipe's 'tiny_llamagen' source with the worker's seed 0."""
    from ranke_trl.models.llamagen.tiny_llamagen import build_tiny_llamagen

    return build_tiny_llamagen(seed=0)


def _differing(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_launch_is_deepspeed_on_two_processes(ranks):
    _, (rank0, rank1) = ranks
    assert rank0["num_processes"] == rank1["num_processes"] == 2
    assert rank0["distributed_type"] == "DistributedType.DEEPSPEED"
    assert rank0["ref_type"] == "DeepSpeedEngine" and not rank0["policy_partitioned_at_init"]


def test_every_rank_starts_from_the_whole_model(ranks, initial):
    _, ranks = ranks
    for rank in ranks:
        assert not _differing(rank["decoder_init"], initial.model.vqmodel.state_dict())
        assert torch.equal(rank["policy_init"][HEAD], initial.lm_head.weight)
        assert not _differing(rank["ref_init"], rank["policy_init"])


def test_policy_and_decoder_train_and_ranks_agree(ranks):
    _, (rank0, rank1) = ranks
    assert not torch.equal(rank0["policy_run1"][HEAD], rank0["policy_init"][HEAD])
    assert torch.equal(rank0["policy_run1"][HEAD], rank1["policy_run1"][HEAD])
    assert rank0["decoder_phases_run1"] == 2
    assert _differing(rank0["decoder_init"], rank0["decoder_run1"])
    assert not _differing(rank0["decoder_run1"], rank1["decoder_run1"])
    assert not _differing(rank0["decoder_run2"], rank1["decoder_run2"])


def test_resume_restores_policy_decoder_and_reference_then_continues(ranks):
    _, (rank0, rank1) = ranks
    for rank in (rank0, rank1):
        assert not _differing(rank["begin_run2"]["decoder"], rank0["decoder_run1"])
        assert torch.equal(rank["begin_run2"]["policy"][HEAD], rank0["policy_run1"][HEAD])
        assert torch.equal(rank["begin_run2"]["ref"][HEAD], rank0["ref_run1"][HEAD])
        assert rank["global_step_run2"] == 3 and rank["decoder_phases_run2"] == 3
    assert _differing(rank0["decoder_run2"], rank0["decoder_run1"])


def test_saved_system_reloads_as_llamagen_with_the_trained_policy_and_decoder(ranks):
    from ranke_trl.models.llamagen import LlamaGenForImageGeneration, LlamaGenVQVAE

    out, (rank0, _) = ranks
    final = os.path.join(out, "final")
    whole = LlamaGenForImageGeneration.from_pretrained(final)
    assert not _differing(whole.model.vqmodel.state_dict(), rank0["decoder_run1"])
    assert not _differing(LlamaGenVQVAE.from_pretrained(final, subfolder="decoder").state_dict(), rank0["decoder_run1"])
    assert torch.equal(whole.lm_head.weight, rank0["policy_run1"][HEAD])
