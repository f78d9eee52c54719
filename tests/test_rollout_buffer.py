"""The rollout cache between Stage 1 and Stage 2: what it keeps, how it samples, and how it forgets."""

import pytest
import torch

from ranke_trl.rollout_buffer import RolloutBuffer

N = 4  # codes per rollout


def _add_groups(buffer, num_groups, group_size=2, start_reward=0.0):
    """Add `num_groups` prompt groups in one call; rollout i of the call has reward start_reward + i."""
    batch = num_groups * group_size
    codes = torch.arange(batch * N).reshape(batch, N)
    prompts = [f"prompt {i // group_size}" for i in range(batch)]
    rewards = start_reward + torch.arange(batch, dtype=torch.float32)
    buffer.add(codes, prompts, torch.arange(batch) // group_size, rewards)


def test_add_stores_detached_long_codes_on_cpu():
    buffer = RolloutBuffer()
    codes = torch.randint(0, 10, (2, N), dtype=torch.int32)
    buffer.add(codes, ["a", "a"], [0, 0], torch.tensor([0.5, 0.25], requires_grad=True))
    assert len(buffer) == 2
    assert buffer.codes.dtype == torch.long and buffer.codes.device.type == "cpu"
    assert not buffer.rewards.requires_grad
    assert torch.equal(buffer.codes, codes.long())


def test_group_ids_stay_unique_across_add_calls():
    buffer = RolloutBuffer(policy="fifo", max_size=100)
    _add_groups(buffer, num_groups=2)
    _add_groups(buffer, num_groups=2)  # labels 0, 1 again in the second call
    assert buffer.group_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]



def test_minibatches_carry_their_rows_buffer_indices():
    buffer = RolloutBuffer()
    _add_groups(buffer, num_groups=3, group_size=4)
    gen = torch.Generator().manual_seed(0)
    # Stage 2 looks its full-group Rank-GAN weights up by these indices.
    for batch in buffer.minibatches(3, 4, generator=gen):
        rows = [int(torch.nonzero((buffer.codes == c).all(dim=1))) for c in batch.codes]
        assert batch.rows.tolist() == rows
        assert batch.prompts == [buffer.prompts[r] for r in rows]
        assert torch.equal(batch.rewards, buffer.rewards[rows])


def test_minibatches_do_not_repeat_rows_within_a_pass():
    buffer = RolloutBuffer()
    _add_groups(buffer, num_groups=4)  # 8 rollouts
    batches = buffer.minibatches(4, 2, generator=torch.Generator().manual_seed(1))
    seen = torch.cat([b.codes[:, 0] for b in batches]).tolist()
    assert sorted(seen) == sorted(buffer.codes[:, 0].tolist())


def test_minibatches_give_each_process_a_disjoint_slice():
    buffer = RolloutBuffer()
    _add_groups(buffer, num_groups=4)
    slices = [
        buffer.minibatches(2, 1, generator=torch.Generator().manual_seed(3), process_index=rank,
                           num_processes=2)[0]
        for rank in range(2)
    ]
    rows = [set(s.codes[:, 0].tolist()) for s in slices]
    assert len(rows[0]) == len(rows[1]) == 2 and not rows[0] & rows[1]


def test_clear_policy_empties_the_buffer_at_end_of_phase():
    buffer = RolloutBuffer(policy="clear", max_size=4)
    _add_groups(buffer, num_groups=4)  # 'clear' ignores the bound until the phase ends
    buffer.end_phase()
    assert len(buffer) == 0
    with pytest.raises(ValueError, match="empty"):
        buffer.minibatches(2, 1)


def test_fifo_policy_evicts_the_oldest_whole_groups_on_add():
    buffer = RolloutBuffer(policy="fifo", max_size=5)
    _add_groups(buffer, num_groups=2, group_size=2)
    _add_groups(buffer, num_groups=1, group_size=3, start_reward=10.0)  # 7 > 5: drop group 0 (2 rows)
    assert len(buffer) == 5
    assert buffer.group_ids.tolist() == [1, 1, 2, 2, 2]
    assert buffer.rewards.tolist() == [2.0, 3.0, 10.0, 11.0, 12.0]
    buffer.end_phase()
    assert len(buffer) == 5  # 'fifo' keeps what fits


def test_state_dict_round_trip_restores_contents_and_group_counter():
    buffer = RolloutBuffer(policy="fifo", max_size=8)
    _add_groups(buffer, num_groups=2)
    restored = RolloutBuffer(policy="fifo", max_size=8)
    restored.load_state_dict(buffer.state_dict())
    for name in ("codes", "group_ids", "rewards"):
        assert torch.equal(getattr(restored, name), getattr(buffer, name))
    assert restored.prompts == buffer.prompts
    draw = lambda b: b.minibatches(2, 3, generator=torch.Generator().manual_seed(0))  # noqa: E731
    for x, y in zip(draw(buffer), draw(restored)):
        assert torch.equal(x.codes, y.codes) and torch.equal(x.rows, y.rows)
    _add_groups(restored, num_groups=1)
    assert restored.group_ids[-1].item() == 2  # new groups continue the counter


def test_load_state_dict_rejects_a_different_cache_policy():
    buffer = RolloutBuffer(policy="fifo", max_size=8)
    with pytest.raises(ValueError, match="rollout_cache"):
        RolloutBuffer(policy="clear", max_size=8).load_state_dict(buffer.state_dict())


def test_unscored_rollouts_are_kept_but_never_drawn():
    buffer = RolloutBuffer()
    buffer.add(torch.arange(16).view(4, 4), ["a"] * 4, torch.zeros(4), torch.tensor([0.5, float("nan"), 0.1, 0.2]))
    assert len(buffer) == 4 and buffer.num_unscored == 1
    drawn = torch.cat([b.rows for b in buffer.minibatches(3, 5, generator=torch.Generator().manual_seed(0))])
    assert 1 not in drawn.tolist()


def test_infinite_rewards_are_refused():
    with pytest.raises(ValueError, match="infinite"):
        RolloutBuffer().add(torch.zeros(2, 4), ["a", "a"], torch.zeros(2), torch.tensor([1.0, float("inf")]))
