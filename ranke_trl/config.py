"""`RankEConfig`: every RankE setting in one place, on top of TRL's `GRPOConfig`.

Defaults follow `METHOD.md`. Values the paper does not state are marked "(ours)" in their help text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig

from .sampling import SamplingArguments


@dataclass
class RankEConfig(SamplingArguments, GRPOConfig):
    r"""Configuration of [`RankEGRPOTrainer`].

    TRL's own fields keep their names and meaning (`temperature`, `top_k`, `top_p`, `beta`, `epsilon`,
    `num_generations`, `loss_type`, `sync_ref_model`, ...). Their defaults are changed to the paper's Stage 1
    (METHOD.md): `loss_type="grpo"`, `beta=0.05`, `top_p=0.9`, `weight_decay=0.01`, a real EMA reference policy
    (`sync_ref_model=True` every step with `ref_model_mixup_alpha=0.01`, ours) and the plain KL of Eq. 3
    (`use_bias_correction_kl=False`).
    The sampling settings (`guidance_scale`, `temperature`, `top_k`, `top_p`, `logprob_mode`) are defined once, in
    `ranke_trl.sampling.SamplingArguments`, which evaluation shares.
    """

    # ------------------------------------------------------------------ TRL fields with the paper's defaults
    loss_type: str = field(default="grpo", metadata={"help": "GRPO loss aggregation; the paper's Eq. 3 is 'grpo'."})
    beta: float = field(default=0.05, metadata={"help": "KL coefficient to the EMA reference policy (paper: 0.05)."})
    sync_ref_model: bool = field(
        default=True,
        metadata={"help": "Keep the reference policy as an EMA of the policy (paper: EMA reference)."},
    )
    ref_model_mixup_alpha: float = field(
        default=0.01,
        metadata={"help": "EMA rate of the reference policy, `ref <- alpha * policy + (1 - alpha) * ref`, every "
                  "`ref_model_sync_steps` steps (ours: 0.01 every step, a horizon of ~100 policy steps; TRL's "
                  "0.6 every 512 steps would leave the reference still for most of a run)."},
    )
    ref_model_sync_steps: int = field(
        default=1, metadata={"help": "Policy steps between reference EMA updates (ours: 1, a real EMA)."}
    )
    use_bias_correction_kl: bool = field(
        default=False,
        metadata={"help": "Multiply the KL term by the importance ratio (TRL's off-policy correction). False: the "
                  "plain KL of the paper's Eq. 3."},
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay of the policy (paper: 0.01)."})
    mask_truncated_completions: bool = field(
        default=False,
        metadata={"help": "Must stay False: image sequences have no EOS, so every rollout would be masked."},
    )
    activation_checkpointing: bool | None = field(
        default=False,
        metadata={"help": "Activation (gradient) checkpointing of the policy's language model (ours: off). "
                  "`gradient_checkpointing` is transformers' deprecated alias."},
    )
    dataloader_pin_memory: bool | None = field(
        default=None,
        metadata={"help": "Pin the prompt DataLoader's memory. None (default): only when CUDA is available, so a CPU "
                  "run does not warn that nothing can be pinned; True or False forces it."},
    )

    # ------------------------------------------------------------------ modes
    train_policy: bool = field(
        default=True, metadata={"help": "Stage 1: update the image-token policy with GRPO. False = Decoder-only."}
    )
    train_decoder: bool = field(
        default=True,
        metadata={"help": "Stage 2: co-evolve the VQ decoder on the policy's rollouts. False = 'Std. RL' baseline."},
    )

    # ------------------------------------------------------------------ rollouts
    generation_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Rollouts sampled and decoded per forward on each process; None = the whole local batch (ours)."},
    )
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "Template wrapping each prompt, with a `{prompt}` slot. Default: the backbone's chat format."},
    )

    # ------------------------------------------------------------------ data
    image_column: str = field(
        default="image",
        metadata={"help": "Dataset column with corpus images: ground-truth codes for L_rec, L_Dis and the shift diagnostics."},
    )

    # ------------------------------------------------------------------ diagnostics and logging
    gt_code_stats_path: str | None = field(
        default=None,
        metadata={"help": "A saved ground-truth code histogram (`.safetensors`) for the shift diagnostics."},
    )
    diagnostics_max_images: int = field(
        default=1024,
        metadata={"help": "How many corpus images to encode for the ground-truth code histogram (ours)."},
    )
    diagnostics_smoothing: float = field(
        default=1.0,
        metadata={"help": "Additive (Laplace) smoothing count per codebook entry in KL(p_theta || p_gt) (ours)."},
    )
    log_images_steps: int = field(
        default=50, metadata={"help": "Log a grid of rollout images every this many steps (0 disables)."}
    )
    num_images_to_log: int = field(default=8, metadata={"help": "Images in each logged grid."})

    # ------------------------------------------------------------------ Stage 2 schedule (Algorithm 1)
    policy_steps_per_phase: int = field(
        default=1, metadata={"help": "T_pi: GRPO optimiser steps per policy phase (ours: 1)."}
    )
    decoder_steps_per_phase: int | None = field(
        default=None,
        metadata={"help": "T_D: decoder optimiser steps per decoder phase. None (default, ours): derived from the "
                  "cache, ceil(decoder_epochs x scored cached rollouts / global decoder batch), so every scored "
                  "rollout is drawn once per epoch (the paper states no T_D). An integer fixes T_D whatever the "
                  "cache holds. Logged as decoder/steps_this_phase."},
    )
    decoder_epochs: float = field(
        default=1.0,
        metadata={"help": "Passes over the scored cached rollouts per decoder phase when decoder_steps_per_phase is "
                  "None (ours: 1.0, each rollout once; 0.5 = half of them, 2 = each twice). Minibatches are drawn "
                  "without replacement within a pass."},
    )
    decoder_batch_size: int = field(
        default=8,
        metadata={"help": "Rollouts (and corpus images) per decoder step on each process (ours: 8); the global "
                  "decoder batch is this times the number of processes (less if the cache holds fewer)."},
    )
    rollout_cache: str = field(
        default="clear",
        metadata={"help": "Rollout cache between phases: 'clear' after each decoder phase, or 'fifo' (bounded)."},
    )
    rollout_cache_size: int = field(
        default=512, metadata={"help": "Maximum cached rollouts when `rollout_cache='fifo'` (ours)."}
    )

    # ------------------------------------------------------------------ Stage 2 losses (Eq. 4-8)
    lambda_rbp: float | None = field(
        default=None,
        metadata={"help": "Weight of reward back-propagation L_rbp. None (default): 0.5 (ours) when a reward is "
                  "differentiable, else 0 (the paper applies L_rbp only to differentiable rewards); the trainer says "
                  "which at start-up. An explicit value > 0 with no differentiable reward is an error."},
    )
    lambda_gan: float = field(default=0.1, metadata={"help": "Weight of the Rank-GAN loss (ours: 0.1)."})
    lambda_rec: float = field(default=1.0, metadata={"help": "Weight of the reconstruction anchor L_rec (ours: 1.0)."})
    lambda_cons: float = field(default=1.0, metadata={"help": "Weight of the EMA consistency L_cons (paper E.1: 1.0)."})
    lambda_lpips: float = field(
        default=1.0, metadata={"help": "LPIPS weight lambda_p inside L_rec (ours: 1.0); 0 skips LPIPS."}
    )
    lpips_net: str = field(default="vgg", metadata={"help": "LPIPS backbone: 'vgg' or 'alex'."})
    lpips_weights_path: str | None = field(
        default=None,
        metadata={"help": "Local file with the LPIPS backbone's ImageNet weights; None downloads them (torchvision)."},
    )
    rank_gan_temperature: float = field(
        default=0.1,
        metadata={"help": "Importance temperature tau of the Rank-GAN weights (paper: 0.1); 'inf' = uniform GAN."},
    )
    gan_loss: str = field(
        default="non_saturating", metadata={"help": "Adversarial loss: 'non_saturating' (paper) or 'hinge'."}
    )

    # ------------------------------------------------------------------ Stage 2 optimisation (Table F.1)
    decoder_learning_rate: float = field(default=1e-5, metadata={"help": "Decoder AdamW learning rate (ours)."})
    discriminator_learning_rate: float = field(
        default=1e-4, metadata={"help": "Discriminator AdamW learning rate (ours)."}
    )
    decoder_adam_beta1: float = field(default=0.5, metadata={"help": "Stage 2 AdamW beta1 (paper: 0.5)."})
    decoder_adam_beta2: float = field(default=0.9, metadata={"help": "Stage 2 AdamW beta2 (paper: 0.9)."})
    decoder_weight_decay: float = field(default=0.05, metadata={"help": "Stage 2 AdamW weight decay (paper: 0.05)."})
    decoder_max_grad_norm: float | None = field(
        default=1.0, metadata={"help": "Gradient-norm clip of decoder and discriminator; None disables (ours: 1.0)."}
    )
    decoder_bf16: bool = field(default=False, metadata={"help": "Run Stage 2 forward passes under bf16 autocast."})
    decoder_gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "Recompute the VQ decoder's up-path blocks in Stage 2's backward pass instead of storing their "
            "activations: less memory for one more decoder forward per step (ours: off)."
        },
    )
    ema_decay: float = field(default=0.999, metadata={"help": "EMA teacher decay mu (paper: 0.999)."})
    ema_device: str | None = field(
        default=None, metadata={"help": "Device of the EMA teacher, e.g. 'cpu' to save accelerator memory."}
    )
    ema_dtype: str | None = field(default=None, metadata={"help": "dtype of the EMA teacher, e.g. 'bfloat16'."})
    train_codebook: bool = field(
        default=False, metadata={"help": "Also train the codebook embedding in Stage 2 (ours: frozen)."}
    )
    discriminator_channels: int = field(default=64, metadata={"help": "Base width of the PatchGAN (ours)."})
    discriminator_layers: int = field(
        default=3,
        metadata={"help": "Strided conv layers of the PatchGAN (ours: 3); they set the receptive field of each logit: "
                  "1, 2, 3, 4, 5 layers see 16, 34, 70, 142, 286 px. The default's 70 px is 18% of Janus-Pro's 384 px "
                  "side and 27% of LlamaGen's 256 px, but more than a whole 64 px image, where 1 (16 px, 25%) keeps it "
                  "local. The trainer logs the field and warns when it covers the whole image."},
    )
    max_nonfinite_decoder_steps: int = field(
        default=10,
        metadata={"help": "Stop with an error after this many consecutive non-finite decoder losses (ours)."},
    )

    def __getstate__(self):
        # transformers pickles the whole config into every checkpoint's training_args.bin (and uploads it with
        # push_to_hub): the Hub token must never reach the disk.
        state = self.__dict__.copy()
        state["hub_token"] = None
        return state

    def __post_init__(self):
        if isinstance(self.rank_gan_temperature, str):
            self.rank_gan_temperature = float(self.rank_gan_temperature)
        self.resolve_sampling()  # before TRL's checks, which read temperature, top_k and top_p
        if self.dataloader_pin_memory is None:
            self.dataloader_pin_memory = torch.cuda.is_available()
        super().__post_init__()
        self._validate_ranke()

    def _validate_ranke(self):
        self._validate_numbers()
        if self.prompt_template is not None:
            if "{prompt}" not in self.prompt_template:
                raise ValueError(
                    f"prompt_template={self.prompt_template!r} has no '{{prompt}}' slot, so every prompt would become "
                    "the same text. Put '{prompt}' where the prompt goes, or unset it for the backbone's chat format."
                )
            try:
                self.prompt_template.format(prompt="x")
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(
                    f"prompt_template={self.prompt_template!r} is not a valid format string ({err}); its only slot is "
                    "'{prompt}' (write other braces as '{{' and '}}')."
                ) from err
        if self.ema_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"RankEConfig.ema_dtype={self.ema_dtype!r} is not one of None, 'float32', 'bfloat16', "
                             "'float16'.")
        if self.ema_device is not None:
            try:
                torch.device(self.ema_device)
            except (RuntimeError, TypeError) as err:
                raise ValueError(f"RankEConfig.ema_device={self.ema_device!r} is not a device ('cpu', 'cuda', "
                                 f"'cuda:1', ...): {err}") from err
        choices = {
            "rollout_cache": ("clear", "fifo"),
            "gan_loss": ("non_saturating", "hinge"),
            "lpips_net": ("vgg", "alex"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"RankEConfig.{name}={getattr(self, name)!r} is not one of {allowed}.")
        if self.mask_truncated_completions:
            raise ValueError(
                "mask_truncated_completions=True would zero the whole loss: image-token rollouts have no EOS, so "
                "every one counts as truncated. Set it to False."
            )
        if not (self.train_policy or self.train_decoder):
            raise ValueError(
                "train_policy=False and train_decoder=False trains nothing; that is the Base model. Evaluate it "
                "with examples/evaluate.py instead."
            )

    # Each numeric setting: (name, lower bound, whether the bound is allowed, whether None is allowed). NaN and
    # infinities fail every check (except rank_gan_temperature's documented 'inf').
    _RANGES = (
        ("lambda_rbp", 0.0, True, True), ("lambda_gan", 0.0, True, False), ("lambda_rec", 0.0, True, False),
        ("lambda_cons", 0.0, True, False), ("lambda_lpips", 0.0, True, False), ("beta", 0.0, True, False),
        ("ref_model_mixup_alpha", 0.0, False, False), ("ref_model_sync_steps", 1, True, False),
        ("learning_rate", 0.0, True, False), ("decoder_learning_rate", 0.0, True, False),
        ("discriminator_learning_rate", 0.0, True, False), ("decoder_weight_decay", 0.0, True, False),
        ("decoder_max_grad_norm", 0.0, False, True), ("diagnostics_smoothing", 0.0, True, False),
        ("policy_steps_per_phase", 1, True, False), ("decoder_steps_per_phase", 1, True, True),
        ("decoder_epochs", 0.0, False, False),
        ("decoder_batch_size", 1, True, False), ("rollout_cache_size", 1, True, False),
        ("diagnostics_max_images", 1, True, False), ("log_images_steps", 0, True, False),
        ("num_images_to_log", 1, True, False), ("generation_chunk_size", 1, True, True),
        ("discriminator_channels", 1, True, False), ("discriminator_layers", 1, True, False),
        ("max_nonfinite_decoder_steps", 1, True, False),
    )

    def _validate_numbers(self) -> None:
        for name, low, inclusive, optional in self._RANGES:
            value = getattr(self, name)
            if value is None and optional:
                continue
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value >= low if inclusive else value > low)
            if not ok:
                bound = f">= {low}" if inclusive else f"> {low}"
                raise ValueError(f"RankEConfig.{name} must be a finite number {bound}{' or None' if optional else ''}, "
                                 f"got {value!r}.")
        tau = self.rank_gan_temperature
        if not (tau > 0 or math.isinf(tau)) or math.isnan(tau):
            raise ValueError(f"RankEConfig.rank_gan_temperature must be > 0 or inf, got {tau}.")
        for name in ("ema_decay", "decoder_adam_beta1", "decoder_adam_beta2"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
                raise ValueError(f"RankEConfig.{name} must lie in [0, 1), got {value!r}.")
