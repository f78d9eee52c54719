"""PyTorch LlamaGen: text-conditional autoregressive image generation over VQ-16 codes (Sun et al., 2024).

A port of LlamaGen's T2I GPT onto transformers' own pieces (see shared/LLAMAGEN.md for the checked facts):

- the GPT is a plain [`LlamaModel`] whose rotary module is replaced by [`LlamaGen2DRotaryEmbedding`] (row / column
  rotary over the image grid; caption positions get cos = sin = 0, so their queries and keys are zero);
- the caption prefix is `caption_projector(T5(prompt))`, fed through `inputs_embeds`, with the frozen
  `uncond_embedding` replacing the caption on the unconditional rows of classifier-free guidance;
- the VQ-16 tokenizer is a [`JanusVQVAE`] whose quantiser searches L2-normalised codes, as the original does.

Sequence layout, for a caption of `L <= 120` T5 tokens (left-padded) and image codes `z_0 ... z_{N-1}`:

    position:  120-L ... 119 | 120  121 ...  120+N-2
    input:     caption       | z_0  z_1 ...  z_{N-2}
    predicts:  (...)   z_0   | z_1  z_2 ...  z_{N-1}

Position ids are absolute (code `k` sits at `120 + k`, rotated by its grid row `k // g` and column `k % g`); they are
never derived from the padding mask, which would shift the 2D positions of left-padded rows.

Where the T5 encoder lives: inside the model, as the frozen submodule `model.text_encoder` (a
`T5EncoderModel`), so the model's inputs are prompt *token ids*, like any text model's. A trainer can then hand its
padded prompt ids to the (DDP / DeepSpeed-wrapped) model and every tensor the forward needs travels through the
wrapper: DDP ignores parameters that do not require gradients, ZeRO-3 partitions and gathers the encoder with the
rest of the model, `save_pretrained` writes one self-contained directory, and no second model has to be loaded,
placed and kept in sync beside the policy. The encoder always runs in eval mode (its dropout would otherwise change
the caption features in `model.train()`) and without autograd. The cost: every copy of the policy (a reference
model, an EMA) also copies the encoder (1.2B parameters for flan-t5-xl). Precomputed features can be passed as
`caption_embeds` instead of `input_ids`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    DynamicCache,
    GenerationMixin,
    JanusVQVAE,
    LlamaModel,
    LogitsProcessorList,
    PreTrainedModel,
    T5EncoderModel,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.janus.modeling_janus import JanusVQVAEVectorQuantizer

from .configuration_llamagen import LlamaGenConfig, default_generation_config


class LlamaGen2DRotaryEmbedding(nn.Module):
    """LlamaGen's 2D rotary embedding, returned as Llama's `(cos, sin)` in the half-split (`rotate_half`) layout.

    With `q = head_dim / 4` frequencies `base**(-2j / (head_dim / 2))`, the first `q` rotary pairs turn by the grid
    row of the code and the last `q` by its column. Positions below `caption_max_length` are caption positions and
    get cos = sin = 0: upstream stores zero rows there, which zeroes the caption's queries and keys (every query gives
    every caption key the logit 0). Requires the checkpoint's q / k rows permuted from interleaved to half-split pairs
    (the converter does it).

    Holds no buffers (the frequencies are recomputed, a few numbers), so loading on the meta device needs no care.
    """

    def __init__(self, config: LlamaGenConfig):
        super().__init__()
        text = config.text_config
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.base = float(text.rope_parameters["rope_theta"])
        self.prefix_length = config.caption_max_length
        self.grid_size = config.image_grid_size

    def inverse_frequencies(self, device=None) -> torch.Tensor:
        """(head_dim / 4,) float32 frequencies, computed in the same order of operations as upstream."""
        half = self.head_dim // 2
        exponents = torch.arange(0, half, 2, device=device)[: half // 2].float() / half
        return 1.0 / (self.base**exponents)

    def forward(self, x: torch.Tensor, position_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Absolute `position_ids` (B or 1, S) -> `cos`, `sin` of shape (B or 1, S, head_dim), in x's dtype."""
        code = position_ids - self.prefix_length  # index of the image code, negative on the caption
        is_image = (code >= 0).unsqueeze(-1)
        code = code.clamp(min=0)
        inv_freq = self.inverse_frequencies(position_ids.device)
        rows = (code // self.grid_size).float().unsqueeze(-1) * inv_freq
        cols = (code % self.grid_size).float().unsqueeze(-1) * inv_freq
        angles = torch.cat([rows, cols], dim=-1)  # (B, S, head_dim / 2): pair p's angle
        angles = torch.cat([angles, angles], dim=-1)  # half-split: pair p is dims (p, p + head_dim / 2)
        cos = torch.where(is_image, angles.cos(), 0.0)
        sin = torch.where(is_image, angles.sin(), 0.0)
        return cos.to(x.dtype), sin.to(x.dtype)


class LlamaGenCaptionProjector(nn.Module):
    """T5 caption features -> GPT prefix embeddings: `fc2(gelu_tanh(fc1(c)))`, no biases (upstream `cap_proj`).

    `uncond_embedding` (caption_max_length, caption_dim) is the unconditional caption of classifier-free guidance: a
    fixed random tensor (a buffer upstream, never trained) that replaces the whole caption, before projection.
    """

    def __init__(self, config: LlamaGenConfig):
        super().__init__()
        hidden = config.text_config.hidden_size
        self.fc1 = nn.Linear(config.caption_dim, hidden, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, hidden, bias=False)
        self.register_buffer(
            "uncond_embedding", torch.randn(config.caption_max_length, config.caption_dim) / config.caption_dim**0.5
        )

    def forward(
        self, caption_embeds: torch.Tensor, caption_mask: torch.Tensor, uncond: torch.BoolTensor | None = None
    ) -> torch.Tensor:
        """Prefix embeddings (B, L, hidden).

        Args:
            caption_embeds: (B, L) left-padded T5 features, (B, L, caption_dim), `L <= caption_max_length`.
            caption_mask: (B, L) 1 on caption tokens, 0 on padding; padding features are zeroed.
            uncond: (B,) bool, True on rows that take the unconditional caption (its last L rows, so that it lines
                up with the left-padded layout; the padding mask still applies to it).
        """
        features = caption_embeds * caption_mask.unsqueeze(-1).to(caption_embeds.dtype)
        if uncond is not None:
            length = features.size(1)
            null = self.uncond_embedding[-length:].to(features.dtype).expand_as(features)
            features = torch.where(uncond.view(-1, 1, 1), null, features)
        return self.fc2(self.act(self.fc1(features)))


class LlamaGenVQVAEVectorQuantizer(JanusVQVAEVectorQuantizer):
    """VQ-16's quantiser (`codebook_l2_norm=True`): nearest code by cosine, i.e. on L2-normalised latents and codes.

    Janus's quantiser searches the raw codebook, which picks different codes on LlamaGen's weights (shared/LLAMAGEN.md
    §3). Decoding (`get_codebook_entry`) normalises the code vectors too, and infers the grid from the code count, so
    one instance serves 256 and 512 px.
    """

    def forward(self, hidden_state: torch.Tensor):
        """Latents (B, D, h, w) -> (quantised (B, D, h, w), codebook + commitment loss, codes (B * h * w,))."""
        latents = F.normalize(hidden_state.permute(0, 2, 3, 1), dim=-1)  # (B, h, w, D)
        codebook = F.normalize(self.embedding.weight, dim=-1)
        codes = (latents.reshape(-1, self.embedding_dim) @ codebook.t()).argmax(dim=-1)
        quantised = codebook[codes].view(latents.shape)
        # Upstream's losses: codebook term, plus beta times the commitment term, both on normalised vectors.
        loss = torch.mean((quantised - latents.detach()) ** 2) + self.beta * torch.mean(
            (quantised.detach() - latents) ** 2
        )
        quantised = latents + (quantised - latents).detach()  # straight-through
        return quantised.permute(0, 3, 1, 2).contiguous(), loss, codes

    def get_codebook_entry(self, image_tokens: torch.LongTensor) -> torch.Tensor:
        """Codes (B, g*g) in raster order -> normalised code vectors (B, D, g, g)."""
        batch, count = image_tokens.shape
        grid = math.isqrt(count)
        if grid * grid != count:
            raise ValueError(f"Expected a square grid of codes, got {count} codes per image.")
        vectors = F.normalize(self.embedding(image_tokens), dim=-1)
        return vectors.view(batch, grid, grid, self.embedding_dim).permute(0, 3, 1, 2).contiguous()


class LlamaGenVQVAE(JanusVQVAE):
    """LlamaGen's VQ-16 tokenizer: `JanusVQVAE`'s layout and weights, with LlamaGen's normalised quantiser.

    Pixels are (B, 3, H, W) in [-1, 1]; codes are (B, N) in [0, num_embeddings), raster order. `decode` accepts any
    square grid (16x16 for 256 px, 32x32 for 512 px). Its saved weights also load as a plain `JanusVQVAE`.
    """

    def __init__(self, config):
        super().__init__(config)
        quantize = LlamaGenVQVAEVectorQuantizer(config)
        quantize.embedding = self.quantize.embedding  # keep the initialised codebook
        self.quantize = quantize

    def decode(self, image_tokens: torch.LongTensor) -> torch.Tensor:
        """Codes (B, N) -> pixels (B, 3, H, W), roughly in [-1, 1] (not clamped)."""
        return self.decoder(self.post_quant_conv(self.quantize.get_codebook_entry(image_tokens)))


class LlamaGenPreTrainedModel(PreTrainedModel):
    config: LlamaGenConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("text",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "T5Block", "JanusVQVAEResnetBlock", "JanusVQVAEAttnBlock"]
    _supports_sdpa = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, LlamaGenCaptionProjector):
            init.normal_(module.uncond_embedding, mean=0.0, std=module.uncond_embedding.size(-1) ** -0.5)


class LlamaGenModel(LlamaGenPreTrainedModel):
    """The frozen T5 caption encoder, the caption projector, the GPT (a `LlamaModel`) and the VQ tokenizer."""

    def __init__(self, config: LlamaGenConfig):
        super().__init__(config)
        self.text_encoder = T5EncoderModel._from_config(config.caption_encoder_config)
        self.caption_projector = LlamaGenCaptionProjector(config)
        self.language_model = LlamaModel._from_config(config.text_config)
        self.language_model.rotary_emb = LlamaGen2DRotaryEmbedding(config)
        # Image codes have no pad: a padding_idx (which TRL may set from the text tokenizer) would freeze one code.
        self.language_model.embed_tokens.padding_idx = None
        self.vqmodel = LlamaGenVQVAE._from_config(config.vq_config)
        self.post_init()
        self.text_encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.text_encoder.eval()  # frozen: its dropout must not perturb the caption features
        return self

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding):
        self.language_model.embed_tokens = value

    @torch.no_grad()
    def encode_captions(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """T5 token ids (B, L), left-padded, -> caption features (B, L, caption_dim), no gradient.

        T5's relative position bias makes the features of real tokens independent of the padding side, so left
        padding gives upstream's features (computed right-padded, then rotated to the left-padded layout).
        """
        return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def caption_prefix(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor,
        caption_embeds: torch.Tensor | None = None,
        uncond: torch.BoolTensor | None = None,
    ) -> torch.Tensor:
        """Prefix embeddings (B, L, hidden) from caption token ids or precomputed T5 features."""
        if (input_ids is None) == (caption_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` (T5 token ids) or `caption_embeds` (T5 features).")
        if attention_mask.size(1) > self.config.caption_max_length:
            raise ValueError(
                f"Captions are at most {self.config.caption_max_length} T5 tokens, got {attention_mask.size(1)}; "
                "truncate them (the processor does)."
            )
        if caption_embeds is None:
            caption_embeds = self.encode_captions(input_ids, attention_mask)
        dtype = self.caption_projector.fc1.weight.dtype
        return self.caption_projector(caption_embeds.to(dtype), attention_mask, uncond)

    def _drop_extra_padding(self, input_ids, caption_embeds, attention_mask):
        """Captions padded past `caption_max_length` (e.g. to a multiple of 8) lose their extra leading pad columns."""
        extra = attention_mask.size(1) - self.config.caption_max_length
        if extra <= 0 or attention_mask[:, :extra].any():
            return input_ids, caption_embeds, attention_mask  # `caption_prefix` rejects real overlong captions
        input_ids = None if input_ids is None else input_ids[:, extra:]
        caption_embeds = None if caption_embeds is None else caption_embeds[:, extra:]
        return input_ids, caption_embeds, attention_mask[:, extra:]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        caption_embeds: torch.Tensor | None = None,
        image_tokens: torch.LongTensor | None = None,
        uncond: torch.BoolTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Hidden states of `[caption | image_tokens]`, or of `image_tokens` alone after a cached prefix.

        Args:
            input_ids: (B, L) T5 caption token ids, left-padded, `L <= caption_max_length`; or `caption_embeds`
                (B, L, caption_dim). Both None on cached decoding steps.
            attention_mask: (B, L) caption mask with a caption; on cached steps, the mask over everything seen so far
                plus the new tokens.
            image_tokens: (B, M) codes in [0, K) that follow the caption (or the cache).
            uncond: (B,) bool, rows that take the unconditional caption (classifier-free guidance).
            position_ids: (B or 1, L + M) absolute positions; default `120 - L ... 119 + M`. Required on cached steps.
        """
        parts, mask = [], attention_mask
        has_caption = input_ids is not None or caption_embeds is not None
        if has_caption:
            if attention_mask is None:
                attention_mask = torch.ones(
                    (input_ids if input_ids is not None else caption_embeds).shape[:2], dtype=torch.long
                ).to(self.device)
            input_ids, caption_embeds, attention_mask = self._drop_extra_padding(
                input_ids, caption_embeds, attention_mask
            )
            parts.append(self.caption_prefix(input_ids, attention_mask, caption_embeds, uncond))
            mask = attention_mask
        if image_tokens is not None:
            parts.append(self.language_model.embed_tokens(image_tokens))
            if has_caption:
                mask = torch.cat([mask, mask.new_ones(image_tokens.shape)], dim=1)
        if not parts:
            raise ValueError("Nothing to run: pass a caption (input_ids / caption_embeds), image_tokens, or both.")
        embeds = torch.cat([p.to(parts[-1].dtype) for p in parts], dim=1)
        if position_ids is None:
            if not has_caption:
                raise ValueError("Cached decoding steps need explicit absolute `position_ids` (120 + code index).")
            start = self.config.caption_max_length - attention_mask.size(1)
            position_ids = torch.arange(start, start + embeds.size(1), device=embeds.device).unsqueeze(0)
        return self.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, cache=cache, use_cache=use_cache,
            **kwargs,
        )


class LlamaGenForImageGeneration(LlamaGenPreTrainedModel, GenerationMixin):
    """LlamaGen text-to-image: `model` (T5, projector, GPT, VQ) and `lm_head`, the code classifier (hidden -> K).

    `generate` (= `generate_images`) draws codes with a KV-cached classifier-free-guidance loop;
    `decode_image_tokens` renders codes to pixels; `forward` gives teacher-forced logits and the next-code loss.
    """

    def __init__(self, config: LlamaGenConfig):
        super().__init__(config)
        self.model = LlamaGenModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        self.generation_config = default_generation_config()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.model.text_encoder.requires_grad_(False)  # loading replaces the parameters, and their flags
        return loaded

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> None:
        """None: LlamaGen has no output word embeddings to tie or resize. `lm_head` is the image-code classifier,
        applied by this model's own forward (so a LoRA adapter on it is trained, unlike a text LM head that a trainer
        would bypass by multiplying with its weight)."""
        return None

    @property
    def num_image_tokens(self) -> int:
        return self.config.num_image_tokens

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        caption_embeds: torch.Tensor | None = None,
        image_tokens: torch.LongTensor | None = None,
        uncond: torch.BoolTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Code logits (B, S, K) at every input position (see `LlamaGenModel.forward` for the inputs).

        `labels` (B, N): the codes of the image. The caption's last position predicts `labels[:, 0]` and image token
        `i` predicts `labels[:, i + 1]`; `image_tokens` defaults to `labels[:, :-1]`. The loss is the mean
        cross-entropy over the N codes. `logits_to_keep=n` keeps the last n positions only.
        """
        if labels is not None and image_tokens is None:
            image_tokens = labels[:, :-1]
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            caption_embeds=caption_embeds,
            image_tokens=image_tokens,
            uncond=uncond,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        loss = None
        if labels is not None:
            logits = self.lm_head(hidden[:, -labels.size(1) :])
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        else:
            logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache)

    # ---------------------------------------------------------------------------------------------- generation
    def generate(self, *args, **kwargs) -> torch.LongTensor:
        """Image codes (B, N); the same as [`generate_images`] (LlamaGen does not generate text)."""
        return self.generate_images(*args, **kwargs)

    @torch.no_grad()
    def generate_images(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        caption_embeds: torch.Tensor | None = None,
        *,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        do_sample: bool | None = None,
        cfg_interval: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_logits: bool = False,
        use_cache: bool = True,
        **unused,
    ):
        """Draw one image per caption row with a KV-cached classifier-free-guidance loop (upstream `generate`).

        Unset sampling arguments come from `self.generation_config` (CFG 7.5, top-k 1000, top-p 1, temperature 1).
        Each step runs `[cond; uncond]` rows, mixes raw logits `u + s * (c - u)` (code `t` is guided when
        `cfg_interval < 0` or `t <= cfg_interval + 1`; later codes use the conditional logits), then temperature,
        top-k and top-p, then draws. The drawn code feeds both halves. `guidance_scale=1` runs the conditional rows
        only. `generator` may be one generator, or one per row (a row's image then depends on its own seed only).
        `use_cache=False` re-runs the whole `[caption | codes so far]` forward for every code instead (the same codes,
        at quadratic cost: a baseline for benchmarks).

        Returns:
            codes (B, N) in [0, K); with `output_logits=True`, also the mixed logits (B, N, K) float32 before
            temperature and truncation (the distribution a sampled code came from is `softmax(logits / T)` truncated).
        """
        config = self.generation_config
        guidance_scale = config.guidance_scale if guidance_scale is None else guidance_scale
        temperature = config.temperature if temperature is None else temperature
        top_k = config.top_k if top_k is None else top_k
        top_p = config.top_p if top_p is None else top_p
        do_sample = config.do_sample if do_sample is None else do_sample
        cfg_interval = getattr(config, "cfg_interval", -1) if cfg_interval is None else cfg_interval
        caption = input_ids if input_ids is not None else caption_embeds
        if attention_mask is None:
            attention_mask = torch.ones(caption.shape[:2], dtype=torch.long, device=caption.device)
        batch, length = attention_mask.shape
        if isinstance(generator, (list, tuple)) and len(generator) != batch:
            raise ValueError(f"Got {len(generator)} generators for {batch} caption rows.")
        if caption_embeds is None:
            caption_embeds = self.model.encode_captions(input_ids, attention_mask)

        use_cfg = guidance_scale != 1.0
        uncond = None
        if use_cfg:
            caption_embeds = torch.cat([caption_embeds, caption_embeds])
            attention_mask = torch.cat([attention_mask, attention_mask])
            uncond = torch.arange(2 * batch, device=attention_mask.device) >= batch
        warpers = _logits_warpers(temperature, top_k, top_p)
        cache = DynamicCache(config=self.config.text_config) if use_cache else None
        prefix_end = self.config.caption_max_length
        codes = torch.empty(batch, self.num_image_tokens, dtype=torch.long, device=attention_mask.device)
        step_logits = []
        out = self(caption_embeds=caption_embeds, attention_mask=attention_mask, uncond=uncond,
                   cache=cache, use_cache=use_cache, logits_to_keep=1)  # fmt: skip
        mask = attention_mask
        for step in range(self.num_image_tokens):
            logits = out.logits[:, -1].float()
            if use_cfg:
                cond, uncond_logits = logits.chunk(2)
                guided = cfg_interval < 0 or step <= cfg_interval + 1
                logits = uncond_logits + guidance_scale * (cond - uncond_logits) if guided else cond
            if output_logits:
                step_logits.append(logits)
            if do_sample:
                probs = warpers(None, logits).softmax(dim=-1)
                next_code = _draw(probs, generator)
            else:
                next_code = logits.argmax(dim=-1)
            codes[:, step] = next_code
            if step + 1 == self.num_image_tokens:
                break
            if not use_cache:  # the whole prefix again, codes drawn so far included
                so_far = torch.cat([codes[:, : step + 1]] * (2 if use_cfg else 1))
                out = self(caption_embeds=caption_embeds, attention_mask=attention_mask, image_tokens=so_far,
                           uncond=uncond, use_cache=False, logits_to_keep=1)  # fmt: skip
                continue
            feed = torch.cat([next_code, next_code]) if use_cfg else next_code
            mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
            position = torch.full((1, 1), prefix_end + step, device=mask.device)
            out = self(image_tokens=feed.unsqueeze(-1), attention_mask=mask, position_ids=position, cache=out.cache,
                       use_cache=True)  # fmt: skip
        if output_logits:
            return codes, torch.stack(step_logits, dim=1)
        return codes

    def decode_image_tokens(self, image_tokens: torch.LongTensor) -> torch.Tensor:
        """Codes (B, N) -> pixels (B, 3, H, W), roughly in [-1, 1] (not clamped; NCHW, unlike Janus's NHWC)."""
        if self.model.vqmodel is None:
            raise ValueError("This model's VQ tokenizer is detached (prepared for training); decode with the codec.")
        return self.model.vqmodel.decode(image_tokens)


def _logits_warpers(temperature: float, top_k: int, top_p: float) -> LogitsProcessorList:
    """Temperature, top-k, top-p: transformers' warpers, which match upstream's `top_k_top_p_filtering` semantics."""
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k and top_k > 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def _draw(probs: torch.Tensor, generator) -> torch.LongTensor:
    """One code per row of `probs` (B, K); a list of generators gives each row its own random stream."""
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.multinomial(p[None], 1, generator=g) for p, g in zip(probs, generator)]).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


__all__ = [
    "LlamaGen2DRotaryEmbedding",
    "LlamaGenCaptionProjector",
    "LlamaGenForImageGeneration",
    "LlamaGenModel",
    "LlamaGenPreTrainedModel",
    "LlamaGenVQVAE",
    "LlamaGenVQVAEVectorQuantizer",
]
