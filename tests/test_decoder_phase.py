"""`DecoderPhase`, the Stage 2 M-step, on a tiny Janus VQ (64 px, 8x8 codes, codebook 256): what each loss term
does to the decoder, what it must never touch, the EMA teacher, the non-finite guard and checkpoint resume."""

import copy
import io
import itertools
import os

import pytest
import torch
from torch import nn

from ranke_trl.config import RankEConfig
from ranke_trl.decoder import DecoderPhase
from ranke_trl.policy.janus import JanusVQCodec
from ranke_trl.rollout_buffer import RolloutBuffer

TERMS = ("rbp", "gan", "rec", "cons")


class RedReward:
    """A differentiable stand-in reward: the mean red channel of [0, 1] images, times a parameter the decoder
    phase must never give a gradient to."""

    is_differentiable = True

    def __init__(self, nan: bool = False):
        self.scale = nn.Parameter(torch.ones(()))
        self.nan = nan
        self.calls = 0

    def score(self, images01, prompts):
        self.calls += 1
        red = self.scale * images01[:, 0].mean(dim=(1, 2))
        return red * float("nan") if self.nan else red


class BlackBoxReward:
    is_differentiable = False


@pytest.fixture(scope="module")
def base_vq():
    from ranke_trl.tiny import build_tiny_janus

    return build_tiny_janus(seed=0).model.vqmodel


@pytest.fixture
def codec(base_vq):
    return JanusVQCodec(copy.deepcopy(base_vq))


def make_args(tmp_path, **overrides):
    """Every loss off, fast optimisers, a small PatchGAN; tests switch on what they check."""
    values = dict(
        output_dir=str(tmp_path), bf16=False, report_to="none", lambda_rbp=0.0, lambda_gan=0.0, lambda_rec=0.0,
        lambda_cons=0.0, lambda_lpips=0.0, decoder_learning_rate=1e-3, discriminator_learning_rate=1e-3,
        decoder_weight_decay=0.0, decoder_max_grad_norm=None, discriminator_channels=8, discriminator_layers=2,
        decoder_batch_size=4,
    )
    values.update(overrides)
    return RankEConfig(**values)


def make_buffer(num_rollouts=8, group_size=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    buffer = RolloutBuffer()
    codes = torch.randint(0, 256, (num_rollouts, 64), generator=gen)
    prompts = [f"p{i // group_size}" for i in range(num_rollouts)]
    buffer.add(codes, prompts, torch.arange(num_rollouts) // group_size, torch.rand(num_rollouts, generator=gen))
    return buffer


def rollouts(buffer=None, seed=0):
    buffer = buffer or make_buffer()
    return buffer.minibatches(4, 1, generator=torch.Generator().manual_seed(seed))[0]


def real_images(batch=2, seed=0):
    low = torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return nn.functional.interpolate(low, size=64, mode="bilinear")  # smooth images in [-1, 1]


def perturb(phase, scale=0.05):
    """Move the student away from its EMA teacher, so L_cons has something to pull back."""
    with torch.no_grad():
        for p in phase.decoder_params:
            p.add_(scale * torch.randn_like(p))


def snapshot(params):
    return [p.detach().clone() for p in params]


# ---------------------------------------------------------------------------------------------- direction of each term
def test_reward_term_raises_the_reward_of_decoded_rollouts(tmp_path, codec):
    reward, batch = RedReward(), rollouts()
    phase = DecoderPhase(codec, make_args(tmp_path, lambda_rbp=1.0), [reward])
    def score():
        return reward.score(((codec.decode(batch.codes) + 1) / 2).clamp(0, 1), batch.prompts).mean().item()

    before = score()
    for _ in range(5):
        phase.step(batch)
    assert score() > before + 1e-3


def test_reconstruction_term_lowers_l1_on_the_corpus_batch(tmp_path, codec):
    phase = DecoderPhase(codec, make_args(tmp_path, lambda_rec=1.0))
    real = real_images()
    before = phase.reconstruction_error(real)
    for _ in range(5):
        phase.step(rollouts(), real)
    assert phase.reconstruction_error(real) < before - 1e-3


def test_consistency_term_pulls_the_student_towards_the_teacher(tmp_path, codec):
    phase = DecoderPhase(codec, make_args(tmp_path, lambda_cons=1.0, ema_decay=0.999))
    perturb(phase)
    batch = rollouts()
    first = phase.step(batch)["loss_cons"]
    for _ in range(4):
        last = phase.step(batch)["loss_cons"]
    assert last < 0.9 * first


def test_gan_term_raises_a_fixed_discriminators_logits_on_rollouts(tmp_path, codec):
    phase = DecoderPhase(codec, make_args(tmp_path, lambda_gan=1.0, discriminator_learning_rate=0.0))
    batch, real = rollouts(), real_images()
    disc_before = snapshot(phase.discriminator.parameters())
    logit = lambda: phase.discriminator(codec.decode(batch.codes)).mean().item()  # noqa: E731
    before = logit()
    for _ in range(5):
        phase.step(batch, real)
    assert logit() > before + 1e-3
    assert all(torch.equal(a, b) for a, b in zip(disc_before, phase.discriminator.parameters()))


# ---------------------------------------------------------------------------------------------- what must not move
@pytest.mark.parametrize("term", TERMS)
def test_each_term_trains_only_the_decoder_side_of_the_codec(tmp_path, codec, term):
    reward = RedReward()
    phase = DecoderPhase(codec, make_args(tmp_path, **{f"lambda_{term}": 1.0}), [reward])
    perturb(phase)
    trainable = {id(p) for p in phase.decoder_params}
    before = {name: p.detach().clone() for name, p in codec.module.named_parameters()}
    phase.step(rollouts(), real_images())
    changed = {name for name, p in codec.module.named_parameters() if not torch.equal(p, before[name])}
    frozen = [(name, p) for name, p in codec.module.named_parameters() if id(p) not in trainable]
    assert any(name.startswith("encoder.") for name, _ in frozen) and "quantize.embedding.weight" in dict(frozen)
    assert all(not p.requires_grad and p.grad is None and name not in changed for name, p in frozen)
    assert any(name.startswith("decoder.") for name in changed)
    assert reward.scale.grad is None  # nothing outside the codec gets a gradient


def test_train_codebook_lets_the_codebook_learn(tmp_path, codec):
    phase = DecoderPhase(codec, make_args(tmp_path, lambda_rbp=1.0, train_codebook=True), [RedReward()])
    codebook = codec.module.quantize.embedding.weight
    before = codebook.detach().clone()
    phase.step(rollouts())
    assert codebook.requires_grad and not torch.equal(codebook, before)
    assert all(p.grad is None for p in codec.module.encoder.parameters())


def test_bf16_autocast_step_updates_the_decoder(tmp_path, codec):
    args = make_args(tmp_path, lambda_rbp=0.5, lambda_gan=0.1, lambda_rec=1.0, lambda_cons=1.0, decoder_bf16=True)
    phase = DecoderPhase(codec, args, [RedReward()])
    before = snapshot(phase.decoder_params)
    # One group of 2 rollouts and one corpus image: bf16 is emulated (slow) on CPUs without AVX-512 BF16.
    batch = make_buffer(num_rollouts=2, group_size=2).minibatches(2, 1, generator=torch.Generator().manual_seed(0))[0]
    metrics = phase.step(batch, real_images(batch=1))
    assert metrics["nonfinite_skipped"] == 0.0
    assert any(not torch.equal(a, b) for a, b in zip(before, phase.decoder_params))
    assert all(p.dtype == torch.float32 for p in phase.decoder_params)  # autocast, not a bf16 cast of the weights


# ---------------------------------------------------------------------------------------------- λ = 0 computes nothing
@pytest.mark.parametrize("lambda_rbp, expected_calls", [(0.0, 0), (1.0, 1)])
def test_zero_lambda_rbp_never_scores_the_reward(tmp_path, codec, lambda_rbp, expected_calls):
    reward = RedReward()
    phase = DecoderPhase(codec, make_args(tmp_path, lambda_rbp=lambda_rbp, lambda_cons=1.0), [reward])
    phase.step(rollouts())
    assert reward.calls == expected_calls


@pytest.mark.parametrize("lambda_gan, expected_calls", [(0.0, 0), (1.0, 2)])
def test_zero_lambda_gan_builds_and_runs_no_discriminator(tmp_path, codec, lambda_gan, expected_calls, monkeypatch):
    import ranke_trl.decoder.phase as phase_module

    calls = []
    original = phase_module.PatchDiscriminator.forward
    counting = lambda self, x: (calls.append(1), original(self, x))[1]  # noqa: E731
    monkeypatch.setattr(phase_module.PatchDiscriminator, "forward", counting)
    phase = DecoderPhase(codec, make_args(tmp_path, lambda_gan=lambda_gan, lambda_rec=1.0))
    metrics = phase.step(rollouts(), real_images())
    assert len(calls) == expected_calls  # generator pass + one [real; fake] discriminator pass
    assert (phase.discriminator is None) == (lambda_gan == 0) and ("disc_loss" in metrics) == (lambda_gan > 0)


@pytest.mark.parametrize("lambda_rec, expected_decodes", [(0.0, 1), (1.0, 2)])
def test_zero_lambda_rec_never_decodes_corpus_codes(tmp_path, codec, lambda_rec, expected_decodes):
    lpips_calls = []
    phase = DecoderPhase(codec, make_args(tmp_path, lambda_rec=lambda_rec, lambda_rbp=1.0, lambda_lpips=1.0),
                         [RedReward()], lpips=lambda x, y: (lpips_calls.append(1), (x - y).abs().mean())[1])
    decodes, original = [], codec.decode
    codec.decode = lambda codes: (decodes.append(1), original(codes))[1]
    phase.step(rollouts(), real_images())
    assert len(decodes) == expected_decodes and len(lpips_calls) == expected_decodes - 1


@pytest.mark.parametrize("lambda_cons, expected_calls", [(0.0, 0), (1.0, 1)])
def test_zero_lambda_cons_runs_no_ema_teacher(tmp_path, codec, lambda_cons, expected_calls):
    phase = DecoderPhase(codec, make_args(tmp_path, lambda_cons=lambda_cons, lambda_rbp=1.0), [RedReward()])
    assert (phase.ema_teacher is None) == (lambda_cons == 0)
    calls = []
    if phase.ema_teacher is not None:
        original = phase.ema_teacher.codec.decode
        phase.ema_teacher.codec.decode = lambda codes: (calls.append(1), original(codes))[1]
    phase.step(rollouts())
    assert len(calls) == expected_calls


def test_all_zero_lambdas_are_rejected(tmp_path, codec):
    with pytest.raises(ValueError, match="train_decoder=False"):
        DecoderPhase(codec, make_args(tmp_path))


def test_lambda_rbp_without_a_differentiable_reward_is_rejected(tmp_path, codec):
    with pytest.raises(ValueError, match="differentiable reward"):
        DecoderPhase(codec, make_args(tmp_path, lambda_rbp=0.5), [BlackBoxReward()])


def test_lpips_weights_path_that_does_not_exist_is_rejected(tmp_path, codec):
    args = make_args(tmp_path, lambda_rec=1.0, lambda_lpips=1.0, lpips_net="alex",
                     lpips_weights_path=str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="lpips_weights_path"):
        DecoderPhase(codec, args)


def test_step_needs_corpus_images_for_rec_or_gan(tmp_path, codec):
    phase = DecoderPhase(codec, make_args(tmp_path, lambda_rec=1.0))
    with pytest.raises(ValueError, match="real_pixels"):
        phase.step(rollouts())


# ---------------------------------------------------------------------------------------------- EMA teacher
def test_ema_teacher_follows_the_exact_update_after_each_step(tmp_path, codec):
    mu = 0.9
    phase = DecoderPhase(codec, make_args(tmp_path, lambda_cons=1.0, lambda_rbp=1.0, ema_decay=mu), [RedReward()])
    perturb(phase)
    for _ in range(2):
        previous = snapshot(phase.ema_teacher.params)
        phase.step(rollouts())
        for teacher, old, student in zip(phase.ema_teacher.params, previous, phase.decoder_params):
            torch.testing.assert_close(teacher, mu * old + (1 - mu) * student.detach(), rtol=0, atol=1e-6)
    assert phase.ema_teacher.num_updates == 2


def test_bf16_teacher_keeps_an_fp32_master_that_follows_the_update(tmp_path, codec):
    mu = 0.99
    phase = DecoderPhase(codec, make_args(tmp_path, lambda_cons=1.0, lambda_rbp=1.0, ema_decay=mu,
                                          ema_dtype="bfloat16"), [RedReward()])
    teacher = phase.ema_teacher
    previous = snapshot(teacher.master)
    phase.step(rollouts())
    for master, old, student, param in zip(teacher.master, previous, phase.decoder_params, teacher.params):
        torch.testing.assert_close(master, mu * old + (1 - mu) * student.detach(), rtol=0, atol=1e-6)
        assert param.dtype == torch.bfloat16 and torch.equal(param, master.to(torch.bfloat16))
    assert codec.module.encoder.conv_in.weight.dtype == torch.float32  # the student is untouched


# ---------------------------------------------------------------------------------------------- non-finite guard
def test_non_finite_loss_skips_the_update_and_is_counted(tmp_path, codec):
    reward = RedReward(nan=True)
    phase = DecoderPhase(codec, make_args(tmp_path, lambda_rbp=1.0, lambda_cons=1.0), [reward])
    student, teacher = snapshot(phase.decoder_params), snapshot(phase.ema_teacher.params)
    metrics = phase.step(rollouts())
    assert metrics["nonfinite_skipped"] == 1.0 and phase.total_nonfinite == 1
    assert all(torch.equal(a, b) for a, b in zip(student, phase.decoder_params))
    assert all(torch.equal(a, b) for a, b in zip(teacher, phase.ema_teacher.params))
    reward.nan = False
    assert phase.step(rollouts())["nonfinite_skipped"] == 0.0 and phase.consecutive_nonfinite == 0


def test_persistent_non_finite_loss_raises(tmp_path, codec):
    args = make_args(tmp_path, lambda_rbp=1.0, max_nonfinite_decoder_steps=3)
    phase = DecoderPhase(codec, args, [RedReward(nan=True)])
    phase.step(rollouts())
    phase.step(rollouts())
    with pytest.raises(RuntimeError, match="max_nonfinite_decoder_steps=3"):
        phase.step(rollouts())


# ---------------------------------------------------------------------------------------------- a phase, and resume
def test_run_returns_phase_averages_of_every_term(tmp_path, codec):
    args = make_args(tmp_path, lambda_rbp=0.5, lambda_gan=0.1, lambda_rec=1.0, lambda_cons=1.0)
    phase = DecoderPhase(codec, args, [RedReward()])
    metrics = phase.run(make_buffer(), itertools.repeat(real_images()), num_steps=2)
    expected = {"loss", "loss_rbp", "loss_gan", "loss_rec", "loss_cons", "rec_l1", "rank_weight_max", "rank_weight_ess",
                "disc_loss", "disc_real_logit", "disc_fake_logit", "grad_norm_decoder", "grad_norm_disc",
                "nonfinite_skipped", "buffer_size", "decoder_steps"}
    assert expected <= set(metrics) and metrics["decoder_steps"] == 2 and metrics["nonfinite_skipped"] == 0
    assert 1.0 <= metrics["rank_weight_ess"] <= 4.0


def test_run_fails_clearly_when_the_corpus_runs_out(tmp_path, codec):
    phase = DecoderPhase(codec, make_args(tmp_path, lambda_rec=1.0))
    with pytest.raises(ValueError, match="ran out"):
        phase.run(make_buffer(), [real_images()], num_steps=2)


def test_resume_from_state_dict_matches_an_uninterrupted_run(tmp_path, base_vq):
    args = make_args(tmp_path, lambda_rbp=0.5, lambda_gan=0.1, lambda_rec=1.0, lambda_cons=1.0, ema_decay=0.9)
    batches = make_buffer().minibatches(4, 3, generator=torch.Generator().manual_seed(0))  # 2 steps, then 1 resumed
    reals = [real_images(seed=i) for i in range(3)]

    def new_phase(decoder_state=None):
        codec = JanusVQCodec(copy.deepcopy(base_vq))
        if decoder_state is not None:
            codec.module.load_state_dict(decoder_state)
        torch.manual_seed(123)  # same discriminator init; a resumed one is overwritten by the checkpoint anyway
        return DecoderPhase(codec, args, [RedReward()])

    straight = new_phase()
    for batch, real in zip(batches, reals):
        straight.step(batch, real)

    first = new_phase()
    for batch, real in zip(batches[:2], reals[:2]):
        first.step(batch, real)
    checkpoint = io.BytesIO()
    torch.save({"phase": first.state_dict(), "vq": first.codec.module.state_dict()}, checkpoint)
    checkpoint.seek(0)
    saved = torch.load(checkpoint, weights_only=True)
    resumed = new_phase(saved["vq"])
    resumed.load_state_dict(saved["phase"])
    for batch, real in zip(batches[2:], reals[2:]):
        resumed.step(batch, real)

    pairs = [
        (straight.codec.module.parameters(), resumed.codec.module.parameters()),
        (straight.discriminator.parameters(), resumed.discriminator.parameters()),
        (straight.ema_teacher.params, resumed.ema_teacher.params),
    ]
    for a_params, b_params in pairs:
        for a, b in zip(a_params, b_params):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert len(batches) == 3 and resumed.num_steps == straight.num_steps == 3


# ---------------------------------------------------------------------------------------------- several processes
def _distributed_worker(rank, world_size, init_file, out_dir):
    import torch.distributed as dist

    from ranke_trl.tiny import build_tiny_janus

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)  # the same discriminator init on every rank, as a seeded trainer gives
    codec = JanusVQCodec(build_tiny_janus(seed=0).model.vqmodel)
    args = make_args(out_dir, lambda_rbp=1.0, lambda_gan=0.1, lambda_cons=1.0, decoder_batch_size=2)
    phase = DecoderPhase(codec, args, [RedReward()])
    # Each rank trains on its own slice of every minibatch and its own corpus images: only the averaged
    # gradients keep the ranks identical.
    metrics = phase.run(make_buffer(), itertools.repeat(real_images(seed=rank)), num_steps=2)
    flat = torch.cat([p.detach().reshape(-1) for p in [*phase.decoder_params, *phase.discriminator.parameters()]])
    torch.save({"params": flat, "metrics": metrics}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.distributed
def test_ranks_stay_identical_under_torch_distributed(tmp_path):
    import torch.multiprocessing as mp

    # Forked, not spawned: a spawned rank re-imports this module and the library before it starts.
    mp.start_processes(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(results[0]["params"], results[1]["params"])
    assert results[0]["metrics"] == results[1]["metrics"]  # metrics are averaged across ranks


def test_rank_gan_weights_of_a_phase_are_normalised_over_each_full_group(tmp_path, codec, monkeypatch):
    from ranke_trl.decoder.losses import rank_gan_weights

    phase = DecoderPhase(codec, make_args(tmp_path, lambda_gan=1.0, rank_gan_temperature=0.5, decoder_batch_size=3))
    buffer = make_buffer(num_rollouts=8, group_size=4)
    expected = rank_gan_weights(buffer.rewards, buffer.group_ids, 0.5)
    seen = []
    monkeypatch.setattr(phase, "step", lambda rollouts, pixels, codes, weights: seen.append((rollouts, weights)) or {})
    phase.run(buffer, itertools.repeat(real_images(3)), num_steps=3)
    # Minibatches of 3 rows never hold a whole group of 4, yet each row keeps its full-group weight.
    assert len(seen) == 3
    for batch, weights in seen:
        assert torch.allclose(weights, expected[batch.rows])
