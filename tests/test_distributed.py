"""RankE on two processes with the shipped accelerate configs: DDP, DeepSpeed ZeRO-2 and ZeRO-3 (CPU, gloo).

Each configuration is launched once (`accelerate launch --config_file recipes/accelerate/<cfg>.yaml
--num_processes 2 tests/distributed_worker.py`) on the tiny recipe: 2 steps with a decoder phase after each and a
checkpoint at step 2, a save of the whole system, then a fresh trainer resuming to step 3. The tests compare what the
two ranks wrote. ZeRO-3 loads the policy with `from_pretrained`, so it is built partitioned (`zero.Init`), as a real
checkpoint is; its launch runs a full fine-tuning job, then a LoRA job. The ZeRO-2 launch also runs the LlamaGen job
of `tests/test_llamagen_distributed.py` (the `zero2_launch` fixture in conftest.py).

On CPU the launch needs one training argument accelerate cannot infer: `--use_cpu true` for DDP (gloo instead of
NCCL), `--ddp_backend gloo` for DeepSpeed. The first DeepSpeed launch on a machine compiles DeepSpeed's CPU
shared-memory op (about a minute, cached afterwards).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "ddp": ("ddp.yaml", ["--use_cpu", "true"]),
    "zero2": ("zero2.yaml", ["--ddp_backend", "gloo"]),
    "zero3": ("zero3.yaml", ["--ddp_backend", "gloo"]),
}
HEAD = "model.generation_head.vision_head.weight"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(config: str, out: str, extra: list[str]) -> list[dict]:
    """Run `tests/distributed_worker.py` on 2 processes with `recipes/accelerate/<config>`; returns each rank's dump."""
    return launch_jobs(config, [(out, extra)])[0]


def launch_jobs(config: str, jobs: list[tuple[str, list[str]]]) -> list[list[dict]]:
    """Run the worker's jobs `(out_dir, extra arguments)` one after another in one 2-process launch with
    `recipes/accelerate/<config>`; returns each job's rank dumps."""
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    worker_args = []
    for i, (out, extra) in enumerate(jobs):
        worker_args += [*(["--then"] if i else []), "--out", out, *extra]
    command = [
        accelerate, "launch", "--config_file", os.path.join("recipes", "accelerate", config), "--num_processes", "2",
        "--main_process_port", str(_free_port()), os.path.join("tests", "distributed_worker.py"), *worker_args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-6000:]}")
    return [[torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(2)] for out, _ in jobs]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from ranke_trl.tiny import save_tiny_janus

    return save_tiny_janus(tmp_path_factory.mktemp("tiny_janus"))


@pytest.fixture(scope="module")
def zero3_launch(tmp_path_factory, tiny_dir):
    """One ZeRO-3 launch of two jobs: full fine-tuning, then a LoRA adapter on the partitioned policy (the reference
    is the adapter-disabled base model). `{"full": (out_dir, ranks), "lora": (out_dir, ranks)}`."""
    pytest.importorskip("deepspeed")
    config, extra = CONFIGS["zero3"]
    extra = [*extra, "--model_name_or_path", tiny_dir]
    outs = {name: str(tmp_path_factory.mktemp(f"zero3_{name}")) for name in ("full", "lora")}
    lora = ["--use_peft", "true", "--sync_ref_model", "false"]
    full_ranks, lora_ranks = launch_jobs(config, [(outs["full"], extra), (outs["lora"], [*extra, *lora])])
    return {"full": (outs["full"], full_ranks), "lora": (outs["lora"], lora_ranks)}


@pytest.fixture(scope="module", params=list(CONFIGS))
def run(request, tmp_path_factory):
    """`(name, out_dir, [rank0, rank1])` for one launched configuration."""
    if request.param == "zero2":
        return ("zero2", *request.getfixturevalue("zero2_launch")["janus"])
    if request.param == "zero3":
        return ("zero3", *request.getfixturevalue("zero3_launch")["full"])
    config, extra = CONFIGS[request.param]
    out = str(tmp_path_factory.mktemp(request.param))
    return request.param, out, launch(config, out, extra)


def _differing(a: dict, b: dict) -> list[str]:
    """Keys whose tensors differ (empty: identical)."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_launch_is_distributed_with_the_configured_backend(run):
    name, _, ranks = run
    assert all(r["num_processes"] == 2 for r in ranks)
    expected = "DistributedType.MULTI_CPU" if name == "ddp" else "DistributedType.DEEPSPEED"
    assert ranks[0]["distributed_type"] == expected
    # ZeRO-3 + from_pretrained builds the policy partitioned, the case the VQ and the reference must survive.
    assert ranks[0]["policy_partitioned_at_init"] == (name == "zero3")


@pytest.fixture(scope="module")
def initial():
    """The model every configuration starts from (the worker runs with seed 0; `tiny_dir` is the same model)."""
    from ranke_trl.tiny import build_tiny_janus

    return build_tiny_janus(seed=0)


def test_every_rank_starts_from_the_whole_model(run, initial):
    name, _, ranks = run
    vq = initial.model.vqmodel.state_dict()
    for rank in ranks:
        # Under ZeRO-3 the VQ and the reference are gathered out of partitioned parameters: not empty, not re-drawn.
        assert not _differing(rank["decoder_init"], vq)
        assert torch.equal(rank["policy_init"][HEAD], initial.model.generation_head.vision_head.weight)
        assert not _differing(rank["ref_init"], rank["policy_init"])
    assert ranks[0]["ref_type"] == ("JanusForConditionalGeneration" if name == "ddp" else "DeepSpeedEngine")


def test_decoder_is_identical_on_every_rank_after_the_decoder_phases(run):
    _, _, (rank0, rank1) = run
    assert rank0["decoder_phases_run1"] == 2
    assert not _differing(rank0["decoder_run1"], rank1["decoder_run1"])
    assert not _differing(rank0["decoder_run2"], rank1["decoder_run2"])
    assert _differing(rank0["decoder_init"], rank0["decoder_run1"])  # it did train


def test_policy_trains_and_ranks_agree(run):
    _, _, (rank0, rank1) = run
    assert not torch.equal(rank0["policy_run1"][HEAD], rank0["policy_init"][HEAD])
    assert torch.equal(rank0["policy_run1"][HEAD], rank1["policy_run1"][HEAD])


def test_ema_reference_moves_towards_the_policy(run):
    _, _, (rank0, _) = run  # ref_model_sync_steps=1, ref_model_mixup_alpha=0.5
    ref, policy = rank0["ref_run1"][HEAD], rank0["policy_run1"][HEAD]
    assert not torch.equal(ref, rank0["ref_init"][HEAD]) and not torch.equal(ref, policy)


def test_resume_restores_policy_decoder_and_reference_then_continues(run):
    _, _, (rank0, rank1) = run
    for rank in (rank0, rank1):
        assert not _differing(rank["begin_run2"]["decoder"], rank0["decoder_run1"])
        assert torch.equal(rank["begin_run2"]["policy"][HEAD], rank0["policy_run1"][HEAD])
        assert torch.equal(rank["begin_run2"]["ref"][HEAD], rank0["ref_run1"][HEAD])  # the EMA reference too
        assert rank["global_step_run2"] == 3 and rank["decoder_phases_run2"] == 3
    assert _differing(rank0["decoder_run2"], rank0["decoder_run1"])


def test_saved_system_holds_the_trained_policy_and_decoder(run):
    from transformers import JanusForConditionalGeneration, JanusVQVAE

    _, out, (rank0, _) = run
    final = os.path.join(out, "final")
    whole = JanusForConditionalGeneration.from_pretrained(final)
    # Under ZeRO-3 the engine's gathered weights hold no VQ: the trainer adds it, so the system loads complete.
    assert not _differing(whole.model.vqmodel.state_dict(), rank0["decoder_run1"])
    assert not _differing(JanusVQVAE.from_pretrained(final, subfolder="decoder").state_dict(), rank0["decoder_run1"])
    assert torch.equal(whole.model.generation_head.vision_head.weight, rank0["policy_run1"][HEAD])
    assert os.path.isfile(os.path.join(final, "README.md"))


@pytest.fixture(scope="module")
def lora_run(zero3_launch):
    """ZeRO-3 with a LoRA adapter on the partitioned policy (the reference is the adapter-disabled base model)."""
    return zero3_launch["lora"]


def test_lora_under_zero3_trains_only_the_adapter_and_ranks_agree(lora_run):
    _, (rank0, rank1) = lora_run
    assert rank0["ref_type"] == "NoneType"
    base = [k for k in rank0["policy_init"] if "base_layer" in k]
    lora_b = [k for k in rank0["policy_init"] if "lora_B" in k]
    assert base and lora_b
    assert not _differing({k: rank0["policy_run1"][k] for k in base}, {k: rank0["policy_init"][k] for k in base})
    assert all(rank0["policy_init"][k].abs().sum() == 0 < rank0["policy_run1"][k].abs().sum() for k in lora_b)
    assert not _differing(rank0["policy_run1"], rank1["policy_run1"])
    assert not _differing(rank0["decoder_run1"], rank1["decoder_run1"])
    assert _differing(rank0["decoder_init"], rank0["decoder_run1"])  # the decoder trains in full


def test_lora_under_zero3_resumes_and_saves_adapter_and_decoder(lora_run):
    from safetensors.torch import load_file
    from transformers import JanusVQVAE

    out, (rank0, _) = lora_run
    assert not _differing(rank0["begin_run2"]["policy"], rank0["policy_run1"])
    assert not _differing(rank0["begin_run2"]["decoder"], rank0["decoder_run1"])
    assert rank0["global_step_run2"] == 3
    saved = load_file(os.path.join(out, "final", "adapter_model.safetensors"))
    name = next(k for k in rank0["policy_run1"] if "vision_head.lora_B" in k)
    assert torch.equal(saved[name.replace(".default", "")], rank0["policy_run1"][name])
    decoder = JanusVQVAE.from_pretrained(os.path.join(out, "final"), subfolder="decoder").state_dict()
    assert not _differing(decoder, rank0["decoder_run1"])
