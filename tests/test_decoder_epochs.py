"""How many decoder steps a phase takes and which cached rollouts they draw: by default one pass (epoch) over every
scored rollout, each drawn once; an explicit `decoder_steps_per_phase` is taken as it is."""

import collections

import pytest
import torch

from ranke_trl.config import RankEConfig
from ranke_trl.decoder import DecoderPhase
from ranke_trl.decoder import phase as phase_module
from ranke_trl.policy.janus import JanusVQCodec
from ranke_trl.rollout_buffer import RolloutBuffer


@pytest.fixture(scope="module")
def base_vq():
    from ranke_trl.tiny import build_tiny_janus

    return build_tiny_janus(seed=0).model.vqmodel


def make_phase(tmp_path, base_vq, **overrides):
    """A decoder phase with only L_cons on (no corpus needed), at the library's default schedule unless overridden."""
    import copy

    values = dict(output_dir=str(tmp_path), bf16=False, report_to="none", lambda_rbp=0.0, lambda_gan=0.0,
                  lambda_rec=0.0, lambda_cons=1.0, lambda_lpips=0.0, decoder_learning_rate=1e-3)
    values.update(overrides)
    return DecoderPhase(JanusVQCodec(copy.deepcopy(base_vq)), RankEConfig(**values), reward_fns=[])


def make_buffer(num_rollouts=32, group_size=8, unscored=()):
    buffer = RolloutBuffer()
    rewards = torch.rand(num_rollouts, generator=torch.Generator().manual_seed(0))
    rewards[list(unscored)] = float("nan")
    codes = torch.randint(0, 256, (num_rollouts, 64), generator=torch.Generator().manual_seed(1))
    buffer.add(codes, [f"p{i // group_size}" for i in range(num_rollouts)], torch.arange(num_rollouts) // group_size,
               rewards)
    return buffer


def record_draws(phase):
    """Replace the phase's decoder step by a recorder of the rows each step would train on."""
    drawn = []

    def step(rollouts, *args, **kwargs):
        drawn.append(rollouts.rows.tolist())
        phase.num_steps += 1
        return {}

    phase.step = step
    return drawn


def test_defaults_draw_every_scored_rollout_exactly_once_per_phase(tmp_path, base_vq):
    phase = make_phase(tmp_path, base_vq)  # decoder_steps_per_phase=None, decoder_epochs=1, decoder_batch_size=8
    buffer = make_buffer(32)
    drawn = record_draws(phase)
    metrics = phase.run(buffer, None)
    assert metrics["steps_this_phase"] == 4 == len(drawn)  # 32 rollouts / 8 per step
    assert sorted(row for batch in drawn for row in batch) == list(range(32))


def test_an_explicit_step_count_is_taken_whatever_the_cache_holds(tmp_path, base_vq):
    phase = make_phase(tmp_path, base_vq, decoder_steps_per_phase=3)
    drawn = record_draws(phase)
    metrics = phase.run(make_buffer(32), None)
    assert metrics["steps_this_phase"] == 3 == len(drawn) and metrics["decoder_steps"] == 3
    assert all(len(batch) == 8 for batch in drawn)


def test_unscored_rollouts_are_never_drawn_nor_counted(tmp_path, base_vq):
    phase = make_phase(tmp_path, base_vq)
    unscored = range(0, 32, 4)  # 8 of 32 have no reward
    drawn = record_draws(phase)
    metrics = phase.run(make_buffer(32, unscored=unscored), None)
    assert metrics["steps_this_phase"] == 3  # 24 scored rollouts / 8
    assert sorted(row for batch in drawn for row in batch) == [r for r in range(32) if r not in unscored]


def test_two_epochs_draw_every_rollout_twice_and_never_twice_in_one_batch(tmp_path, base_vq):
    phase = make_phase(tmp_path, base_vq, decoder_epochs=2.0)
    drawn = record_draws(phase)
    phase.run(make_buffer(28), None)  # 28 is no multiple of 8: batches straddle the two epochs
    assert len(drawn) == 7  # ceil(2 x 28 / 8)
    assert all(len(set(batch)) == len(batch) == 8 for batch in drawn)
    assert collections.Counter(row for batch in drawn for row in batch) == {row: 2 for row in range(28)}


def test_a_fraction_of_an_epoch_draws_that_share_of_distinct_rollouts(tmp_path, base_vq):
    phase = make_phase(tmp_path, base_vq, decoder_epochs=0.5)
    drawn = record_draws(phase)
    phase.run(make_buffer(32), None)
    rows = [row for batch in drawn for row in batch]
    assert len(drawn) == 2 and len(set(rows)) == len(rows) == 16


def test_one_epoch_over_a_cache_that_is_no_multiple_of_the_batch_sees_every_rollout(tmp_path, base_vq):
    phase = make_phase(tmp_path, base_vq)
    drawn = record_draws(phase)
    phase.run(make_buffer(30, group_size=6), None)
    rows = [row for batch in drawn for row in batch]
    assert len(drawn) == 4 and set(rows) == set(range(30))  # ceil(30 / 8); the last batch starts the next epoch
    assert all(len(set(batch)) == 8 for batch in drawn)


def test_several_processes_split_each_global_minibatch_into_disjoint_slices(tmp_path, base_vq, monkeypatch):
    monkeypatch.setattr(phase_module, "_world_size", lambda: 2)
    phase = make_phase(tmp_path, base_vq)
    buffer = make_buffer(32)
    num_steps = phase.steps_per_phase(buffer)
    assert num_steps == 2  # a global batch is 8 rollouts on each of 2 processes
    draw = lambda rank: buffer.minibatches(8, num_steps, generator=torch.Generator().manual_seed(5),  # noqa: E731
                                           process_index=rank, num_processes=2)
    slices = list(zip(draw(0), draw(1)))
    for first, second in slices:
        assert len(first) == len(second) == 8 and not set(first.rows.tolist()) & set(second.rows.tolist())
    everything = [row for pair in slices for part in pair for row in part.rows.tolist()]
    assert sorted(everything) == list(range(32))


def test_a_resumed_phase_draws_the_batches_of_the_uninterrupted_run(tmp_path, base_vq):
    straight = make_phase(tmp_path, base_vq)
    straight_draws = record_draws(straight)
    for _ in range(2):
        straight.run(make_buffer(32), None)
    first = make_phase(tmp_path, base_vq)
    record_draws(first)
    first.run(make_buffer(32), None)
    resumed = make_phase(tmp_path, base_vq)
    resumed.load_state_dict(first.state_dict())
    resumed_draws = record_draws(resumed)
    resumed.run(make_buffer(32), None)
    assert resumed_draws == straight_draws[4:]
    assert straight_draws[4:] != straight_draws[:4]  # the second phase is a fresh shuffle, not a replay


def test_a_real_phase_logs_its_step_count_and_trains_that_many_steps(tmp_path, base_vq):
    phase = make_phase(tmp_path, base_vq, decoder_batch_size=4)
    metrics = phase.run(make_buffer(8, group_size=4), None)
    assert metrics["steps_this_phase"] == 2 and metrics["decoder_steps"] == 2
    assert phase.ema_teacher.num_updates == 2 and "loss_cons" in metrics


@pytest.mark.parametrize("setting", [{"decoder_epochs": 0.0}, {"decoder_epochs": float("nan")},
                                     {"decoder_steps_per_phase": 0}])
def test_schedule_settings_out_of_range_are_refused(tmp_path, setting):
    with pytest.raises(ValueError, match=next(iter(setting))):
        RankEConfig(output_dir=str(tmp_path), report_to="none", bf16=False, **setting)
