"""A minimal image-token backbone that is not Janus, and its adapter: what a third party writes to plug a new
model into RankE (`ranke_trl.policy.register_backbone`), with nothing changed in the trainer.

The toy policy is a first-order autoregressive model over 16 codes: the logits of code t depend on the mean prompt
embedding, the position t and code t-1. Its VQ renders each code as a 4x4 RGB patch of a 16x16 image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel

from ranke_trl.policy import ImageCodeLogProbs, ImageTokenPolicy, PromptBatch, VQCodec, register_backbone
from ranke_trl.policy.base import apply_cfg, unwrap_model, warp_logits

GRID, PATCH = 4, 4  # 4x4 codes, each a 4x4 patch: 16x16 images


class ToyVQConfig(PretrainedConfig):
    model_type = "toy_vq"

    def __init__(self, codebook_size: int = 32, embed_dim: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.codebook_size, self.embed_dim = codebook_size, embed_dim


class ToyVQ(PreTrainedModel):
    config_class = ToyVQConfig
    main_input_name = "pixel_values"

    def __init__(self, config: ToyVQConfig):
        super().__init__(config)
        self.encoder = nn.Linear(3 * PATCH * PATCH, config.embed_dim)
        self.codebook = nn.Embedding(config.codebook_size, config.embed_dim)
        self.decoder = nn.Linear(config.embed_dim, 3 * PATCH * PATCH)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.5)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def decode(self, codes):  # (B, 16) -> (B, 3, 16, 16)
        patches = self.decoder(F.normalize(self.codebook(codes), dim=-1)).tanh()  # (B, 16, 48)
        patches = patches.view(-1, GRID, GRID, 3, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
        return patches.reshape(-1, 3, GRID * PATCH, GRID * PATCH)


class ToyCodec(VQCodec):
    def __init__(self, module: ToyVQ):
        self.module = module

    codebook_size = property(lambda self: self.module.config.codebook_size)
    num_tokens = property(lambda self: GRID * GRID)
    image_size = property(lambda self: GRID * PATCH)

    def decode(self, codes):
        return self.module.decode(codes)

    @torch.no_grad()
    def encode(self, pixels):
        patches = pixels.unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH)  # (B, 3, 4, 4, P, P)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(pixels.size(0), GRID * GRID, -1)
        latents = F.normalize(self.module.encoder(patches), dim=-1)
        return (latents @ F.normalize(self.module.codebook.weight, dim=-1).T).argmax(-1)

    def decoder_parameters(self, train_codebook=False):
        return list(self.module.decoder.parameters()) + (list(self.module.codebook.parameters()) if train_codebook else [])


class ToyImageGPTConfig(PretrainedConfig):
    model_type = "toy_image_gpt"

    def __init__(self, vocab_size: int = 300, hidden_size: int = 16, vq_config=None, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.vq_config = vq_config if isinstance(vq_config, ToyVQConfig) else ToyVQConfig(**(vq_config or {}))

    def to_dict(self):
        out = super().to_dict()
        out["vq_config"] = self.vq_config.to_dict()
        return out


class ToyImageGPT(PreTrainedModel):
    config_class = ToyImageGPTConfig

    def __init__(self, config: ToyImageGPTConfig):
        super().__init__(config)
        k, h = config.vq_config.codebook_size, config.hidden_size
        self.text = nn.Embedding(config.vocab_size, h)
        self.code = nn.Embedding(k + 1, h)  # the last row is "no previous code"
        self.position = nn.Embedding(GRID * GRID, h)
        self.head = nn.Sequential(nn.Linear(h, h), nn.Tanh(), nn.Linear(h, k))
        self.vq = ToyVQ(config.vq_config)
        self.generation_config = GenerationConfig()  # TRL reads it; sampling is the adapter's
        self.post_init()

    def logits(self, input_ids, attention_mask, previous):  # previous: (B, T) -> (B, T, K)
        mask = attention_mask.unsqueeze(-1).float()
        prompt = (self.text(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        positions = torch.arange(previous.size(1), device=previous.device)
        return self.head(prompt[:, None] + self.position(positions)[None] + self.code(previous))

    def forward(self, input_ids=None, attention_mask=None, image_codes=None, image_code_kwargs=None, **kwargs):
        return self._policy._teacher_forced(self, input_ids, attention_mask, image_codes, **(image_code_kwargs or {}))


class ToyPolicy(ImageTokenPolicy):
    model_type = "toy_image_gpt"
    model_class = ToyImageGPT

    def __init__(self, tokenizer, model, prompt_template: str = "{prompt}"):
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        self.prompt_template = prompt_template
        toy = unwrap_model(model)
        self.codebook_size, self.num_image_tokens = toy.config.vq_config.codebook_size, GRID * GRID
        toy._policy = self

    @classmethod
    def load_model(cls, name_or_path, **kwargs):
        raise NotImplementedError("the toy backbone is built in memory")

    @classmethod
    def load_codec(cls, name_or_path, **kwargs):
        return ToyCodec(ToyVQ.from_pretrained(name_or_path, **kwargs))

    def prompt_token_ids(self, prompts):
        return self.tokenizer([self.prompt_template.format(prompt=p) for p in prompts])["input_ids"]

    def batch_from_ids(self, rows, device=None):
        length = max(map(len, rows))
        ids = torch.full((len(rows), length), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, length - len(row):], mask[i, length - len(row):] = torch.tensor(row), 1
        uncond = torch.full_like(ids, self.tokenizer.pad_token_id)
        batch = PromptBatch(ids, mask, uncond)
        return batch.to(device) if device is not None else batch

    def _uncond_mask(self, attention_mask):
        return torch.zeros_like(attention_mask)  # the unconditional branch sees no prompt at all

    def _guided_logits(self, toy, input_ids, attention_mask, previous, guidance_scale, use_cfg):
        cond = toy.logits(input_ids, attention_mask, previous)
        uncond = toy.logits(input_ids, self._uncond_mask(attention_mask), previous) if use_cfg else None
        return apply_cfg(cond, uncond, guidance_scale)

    @torch.no_grad()
    def sample(self, model, prompts, *, guidance_scale, temperature=1.0, top_k=0, top_p=1.0, do_sample=True,
               generator=None):
        toy = unwrap_model(model)
        batch = prompts.input_ids.size(0)
        previous = torch.full((batch, 1), self.codebook_size, dtype=torch.long, device=prompts.input_ids.device)
        codes = []
        for step in range(self.num_image_tokens):
            logits = self._guided_logits(toy, prompts.input_ids, prompts.attention_mask, previous,
                                         guidance_scale, guidance_scale != 1.0)[:, -1].float()
            if do_sample:
                probs = warp_logits(logits, temperature, top_k, top_p).softmax(-1)
                gens = generator if isinstance(generator, (list, tuple)) else [generator] * batch
                code = torch.cat([torch.multinomial(p[None], 1, generator=g) for p, g in zip(probs, gens)]).squeeze(-1)
            else:
                code = logits.argmax(-1)
            codes.append(code)
            previous = torch.cat([previous, code[:, None]], dim=1)
        return torch.stack(codes, dim=1)

    def _teacher_forced(self, toy, input_ids, attention_mask, codes, guidance_scale, temperature, mode,
                        compute_entropy):
        start = torch.full_like(codes[:, :1], self.codebook_size)
        previous = torch.cat([start, codes[:, :-1]], dim=1)
        use_cfg = mode == "guided" and guidance_scale != 1.0
        logits = self._guided_logits(toy, input_ids, attention_mask, previous, guidance_scale, use_cfg).float()
        log_probs_all = (logits / temperature).log_softmax(-1)
        entropy = -(log_probs_all.exp() * log_probs_all).sum(-1) if compute_entropy else None
        return ImageCodeLogProbs(log_probs=log_probs_all.gather(-1, codes[..., None]).squeeze(-1), entropy=entropy)

    def codec(self, model):
        return ToyCodec(unwrap_model(model).vq)

    def prepare_for_training(self, model):
        toy = unwrap_model(model)
        codec = ToyCodec(toy.vq)
        toy.vq = None
        return codec

    def restore_model(self, model, codec):
        unwrap_model(model).vq = codec.module

    def attached_codec_module(self, model):
        return unwrap_model(model).vq

    def attach_codec_module(self, model, module):
        unwrap_model(model).vq = module

    def lora_target_modules(self, names=None):
        return r"^head\.\d+$"


register_backbone(ToyPolicy)
