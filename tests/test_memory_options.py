"""Memory options: gradient checkpointing of the policy (TRL's `gradient_checkpointing`) through the teacher-forced
image forward, and of the VQ decoder in Stage 2 (`decoder_gradient_checkpointing`). Each keeps fewer activations
for the backward pass and leaves the update unchanged. (Their savings at scale: `benchmarks/decoder_overhead.py`.)"""

import copy

import pytest
import torch
from datasets import Dataset

from ranke_trl import RankEConfig, RankEGRPOTrainer
from ranke_trl.decoder import DecoderPhase
from ranke_trl.policy import JanusPolicy
from ranke_trl.policy.janus import JanusVQCodec
from ranke_trl.rollout_buffer import RolloutBuffer


def saved_bytes(fn) -> tuple[int, object]:
    """Bytes of the tensors autograd keeps for the backward pass while `fn()` runs, and `fn()`'s result."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return total, out


def _teacher_forced_loss(model, policy, codes):
    batch = policy.encode_prompts(["a red square", "two blue circles"])
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, image_codes=codes,
                image_code_kwargs=dict(guidance_scale=5.0, temperature=1.0, mode="guided", compute_entropy=False))
    return out.log_probs.mean()


def test_policy_checkpointing_keeps_fewer_activations_through_the_image_forward(tiny_janus, tiny_processor):
    policy = JanusPolicy(tiny_processor, tiny_janus)
    policy.prepare_for_training(tiny_janus)
    tiny_janus.train()
    codes = torch.randint(0, policy.codebook_size, (2, policy.num_image_tokens))
    plain_bytes, loss = saved_bytes(lambda: _teacher_forced_loss(tiny_janus, policy, codes))
    plain_grad = torch.autograd.grad(loss, tiny_janus.model.generation_head.vision_head.weight)[0]
    tiny_janus.gradient_checkpointing_enable()
    ckpt_bytes, loss = saved_bytes(lambda: _teacher_forced_loss(tiny_janus, policy, codes))
    ckpt_grad = torch.autograd.grad(loss, tiny_janus.model.generation_head.vision_head.weight)[0]
    assert ckpt_bytes < plain_bytes
    torch.testing.assert_close(ckpt_grad, plain_grad)


def test_policy_checkpointing_gives_the_same_grpo_update(tmp_path, tiny_processor):
    from ranke_trl.tiny import build_tiny_janus

    heads, initial = [], build_tiny_janus(seed=0).model.generation_head.vision_head.weight
    for checkpointing in (False, True):
        trainer = RankEGRPOTrainer(
            model=build_tiny_janus(seed=0),
            reward_funcs=[lambda prompts, completions, **kw: [float(im[0].mean()) for im in completions]],
            args=RankEConfig(
                output_dir=str(tmp_path / str(checkpointing)), bf16=False, per_device_train_batch_size=8,
                num_generations=4, max_steps=1, learning_rate=1e-2, report_to=[], save_strategy="no",
                train_decoder=False, log_images_steps=0, seed=0, activation_checkpointing=checkpointing,
            ),
            train_dataset=Dataset.from_dict({"prompt": ["a red square", "a blue circle"] * 4}),
            processing_class=tiny_processor,
        )
        trainer.train()
        assert trainer.model.model.language_model.layers[0].gradient_checkpointing == checkpointing
        heads.append(trainer.model.model.generation_head.vision_head.weight.detach())
    assert not torch.equal(heads[0], initial)
    torch.testing.assert_close(heads[0], heads[1])


@pytest.fixture(scope="module")
def base_vq():
    from ranke_trl.tiny import build_tiny_janus

    return build_tiny_janus(seed=0).model.vqmodel


def _decoder_grads(codec, codes):
    params = codec.decoder_parameters()
    for p in params:
        p.requires_grad_(True)
    nbytes, loss = saved_bytes(lambda: codec.decode(codes).square().mean())
    return nbytes, torch.autograd.grad(loss, params)


def test_decoder_checkpointing_keeps_fewer_activations_and_the_same_gradients(base_vq):
    codes = torch.randint(0, 256, (2, 64))
    plain = JanusVQCodec(copy.deepcopy(base_vq))
    checkpointed = JanusVQCodec(copy.deepcopy(base_vq))
    checkpointed.enable_decoder_checkpointing()
    plain_bytes, plain_grads = _decoder_grads(plain, codes)
    ckpt_bytes, ckpt_grads = _decoder_grads(checkpointed, codes)
    assert ckpt_bytes < plain_bytes
    for a, b in zip(plain_grads, ckpt_grads):
        torch.testing.assert_close(a, b)


def test_copy_of_a_checkpointed_decoder_runs_its_own_weights(base_vq):
    # The EMA teacher is a deep copy of the codec: its blocks must not call back into the student's.
    student = JanusVQCodec(copy.deepcopy(base_vq))
    student.enable_decoder_checkpointing()
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in teacher.decoder_parameters():
            p.mul_(0.5)
    codes = torch.randint(0, 256, (1, 64))
    assert not torch.allclose(teacher.decode(codes), student.decode(codes))


def _phase_step(base_vq, checkpointing: bool) -> dict[str, torch.Tensor]:
    args = RankEConfig(output_dir="unused", bf16=False, report_to=[], lambda_rbp=0.0, lambda_lpips=0.0,
                       decoder_learning_rate=1e-3, decoder_gradient_checkpointing=checkpointing, seed=0)
    codec = JanusVQCodec(copy.deepcopy(base_vq))
    torch.manual_seed(0)
    phase = DecoderPhase(codec, args)
    buffer = RolloutBuffer("clear")
    generator = torch.Generator().manual_seed(0)
    buffer.add(torch.randint(0, 256, (8, 64), generator=generator), ["a red square"] * 8,
               torch.arange(8) // 4, torch.rand(8, generator=generator))
    real = torch.rand(8, 3, 64, 64, generator=generator) * 2 - 1
    phase.run(buffer, [real], num_steps=1)
    return {k: v.clone() for k, v in codec.module.state_dict().items()}


def test_decoder_phase_with_checkpointing_takes_the_same_step(base_vq):
    plain, checkpointed = _phase_step(base_vq, False), _phase_step(base_vq, True)
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], msg=key)
    assert any(not torch.equal(plain[k], base_vq.state_dict()[k]) for k in plain if k.startswith("decoder."))
