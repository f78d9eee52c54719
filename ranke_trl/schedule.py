"""Algorithm 1's alternation: a decoder phase after every `T_pi` policy optimiser steps, and its corpus batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import TrainerCallback


class DecoderPhaseCallback(TrainerCallback):
    """Runs the trainer's decoder phase after every `policy_steps_per_phase` optimiser steps.

    `on_step_end` fires after the policy's optimiser step and before logging and saving, on every rank, so the
    phase runs in lock-step everywhere and its metrics and state land in that step's log and checkpoint.
    """

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.policy_steps_per_phase == 0:
            self.trainer.run_decoder_phase()


def corpus_batches(
    corpus, codes: torch.LongTensor, batch_size: int, indices: list[int], generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.LongTensor]]:
    """Endless random minibatches `(pixels (B,3,H,W) in [-1,1], ground-truth codes (B,N))` of corpus `indices`."""
    pool = torch.as_tensor(indices)
    while True:
        order = pool[torch.randperm(len(pool), generator=generator)]
        for start in range(0, len(order) - batch_size + 1, batch_size):
            rows = order[start : start + batch_size].tolist()
            yield corpus.pixels(rows), codes[rows]
        if len(order) < batch_size:  # a corpus smaller than one batch: use all of it
            rows = order.tolist()
            yield corpus.pixels(rows), codes[rows]
