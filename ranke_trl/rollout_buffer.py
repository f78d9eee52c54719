"""The rollout cache between RankE's two stages (METHOD.md, Algorithm 1).

Stage 1 draws rollouts and records their codes, prompts, groups and rewards here; Stage 2 samples minibatches of
them to train the decoder. Only codes are kept (on CPU): the decoder re-renders them at every step, because its
weights change. The cache only stores rows; what Stage 2 derives from them (the Rank-GAN weights) is Stage 2's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

CACHE_POLICIES = ("clear", "fifo")


@dataclass
class RolloutBatch:
    """A minibatch of cached rollouts.

    `codes`: (b, N) long codes in [0, K). `prompts`: b strings. `rewards`: (b,) float total rewards.
    `group_ids`: (b,) long buffer-wide group ids. `rows`: (b,) the rows' indices in the buffer they were drawn from.
    """

    codes: torch.LongTensor
    prompts: list[str]
    rewards: torch.Tensor
    group_ids: torch.LongTensor
    rows: torch.LongTensor

    def __len__(self) -> int:
        return self.codes.size(0)

    def to(self, device) -> "RolloutBatch":
        return RolloutBatch(
            self.codes.to(device), self.prompts, self.rewards.to(device), self.group_ids.to(device), self.rows
        )


class RolloutBuffer:
    """Rollouts `(z, c, r)` of Stage 1, grouped by prompt, for Stage 2's minibatches.

    Args:
        policy: 'clear' empties the buffer at :meth:`end_phase`; 'fifo' keeps at most `max_size` rollouts, evicting
            the oldest whole groups (`RankEConfig.rollout_cache`).
        max_size: the FIFO bound (`RankEConfig.rollout_cache_size`), enforced on every :meth:`add`.
    """

    def __init__(self, policy: str = "clear", max_size: int = 512):
        if policy not in CACHE_POLICIES:
            raise ValueError(f"rollout_cache={policy!r} is not one of {CACHE_POLICIES} (RankEConfig.rollout_cache).")
        if max_size < 1:
            raise ValueError(f"Rollout cache max_size must be >= 1, got {max_size}.")
        self.policy = policy
        self.max_size = max_size
        self._next_group_id = 0
        self._reset()

    def _reset(self) -> None:
        self.codes = torch.empty(0, 0, dtype=torch.long)
        self.prompts: list[str] = []
        self.group_ids = torch.empty(0, dtype=torch.long)
        self.rewards = torch.empty(0, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_unscored(self) -> int:
        """Cached rollouts no reward could score (NaN reward): they take no part in Stage 2."""
        return int(torch.isnan(self.rewards).sum())

    def add(self, codes: torch.Tensor, prompts: list[str], group_ids, rewards) -> None:
        """Record B rollouts.

        Args:
            codes: (B, N) integer codes (detached and moved to CPU here).
            prompts: B prompt strings.
            group_ids: (B,) labels of the prompt groups *within this call* (e.g. `arange(B) // G`). Every group must be
                complete in one call; the buffer renames labels to ids unique over the buffer's lifetime.
            rewards: (B,) total rewards, as Stage 1 computed them; NaN marks a rollout no reward could score, which
                is kept for its group's bookkeeping but never drawn into a minibatch.
        """
        codes = torch.as_tensor(codes).detach().to("cpu", torch.long)
        group_ids = torch.as_tensor(group_ids).detach().to("cpu", torch.long).reshape(-1)
        rewards = torch.as_tensor(rewards).detach().to("cpu", torch.float32).reshape(-1)
        batch = codes.size(0)
        if codes.dim() != 2 or not (len(prompts) == group_ids.numel() == rewards.numel() == batch):
            raise ValueError(
                f"add() needs codes (B, N) and B prompts, group ids and rewards; got codes {tuple(codes.shape)}, "
                f"{len(prompts)} prompts, {group_ids.numel()} group ids, {rewards.numel()} rewards."
            )
        if len(self) and codes.size(1) != self.codes.size(1):
            raise ValueError(f"Rollouts have {codes.size(1)} codes each; the buffer holds {self.codes.size(1)}.")
        if torch.isinf(rewards).any():
            raise ValueError("Rollout rewards must be finite, or NaN for a rollout no reward could score; got an "
                             "infinite reward.")
        labels, local = torch.unique(group_ids, return_inverse=True)
        largest = int(torch.bincount(local).max()) if batch else 0
        if largest > self.max_size:
            raise ValueError(f"A group of {largest} rollouts exceeds the buffer's max_size={self.max_size}.")
        self.codes = codes if not len(self) else torch.cat([self.codes, codes])
        self.prompts = self.prompts + list(prompts)
        self.group_ids = torch.cat([self.group_ids, local + self._next_group_id])
        self.rewards = torch.cat([self.rewards, rewards])
        self._next_group_id += len(labels)
        if self.policy == "fifo":
            self._evict()

    def _evict(self) -> None:
        # Drop whole groups, oldest first: a partial group would renormalise its Rank-GAN weights over survivors.
        while len(self) > self.max_size:
            oldest = int(self.group_ids.min())
            self._keep(self.group_ids != oldest)

    def _keep(self, mask: torch.Tensor) -> None:
        self.codes = self.codes[mask]
        self.prompts = list(itertools.compress(self.prompts, mask.tolist()))
        self.group_ids = self.group_ids[mask]
        self.rewards = self.rewards[mask]

    def end_phase(self) -> None:
        """Called after each decoder phase: 'clear' empties the buffer; 'fifo' keeps the newest `max_size` rollouts."""
        if self.policy == "clear":
            self._reset()
        else:
            self._evict()

    @property
    def num_scored(self) -> int:
        """Cached rollouts with a reward: those Stage 2 draws from."""
        return len(self) - self.num_unscored

    def global_batch_size(self, batch_size: int, num_processes: int = 1) -> int:
        """Rows one decoder step draws over all processes: `batch_size` per process, shrunk (ours) so that a global
        batch never exceeds the scored rollouts and splits evenly over the processes."""
        if self.num_scored == 0:
            raise ValueError("The rollout buffer is empty or holds no scored rollout; run Stage 1 (add rollouts) "
                             "before a decoder phase, and check that the rewards return scores, not only None.")
        per_process = min(batch_size, self.num_scored // num_processes)
        if per_process < 1:
            raise ValueError(f"{self.num_scored} scored rollouts cannot be split over {num_processes} processes.")
        return per_process * num_processes

    def minibatches(
        self,
        batch_size: int,
        num_batches: int,
        *,
        generator: torch.Generator | None = None,
        process_index: int = 0,
        num_processes: int = 1,
    ) -> list[RolloutBatch]:
        """Draw `num_batches` minibatches of scored rollouts, without replacement within an epoch.

        The scored rows are read as a stream of epochs, each a fresh permutation drawn from `generator`, and global
        batches are consecutive slices of that stream: batches that cover E whole epochs draw every scored row
        exactly E times. A batch that straddles two epochs never holds a row twice (ours): the rows it already has
        from the old epoch are moved to the end of the new one, which still holds every row once.

        Each batch carries its rows' buffer indices (`rows`), so per-row quantities computed over the whole buffer
        (Stage 2's Rank-GAN weights, normalised over each full group) can be looked up for it.

        With several processes holding the same buffer (the trainer adds the gathered batch on every rank) and the
        same `generator` seed, each global batch (`global_batch_size`: `batch_size * num_processes`, shrunk for a
        small buffer) is split so every process gets a disjoint slice of the same size.
        """
        global_size = self.global_batch_size(batch_size, num_processes)
        per_process = global_size // num_processes
        scored = torch.nonzero(~torch.isnan(self.rewards)).flatten()  # unscored rollouts are never drawn
        order = torch.empty(0, dtype=torch.long)
        batches = []
        for _ in range(num_batches):
            rows = order[:global_size]
            if rows.numel() < global_size:  # this epoch is used up: continue with the next permutation
                epoch = scored[torch.randperm(len(scored), generator=generator)]
                repeat = torch.isin(epoch, rows)
                order = torch.cat([epoch[~repeat], epoch[repeat]])
                missing = global_size - rows.numel()
                rows, order = torch.cat([rows, order[:missing]]), order[missing:]
            else:
                order = order[global_size:]
            rows = rows[process_index * per_process : (process_index + 1) * per_process]
            batches.append(
                RolloutBatch(
                    self.codes[rows],
                    [self.prompts[i] for i in rows.tolist()],
                    self.rewards[rows],
                    self.group_ids[rows],
                    rows,
                )
            )
        return batches

    def state_dict(self) -> dict:
        """Everything needed to restore the buffer from a checkpoint (tensors on CPU, prompts as a list)."""
        return {
            "policy": self.policy,
            "max_size": self.max_size,
            "next_group_id": self._next_group_id,
            "codes": self.codes.clone(),
            "prompts": list(self.prompts),
            "group_ids": self.group_ids.clone(),
            "rewards": self.rewards.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["policy"] != self.policy or state["max_size"] != self.max_size:
            raise ValueError(
                f"Checkpointed rollout cache is ({state['policy']!r}, {state['max_size']}) but this buffer is "
                f"({self.policy!r}, {self.max_size}); resume with the same rollout_cache and rollout_cache_size."
            )
        self._next_group_id = int(state["next_group_id"])
        self.codes = state["codes"].to(torch.long).clone()
        self.prompts = list(state["prompts"])
        self.group_ids = state["group_ids"].to(torch.long).clone()
        self.rewards = state["rewards"].to(torch.float32).clone()
