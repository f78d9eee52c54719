"""Stage 2 of RankE, the M-step: adapt the VQ decoder to the policy's cached rollouts (METHOD.md, Eq. 4-8).

`DecoderPhase` owns everything Stage 2 trains or keeps: the decoder's and the discriminator's optimisers, the
PatchGAN, the EMA teacher and the non-finite guard. It sees only codes, prompts and rewards, never the policy.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers.optimization import get_constant_schedule

from ..policy.base import VQCodec
from .discriminator import PatchDiscriminator
from .losses import (
    consistency_loss,
    discriminator_loss,
    rank_gan_generator_loss,
    rank_gan_weights,
    reconstruction_loss,
    reward_backprop_loss,
)
from .perceptual import build_lpips

if TYPE_CHECKING:
    from ..rollout_buffer import RolloutBatch, RolloutBuffer

logger = logging.getLogger(__name__)


#: λ_rbp when `lambda_rbp` is left unset and a reward is differentiable (ours)
DEFAULT_LAMBDA_RBP = 0.5


def resolve_lambda_rbp(lambda_rbp: float | None, reward_fns: Sequence) -> float:
    """λ_rbp in effect: the set value, or (None) `DEFAULT_LAMBDA_RBP` when any reward is differentiable, else 0.

    The paper applies reward back-propagation only when the reward is differentiable.
    """
    if lambda_rbp is not None:
        return float(lambda_rbp)
    return DEFAULT_LAMBDA_RBP if any(getattr(fn, "is_differentiable", False) for fn in reward_fns) else 0.0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def reconstruction_error(codec: VQCodec, real_pixels: torch.Tensor,
                         real_codes: torch.LongTensor | None = None) -> float:
    """Fidelity proxy: mean L1 between `D_φ(z_gt)` and x on a fixed held-out batch x, (B, 3, H, W) in [-1, 1].

    `real_codes` (B, N) are the ground-truth codes `z_gt`; None encodes them here with the codec's frozen encoder.
    """
    device = next(codec.module.parameters()).device
    real_pixels = real_pixels.to(device, torch.float32)
    codes = codec.encode(real_pixels) if real_codes is None else real_codes.to(device)
    return F.l1_loss(codec.decode(codes).float(), real_pixels).item()


class EMATeacher:
    """The slow teacher decoder `D_φ̄` of Eq. 8, updated as `φ̄ ← μ φ̄ + (1−μ) φ` after every decoder step.

    Hand-written rather than diffusers' `EMAModel` (0.42), which would need three workarounds: its `get_decay` forces
    decay 0 on the first update and warms up afterwards, it needs the shadow on the model's device (no CPU teacher),
    and it copies rather than averages any parameter with `requires_grad=False`.

    The teacher is one copy of the codec made at construction; the EMA writes only its decoder-side parameters.
    Frozen parameters (encoder, and the codebook unless trained) are shared with the student, not copied, when the
    teacher lives on the same device in the same dtype. A low-precision teacher keeps an fp32 master copy, since
    bf16 cannot represent updates of relative size 1−μ = 1e-3.
    """

    def __init__(self, codec: VQCodec, params: Sequence[nn.Parameter], decay: float, train_codebook: bool,
                 device=None, dtype=None):
        ref = params[0]
        # Resolve e.g. "cuda" to "cuda:0", so it compares equal to the student's device.
        device = torch.empty(0, device=device).device if device is not None else ref.device
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else (dtype or ref.dtype)
        trainable = {id(p) for p in params}
        same_place = device == ref.device and dtype == ref.dtype
        # deepcopy's memo: parameters listed here are reused, not copied.
        shared = {id(p): p for p in codec.module.parameters() if id(p) not in trainable} if same_place else {}
        self.codec = copy.deepcopy(codec, shared)
        if not same_place:
            self.codec.module.to(device=device, dtype=dtype)
        self.codec.module.requires_grad_(False)
        self.params = self.codec.decoder_parameters(train_codebook)
        self.master = None
        if dtype != torch.float32:  # started from the fp32 student, not from its rounded copy
            self.master = [p.detach().to(device, torch.float32, copy=True) for p in params]
        self.decay = decay
        self.num_updates = 0
        self.device = device

    @torch.no_grad()
    def update(self, student_params: Sequence[nn.Parameter]) -> None:
        targets = self.master if self.master is not None else self.params
        for target, param in zip(targets, student_params):
            target.lerp_(param.detach().to(target.device, target.dtype), 1.0 - self.decay)
        if self.master is not None:
            for param, master in zip(self.params, self.master):
                param.copy_(master)
        self.num_updates += 1

    @torch.no_grad()
    def decode(self, codes: torch.LongTensor) -> torch.Tensor:
        """(B, N) codes -> (B, 3, H, W) teacher pixels, roughly in [-1, 1], on the teacher's device; no gradient."""
        return self.codec.decode(codes.to(self.device))

    def state_dict(self) -> dict:
        source = self.master if self.master is not None else self.params
        return {"decay": self.decay, "num_updates": self.num_updates, "params": [p.detach() for p in source]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if len(state["params"]) != len(self.params):
            raise ValueError(f"EMA state has {len(state['params'])} tensors; this teacher has {len(self.params)}.")
        targets = self.master if self.master is not None else self.params
        for target, saved in zip(targets, state["params"]):
            target.copy_(saved)
        if self.master is not None:
            for param, master in zip(self.params, self.master):
                param.copy_(master)
        self.num_updates = int(state["num_updates"])


class DecoderPhase:
    """Stage 2 sub-trainer: `L_D = λ_rbp·L_rbp + λ_gan·L_RankGAN + λ_rec·L_rec + λ_cons·L_cons` (Eq. 4).

    A term whose λ is 0 is never computed: no reward scoring, no discriminator (it is not even built), no decode of
    corpus codes, no EMA teacher. Only the decoder side of the codec trains; every other codec parameter is frozen here.

    Args:
        codec: the VQ tokenizer; its decoder is trained in place.
        args: a `RankEConfig` (the Stage 2 fields).
        reward_fns: reward objects; those with `is_differentiable = True` and `score(images01, prompts) -> (B,)` feed
            L_rbp, each with its weight from `reward_weights` (default 1).
        lpips: a frozen perceptual distance on [-1, 1] images; built from `args.lpips_*` when None and needed.
        device: where Stage 2 runs; default, the codec's device (the codec is moved there).

    Under `torch.distributed` with several processes, gradients are averaged before each optimiser step and the
    non-finite guard is agreed by all ranks, so the phase must run the same number of steps on every rank.
    """

    def __init__(self, codec: VQCodec, args, reward_fns: Sequence = (), reward_weights: Sequence[float] | None = None,
                 lpips: nn.Module | None = None, device=None):
        self.codec, self.args = codec, args
        self.device = torch.device(device) if device is not None else next(codec.module.parameters()).device
        codec.module.to(self.device)
        reward_fns = list(reward_fns)
        weights = [1.0] * len(reward_fns) if reward_weights is None else [float(w) for w in reward_weights]
        if len(weights) != len(reward_fns):
            raise ValueError(f"Got {len(weights)} reward weights for {len(reward_fns)} reward functions.")
        pairs = [(fn, w) for fn, w in zip(reward_fns, weights) if getattr(fn, "is_differentiable", False)]
        #: λ_rbp in effect: `args.lambda_rbp`, or, when it is None, 0.5 with a differentiable reward and 0 without
        self.lambda_rbp = resolve_lambda_rbp(args.lambda_rbp, reward_fns)
        lambdas = (self.lambda_rbp, args.lambda_gan, args.lambda_rec, args.lambda_cons)
        if not any(lam > 0 for lam in lambdas):
            raise ValueError("All Stage 2 loss weights are 0, so the decoder phase trains nothing; set "
                             "train_decoder=False for a policy-only run.")
        if self.lambda_rbp > 0 and not pairs:
            raise ValueError(
                f"lambda_rbp={self.lambda_rbp} needs a differentiable reward (an object with "
                "`is_differentiable = True` and `score(images01, prompts)`), but none was given. Pass one, or leave "
                "lambda_rbp unset (or 0) when the reward is a black box (Rank-GAN still uses its scores)."
            )
        if self.lambda_rbp > 0 and len(pairs) < len(reward_fns):
            logger.warning("L_rbp back-propagates only the differentiable rewards; the others reach the decoder "
                           "through the Rank-GAN weights alone.")
        self.rbp_fns, self.rbp_weights = [fn for fn, _ in pairs], [w for _, w in pairs]

        self.decoder_params = list(codec.decoder_parameters(args.train_codebook))
        codec.module.requires_grad_(False)  # encoder, quant_conv and (unless trained) the codebook stay frozen
        for param in self.decoder_params:
            param.requires_grad_(True)
        if args.decoder_gradient_checkpointing:
            try:
                codec.enable_decoder_checkpointing()
            except NotImplementedError as err:
                raise ValueError(f"decoder_gradient_checkpointing=True: {err}") from None
        self.decoder_optimizer = self._adamw(self.decoder_params, args.decoder_learning_rate)
        self.decoder_scheduler = get_constant_schedule(self.decoder_optimizer)

        self.discriminator = self.discriminator_optimizer = self.discriminator_scheduler = None
        if args.lambda_gan > 0:
            self.discriminator = PatchDiscriminator.from_config(args).to(self.device)
            self._report_receptive_field(codec.image_size)
            self.discriminator_optimizer = self._adamw(
                self.discriminator.parameters(), args.discriminator_learning_rate
            )
            self.discriminator_scheduler = get_constant_schedule(self.discriminator_optimizer)

        self.lpips = None
        if args.lambda_rec > 0 and args.lambda_lpips > 0:
            self.lpips = lpips if lpips is not None else build_lpips(args.lpips_net, args.lpips_weights_path)
            if isinstance(self.lpips, nn.Module):
                self.lpips.to(self.device).eval().requires_grad_(False)

        self.ema_teacher = None
        if args.lambda_cons > 0:
            self.ema_teacher = EMATeacher(codec, self.decoder_params, args.ema_decay, args.train_codebook,
                                          device=args.ema_device, dtype=args.ema_dtype)
        self.num_steps = 0
        self.consecutive_nonfinite = 0
        self.total_nonfinite = 0

    def _report_receptive_field(self, image_size: int) -> None:
        size = self.discriminator.receptive_field.size
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        logger.info("PatchGAN discriminator: %d strided layers, each logit sees %d px, %.0f%% of the %d px image side.",
                    self.args.discriminator_layers, size, 100 * size / image_size, image_size)
        if size >= image_size:
            sizes = [PatchDiscriminator(3, 1, n).receptive_field.size for n in range(1, self.args.discriminator_layers)]
            local = [f"{n} ({px} px, {100 * px / image_size:.0f}%)" for n, px in enumerate(sizes, 1) if px < image_size]
            logger.warning("The PatchGAN's %d px receptive field covers the whole %d px image, so Rank-GAN judges "
                           "whole scenes rather than local texture and may push the decoder to repaint content. For a "
                           "local discriminator set discriminator_layers to %s.", size, image_size,
                           " or ".join(reversed(local)) if local else "1 and use larger images")

    def _adamw(self, params: Iterable[nn.Parameter], lr: float) -> torch.optim.AdamW:
        a = self.args
        return torch.optim.AdamW(params, lr=lr, betas=(a.decoder_adam_beta1, a.decoder_adam_beta2),
                                 weight_decay=a.decoder_weight_decay)

    def _autocast(self):
        if not self.args.decoder_bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def ema_teacher_module(self) -> nn.Module | None:
        """The codec module holding the EMA decoder (to `save_pretrained`), or None when λ_cons = 0."""
        return self.ema_teacher.codec.module if self.ema_teacher is not None else None

    # ------------------------------------------------------------------------------------------------ one step
    def rank_gan_weights(self, rewards: torch.Tensor, group_ids: torch.LongTensor) -> torch.Tensor:
        """(M,) Rank-GAN weights (Eq. 6) of rollouts, each normalised within its group at `rank_gan_temperature`."""
        return rank_gan_weights(rewards, group_ids, self.args.rank_gan_temperature)

    def step(self, rollouts: RolloutBatch, real_pixels: torch.Tensor | None = None,
             real_codes: torch.LongTensor | None = None, rank_weights: torch.Tensor | None = None) -> dict[str, float]:
        """One decoder step, then one discriminator step (when λ_gan > 0).

        Args:
            rollouts: a minibatch from the :class:`RolloutBuffer` (codes, prompts, rewards, group ids).
            real_pixels: (B_r, 3, H, W) corpus images in [-1, 1]; needed when λ_rec > 0 or λ_gan > 0.
            real_codes: (B_r, N) their ground-truth codes for L_rec; encoded here with the frozen encoder when None.
            rank_weights: (b,) the rollouts' Rank-GAN weights. :meth:`run` passes weights normalised over each
                *full* group of the buffer; when None they are computed over the groups as they appear in `rollouts`.

        Returns:
            Metrics of this step as floats (see :meth:`run` for the keys).
        """
        args = self.args
        if (args.lambda_rec > 0 or args.lambda_gan > 0) and real_pixels is None:
            raise ValueError(
                "lambda_rec > 0 or lambda_gan > 0 needs corpus images: pass real_pixels (B, 3, H, W) in [-1, 1]."
            )
        rollouts = rollouts.to(self.device)
        if args.lambda_gan > 0 and rank_weights is None:
            rank_weights = self.rank_gan_weights(rollouts.rewards, rollouts.group_ids)
        if rank_weights is not None:
            rank_weights = rank_weights.to(self.device)
        if real_pixels is not None:
            real_pixels = real_pixels.to(self.device, torch.float32)
        metrics: dict[str, float] = {}
        with self._autocast():
            fake = self.codec.decode(rollouts.codes)  # re-rendered every step: the decoder keeps changing
            if real_pixels is not None and real_pixels.shape[1:] != fake.shape[1:]:
                raise ValueError(f"Corpus images are {tuple(real_pixels.shape[1:])} but the decoder renders "
                                 f"{tuple(fake.shape[1:])}; resize the corpus to the codec's image size.")
            loss = self._decoder_loss(fake, rollouts, rank_weights, real_pixels, real_codes, metrics)
        ok = self._optimise(
            loss, self.decoder_params, self.decoder_optimizer, self.decoder_scheduler, "decoder", metrics
        )
        if ok and self.ema_teacher is not None:
            self.ema_teacher.update(self.decoder_params)
        if self.discriminator is not None:
            ok = self._discriminator_step(fake.detach(), real_pixels, metrics) and ok
        self._count_nonfinite(ok, metrics)
        self.num_steps += 1
        return metrics

    def _decoder_loss(self, fake, rollouts, rank_weights, real_pixels, real_codes, metrics) -> torch.Tensor:
        args, terms = self.args, {}
        if self.lambda_rbp > 0:
            images01 = ((fake.float() + 1) / 2).clamp(0, 1)  # the [0, 1] images Stage 1 scored
            terms["rbp"] = reward_backprop_loss(images01, rollouts.prompts, self.rbp_fns, self.rbp_weights)
        if args.lambda_gan > 0:
            # The raw output, not clamped: out-of-range pixels are something the discriminator should see.
            terms["gan"] = rank_gan_generator_loss(self.discriminator(fake), rank_weights, args.gan_loss)
            w = rank_weights.float()
            metrics["rank_weight_max"] = w.max().item()
            metrics["rank_weight_ess"] = (w.sum() ** 2 / (w**2).sum()).item()  # per minibatch, in [1, b]
        if args.lambda_rec > 0:
            if real_codes is None:
                # Full precision: a bf16 nearest-code search could pick other ground-truth codes.
                with torch.autocast(self.device.type, enabled=False):
                    real_codes = self.codec.encode(real_pixels)
            recon = self.codec.decode(real_codes.to(self.device))
            terms["rec"] = reconstruction_loss(recon, real_pixels, self.lpips, args.lambda_lpips)
            metrics["rec_l1"] = F.l1_loss(recon.detach().float(), real_pixels).item()
        if args.lambda_cons > 0:
            terms["cons"] = consistency_loss(fake, self.ema_teacher.decode(rollouts.codes))
        lambdas = {"rbp": self.lambda_rbp, "gan": args.lambda_gan, "rec": args.lambda_rec, "cons": args.lambda_cons}
        for name, value in terms.items():
            metrics[f"loss_{name}"] = value.item()
        loss = sum(lambdas[name] * value for name, value in terms.items())
        metrics["loss"] = loss.item()
        return loss

    def _discriminator_step(self, fake: torch.Tensor, real: torch.Tensor, metrics: dict) -> bool:
        with self._autocast():
            # One forward over [real; fake]: GroupNorm is per sample, so batching them changes nothing.
            logits = self.discriminator(torch.cat([real, fake.to(real.dtype)]))
            real_logits, fake_logits = logits[: real.size(0)], logits[real.size(0) :]
            loss = discriminator_loss(real_logits, fake_logits, self.args.gan_loss)
        metrics["disc_loss"] = loss.item()
        metrics["disc_real_logit"] = real_logits.detach().float().mean().item()
        metrics["disc_fake_logit"] = fake_logits.detach().float().mean().item()
        return self._optimise(loss, list(self.discriminator.parameters()), self.discriminator_optimizer,
                              self.discriminator_scheduler, "disc", metrics)

    def _optimise(self, loss, params, optimizer, scheduler, name: str, metrics: dict) -> bool:
        """Backward, average over ranks, clip, step. Returns False (and changes nothing) if anything is non-finite."""
        if not self._all_ranks_agree_finite(loss):
            return False
        # autograd.grad, not backward(): only these parameters receive gradients, never a reward model or LPIPS.
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        self._average_across_ranks(grads)
        for param, grad in zip(params, grads):
            param.grad = grad
        max_norm = self.args.decoder_max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
        if not torch.isfinite(norm):  # identical on every rank: the gradients were averaged first
            optimizer.zero_grad(set_to_none=True)
            return False
        metrics[f"grad_norm_{name}"] = norm.item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        return True

    def _all_ranks_agree_finite(self, value: torch.Tensor) -> bool:
        flag = torch.isfinite(value.detach()).all().float().reshape(1)
        if _world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    @staticmethod
    def _average_across_ranks(grads: list[torch.Tensor]) -> None:
        world = _world_size()
        if world <= 1:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def _count_nonfinite(self, ok: bool, metrics: dict) -> None:
        metrics["nonfinite_skipped"] = float(not ok)
        if ok:
            self.consecutive_nonfinite = 0
            return
        self.consecutive_nonfinite += 1
        self.total_nonfinite += 1
        logger.warning("Decoder step %d: non-finite loss or gradient, update skipped (%d in a row).",
                       self.num_steps, self.consecutive_nonfinite)
        if self.consecutive_nonfinite >= self.args.max_nonfinite_decoder_steps:
            raise RuntimeError(
                f"{self.consecutive_nonfinite} consecutive decoder steps had a non-finite loss or gradient "
                f"(max_nonfinite_decoder_steps={self.args.max_nonfinite_decoder_steps}). Lower decoder_learning_rate, "
                "check the rewards for NaN, or turn off decoder_bf16."
            )

    # ------------------------------------------------------------------------------------------------ a phase
    def run(self, buffer: RolloutBuffer, corpus_batches: Iterable | None, num_steps: int | None = None,
            generator: torch.Generator | None = None) -> dict[str, float]:
        """Run T_D decoder steps on minibatches of `buffer` (Algorithm 1, Stage 2) and return averaged metrics.

        Args:
            buffer: the rollout cache. Under several processes every rank must hold the same (gathered) rollouts;
                each rank then trains on its own slice of every global minibatch. Clearing it is the caller's job
                (`buffer.end_phase()`).
            corpus_batches: an iterable of corpus images, each item `pixels` or `(pixels, codes)`, pixels
                (B_r, 3, H, W) in [-1, 1]; None when λ_rec = λ_gan = 0.
            num_steps: T_D; default :meth:`steps_per_phase` (`args.decoder_steps_per_phase`, or derived from the
                cache and `args.decoder_epochs`).
            generator: minibatch sampling RNG; default one seeded from `args.seed` and the step counter, so every rank
                draws the same minibatches and a resumed run draws what the uninterrupted one would have.

        Returns:
            Means over the phase's steps, averaged over ranks:
            - `loss`: L_D; `loss_rbp`, `loss_gan`, `loss_rec`, `loss_cons`: each unweighted term, present when its
              λ > 0. `loss_cons` is the student–teacher distance on policy codes.
            - `rec_l1` (λ_rec > 0): the L1 part of L_rec on the corpus batch.
            - `rank_weight_max`, `rank_weight_ess` (λ_gan > 0): the largest Rank-GAN weight, and the effective sample
              size (Σw)²/Σw² of each minibatch, in [1, batch size].
            - `disc_loss`, `disc_real_logit`, `disc_fake_logit` (λ_gan > 0): L_Dis and the mean patch logits.
            - `grad_norm_decoder`, `grad_norm_disc`: total gradient norms before clipping.
            - `nonfinite_skipped`: how many steps of the phase were skipped (a count, not a mean).
            - `buffer_size`: cached rollouts; `unscored_rollouts`: those no reward could score (NaN), never drawn;
              `decoder_steps`: decoder steps taken so far, over all phases; `steps_this_phase`: T_D of this phase.
        """
        num_steps = self.steps_per_phase(buffer) if num_steps is None else num_steps
        if generator is None:
            generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + self.num_steps)
        rank = dist.get_rank() if _world_size() > 1 else 0
        batches = buffer.minibatches(
            self.args.decoder_batch_size, num_steps, generator=generator, process_index=rank,
            num_processes=_world_size(),
        )
        # Over the whole buffer, so each group is normalised over all its G rollouts, not the rows of one minibatch.
        weights = self.rank_gan_weights(buffer.rewards, buffer.group_ids) if self.args.lambda_gan > 0 else None
        corpus = iter(corpus_batches) if corpus_batches is not None else None
        sums, counts = defaultdict(float), defaultdict(int)
        for rollouts in batches:
            real_pixels = real_codes = None
            if corpus is not None:
                try:
                    item = next(corpus)
                except StopIteration:
                    raise ValueError(f"corpus_batches ran out before the {num_steps} decoder steps of this phase; "
                                     "pass an endless iterator (e.g. itertools.cycle over a DataLoader).") from None
                real_pixels, real_codes = item if isinstance(item, (tuple, list)) else (item, None)
            batch_weights = weights[rollouts.rows] if weights is not None else None
            for key, value in self.step(rollouts, real_pixels, real_codes, batch_weights).items():
                sums[key] += value
                counts[key] += 1
        metrics = {key: sums[key] / counts[key] for key in sums}
        metrics["nonfinite_skipped"] = sums["nonfinite_skipped"]
        metrics = self._average_metrics_across_ranks(metrics)
        metrics["buffer_size"] = float(len(buffer))
        metrics["unscored_rollouts"] = float(buffer.num_unscored)
        metrics["decoder_steps"] = float(self.num_steps)
        metrics["steps_this_phase"] = float(num_steps)
        return metrics

    def steps_per_phase(self, buffer: RolloutBuffer) -> int:
        """T_D of a phase on `buffer`: `decoder_steps_per_phase` when set, else ceil(decoder_epochs x scored
        rollouts / global decoder batch), so that each scored rollout is drawn once per epoch."""
        if self.args.decoder_steps_per_phase is not None:
            return self.args.decoder_steps_per_phase
        global_batch = buffer.global_batch_size(self.args.decoder_batch_size, _world_size())
        # Rounded first, so that e.g. 0.1 x 30 rows / 3 is 1 step, not 2 from float error.
        return max(1, math.ceil(round(self.args.decoder_epochs * buffer.num_scored / global_batch, 9)))

    def _average_metrics_across_ranks(self, metrics: dict[str, float]) -> dict[str, float]:
        # Every rank has the same keys: the λs are shared and skipped steps are agreed on by all ranks.
        if _world_size() <= 1 or not metrics:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return dict(zip(keys, (values / _world_size()).tolist()))

    def reconstruction_error(self, real_pixels: torch.Tensor, real_codes: torch.LongTensor | None = None) -> float:
        """Fidelity proxy of this phase's decoder (`reconstruction_error`)."""
        return reconstruction_error(self.codec, real_pixels, real_codes)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Discriminator, both optimisers and schedulers, EMA teacher and counters.

        The decoder's own weights are not included: the trainer saves the codec with `save_pretrained`, and must
        restore them into the codec before (or after) :meth:`load_state_dict`, in place.
        """
        maybe = lambda obj: obj.state_dict() if obj is not None else None  # noqa: E731
        return {
            "num_steps": self.num_steps,
            "consecutive_nonfinite": self.consecutive_nonfinite,
            "total_nonfinite": self.total_nonfinite,
            "decoder_optimizer": self.decoder_optimizer.state_dict(),
            "decoder_scheduler": self.decoder_scheduler.state_dict(),
            "discriminator": maybe(self.discriminator),
            "discriminator_optimizer": maybe(self.discriminator_optimizer),
            "discriminator_scheduler": maybe(self.discriminator_scheduler),
            "ema_teacher": maybe(self.ema_teacher),
        }

    def load_state_dict(self, state: dict) -> None:
        for key, owner in (("discriminator", self.discriminator), ("ema_teacher", self.ema_teacher)):
            if (state[key] is None) != (owner is None):
                raise ValueError(
                    f"The checkpointed decoder phase {'has no' if state[key] is None else 'has a'} {key} but this one "
                    f"{'has' if owner is not None else 'has none'}: resume with the same lambda_gan / lambda_cons."
                )
        self.decoder_optimizer.load_state_dict(state["decoder_optimizer"])
        self.decoder_scheduler.load_state_dict(state["decoder_scheduler"])
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])
            self.discriminator_scheduler.load_state_dict(state["discriminator_scheduler"])
        if self.ema_teacher is not None:
            self.ema_teacher.load_state_dict(state["ema_teacher"])
        self.num_steps = int(state["num_steps"])
        self.consecutive_nonfinite = int(state["consecutive_nonfinite"])
        self.total_nonfinite = int(state["total_nonfinite"])
