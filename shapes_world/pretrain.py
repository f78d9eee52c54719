"""ShapesWorld's pretrained components, trained from scratch by this file and cached like Hub checkpoints.

`prepare_shapes_world()` trains what the cache lacks, in this order, and saves each with `save_pretrained`-style
files, so it loads through the same code as a Hub model:

- `features/`: the attribute classifier behind ShapesFID and the perceptual loss (`features.py`);
  `ShapesAttributeNet.from_pretrained`.
- `vq/`: the VQ tokenizer, Janus's VQ architecture trained as a VQGAN (`perceptual.py`); `JanusVQVAE.from_pretrained`.
- `clip/`: an open_clip CLIP trained contrastively on (image, caption) pairs (`clip.py`), the `shapes_clip` reward;
  `CLIPReward("local-dir:<cache>/clip", pretrained=None)`.
- `policy/`: a tiny Janus after image-token SFT (`ranke_trl.sft`) on the VQ's codes, with the VQ inside and its
  processor; `JanusForConditionalGeneration.from_pretrained` and `AutoProcessor.from_pretrained`.
- `policy_llamagen/` (only with `backbone="llamagen"`, an extra stage after the four): a tiny LlamaGen after the same
  SFT, with the world's VQ and its own caption encoder (`llamagen_policy.py`); `LlamaGenForImageGeneration`.

`features/shapes_fid_reference.safetensors` holds ShapesFID statistics of real validation images
(`FIDMetric.load_reference`). `manifest.json` records the seed, command, versions, sizes, wall times and quality.

A preparation prints a banner (cache, stages, estimate), a `stage k/4` line per stage and a progress bar for every
step longer than a few seconds (rendering, training, encoding, decoding, sampling). For a given seed, settings,
library versions and thread count it is deterministic: the same weights and figures (`tests/test_world_determinism.py`).

The cache lives in `$RANKE_SHAPES_CACHE`, else `~/.cache/ranke_trl/shapes_world`; a `tiny=True` preparation
(seconds, poor models, for tests) defaults to the same path with the suffix `_tiny`. Recipes name the policy
`shapes` (`shapes_policy_path`) and the reward `shapes_clip` (`shapes_clip_reward`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
import transformers
from filelock import FileLock
from tqdm.auto import tqdm
from transformers import JanusVQVAE

from ranke_trl.evaluation.fid import FIDMetric
from ranke_trl.policy import make_policy
from ranke_trl.policy.janus import JanusVQCodec
from ranke_trl.rewards.clip import CLIPReward
from ranke_trl.sft import ImageTokenSFT, ImageTokenSFTConfig
from ranke_trl.tiny import build_tiny_janus, build_tiny_janus_processor, tiny_janus_config
from .clip import clip_retrieval_accuracy, save_open_clip, shapes_clip_config, train_shapes_clip
from .data import sample_scenes
from .features import ShapesAttributeNet, ShapesFIDFeatures, cell_accuracy, render_targets, train_attribute_net
from .perceptual import ShapesPerceptualDistance, VQGANSettings, train_vqgan
from .scenes import render_scene
from .shapes_eval import ShapesEval, summarize

CACHE_ENV = "RANKE_SHAPES_CACHE"
DEFAULT_CACHE = Path("~/.cache/ranke_trl/shapes_world")
STAGES = ("features", "vq", "clip", "policy")
STAGE_NAMES = {"features": "feature net", "vq": "VQ tokenizer", "clip": "CLIP", "policy": "SFT policy"}
STAGE_WORK = {
    "features": "the per-cell attribute classifier behind ShapesFID and the VQ's perceptual loss",
    "vq": "Janus's VQ trained as a VQGAN, then every image encoded",
    "clip": "the shapes_clip reward, trained on renders and their VQ reconstructions",
    "policy": "a tiny Janus trained by image-token SFT on the codes, then sampled for the manifest's figures",
}
#: keyed by `tiny`; the full figure is measured: 26 min 28 s on an idle two-core machine, 2 threads (2026-12-03)
ESTIMATE = {False: "about 26 min on 2 idle cores, longer on a busy machine", True: "under a minute on 2 cores"}
MANIFEST_FORMAT = "ranke_trl.ShapesWorld/1"
FID_REFERENCE = "shapes_fid_reference.safetensors"
DECODE_BATCH = 64  # images per VQ decoder forward while preparing


@dataclass(frozen=True)
class ShapesWorldSettings:
    """Data sizes, model sizes and training steps of one preparation (`FULL` or `TINY`)."""

    num_train_images: int = 8000
    num_eval_images: int = 256
    feature_steps: int = 400
    feature_batch_size: int = 64
    codebook_size: int = 256
    #: pixels per code side at the 64 px canvas: 8 gives 8x8 codes (world 1; the shapes, 14 and 20 px wide, are 1.75
    #: and 2.5 codes across), 4 gives 16x16 codes (world 2 of the v2 protocol: 3.5 and 5 codes across)
    patch_size: int = 8
    vq_base_channels: int = 32
    vq: VQGANSettings = field(default_factory=VQGANSettings)
    clip_embed_dim: int = 64
    clip_steps: int = 700
    clip_batch_size: int = 128
    clip_learning_rate: float = 1e-3
    policy_hidden_size: int = 128
    policy_num_layers: int = 4
    sft: ImageTokenSFTConfig = field(
        default_factory=lambda: ImageTokenSFTConfig(num_train_steps=2500, batch_size=32, learning_rate=2e-3)
    )
    eval_guidance_scale: float = 3.0  # samples for the manifest's figures: CFG 3, temperature 1, top-p 0.9
    eval_top_p: float = 0.9


FULL = ShapesWorldSettings()
TINY = ShapesWorldSettings(
    num_train_images=32,
    num_eval_images=8,
    feature_steps=2,
    feature_batch_size=8,
    vq=VQGANSettings(steps=2, batch_size=4, gan_start=0.5, reinit_every=1),
    clip_steps=2,
    clip_batch_size=8,
    policy_hidden_size=64,
    policy_num_layers=2,
    sft=ImageTokenSFTConfig(num_train_steps=2, batch_size=8, learning_rate=1e-3),
)


BACKBONES = ("janus", "llamagen")  # the architectures of the world's SFT'd policy
LLAMAGEN_STAGE = "policy_llamagen"
#: an extra stage: a second CLIP, trained like `clip/` on other scenes (seed + `SECOND_CLIP_SEED_OFFSET`) from other
#: initial weights, so that L_rbp can be driven by a reward the evaluation's CLIP score does not share (ours)
SECOND_CLIP_STAGE = "clip_second"
SECOND_CLIP_SEED_OFFSET = 1000
# Estimated from timed steps (an SFT step costs 0.64x the Janus one at equal widths), not from a full run.
LLAMAGEN_ESTIMATE = {False: "about 7-9 min on 2 idle cores", True: "seconds"}  # keyed by `tiny`


def shapes_cache_dir(cache_dir: str | os.PathLike | None = None, tiny: bool = False) -> Path:
    """The cache folder: `cache_dir`, else `$RANKE_SHAPES_CACHE`, else `~/.cache/ranke_trl/shapes_world` (+ `_tiny`)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE)).expanduser()
    return root.with_name(root.name + "_tiny") if tiny else root


def read_manifest(cache_dir: str | os.PathLike) -> dict | None:
    """The cache's `manifest.json` as a dict, or None if there is none."""
    path = Path(cache_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _write_manifest(root: Path, manifest: dict) -> None:
    tmp = root / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, root / "manifest.json")  # atomic: a reader never sees half a manifest


def _bar(total: int, desc: str, show: bool, unit: str = "img") -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=not show)


def _render(split: str, num: int, seed: int, progress: bool = False):
    """Scenes of `split` and their renders, uint8 (M, 3, 64, 64): the rows `make_split(split, num, seed)` holds."""
    scenes = sample_scenes(split, num, seed)
    renders = [render_scene(scene) for scene in tqdm(scenes, f"rendering {split} scenes", disable=not progress)]
    images = np.stack(renders) if scenes else np.zeros((0, 64, 64, 3), np.uint8)
    return scenes, torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def _save_stage(root: Path, name: str, save) -> None:
    """Run `save(folder)` into a temporary folder, then move it in place, so a crash leaves no half-written stage."""
    tmp, final = root / f".{name}.tmp", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


@torch.no_grad()
def _encode(codec: JanusVQCodec, images: torch.Tensor, desc: str, progress: bool, batch_size: int = 64):
    """uint8 images (M, 3, 64, 64) -> codes (M, N) by the L2-normalised lookup."""
    chunks = []
    with _bar(len(images), desc, progress) as bar:
        for i in range(0, len(images), batch_size):
            chunks.append(codec.encode(images[i : i + batch_size].float() / 127.5 - 1))
            bar.update(len(chunks[-1]))
    return torch.cat(chunks)


def _decode(codec: JanusVQCodec, codes: torch.Tensor, desc: str, progress: bool) -> torch.Tensor:
    """Codes (M, N) -> images (M, 3, 64, 64) in [0, 1], `DECODE_BATCH` at a time (`decode_images`, with a bar)."""
    chunks = []
    with _bar(len(codes), desc, progress) as bar:
        for i in range(0, len(codes), DECODE_BATCH):
            chunks.append(codec.decode_images(codes[i : i + DECODE_BATCH]))
            bar.update(len(chunks[-1]))
    return torch.cat(chunks) if chunks else torch.zeros(0, 3, 64, 64)


def _fid(net: ShapesAttributeNet, real01: torch.Tensor, fake01: torch.Tensor) -> float:
    metric = FIDMetric(feature_extractor=ShapesFIDFeatures(net))
    metric.update_real(real01)
    metric.update_fake(fake01)
    return metric.compute()


def _shapes_eval(images01: torch.Tensor, scenes) -> dict:
    summary = summarize(ShapesEval().evaluate_batch(images01, [scene.metadata for scene in scenes]))
    names = {"accuracy": "image_accuracy", "mean_score": "mean_score", "per_family": "per_family"}
    return {key: summary[name] for key, name in names.items()}


# --- the stages: each trains one component, saves it, and returns it with its manifest record -----------------------


class _World:
    """What every stage reads: train and validation scenes with their renders, uint8 (M, 3, 64, 64) (the rows
    `make_split(split, M, seed)` holds), and their codes and validation reconstructions under the current VQ,
    computed once."""

    def __init__(self, settings: ShapesWorldSettings, seed: int, progress: bool):
        self.progress = progress
        self.train_scenes, self.train_images = _render("train", settings.num_train_images, seed, progress)
        self.eval_scenes, self.eval_images = _render("validation", settings.num_eval_images, seed, progress)
        self.eval01 = self.eval_images.float() / 255
        self._codes: tuple | None = None
        self._recon: tuple | None = None

    def codes(self, vq: JanusVQVAE) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (M, N) of the train and validation renders under `vq`."""
        if self._codes is None or self._codes[0] is not vq:
            codec, show = JanusVQCodec(vq), self.progress
            train = _encode(codec, self.train_images, "VQ tokenizer: encoding train images", show)
            valid = _encode(codec, self.eval_images, "VQ tokenizer: encoding validation images", show)
            self._codes = (vq, train, valid)
        return self._codes[1:]

    def eval_recon01(self, vq: JanusVQVAE) -> torch.Tensor:
        """VQ reconstructions of the validation renders, (M, 3, 64, 64) in [0, 1]."""
        if self._recon is None or self._recon[0] is not vq:
            desc = "VQ tokenizer: decoding validation images"
            self._recon = (vq, _decode(JanusVQCodec(vq), self.codes(vq)[1], desc, self.progress))
        return self._recon[1]


def _train_features(s: ShapesWorldSettings, seed: int, world: _World, root: Path, progress: bool):
    targets = render_targets(world.train_scenes)
    net, losses = train_attribute_net(
        world.train_images, targets, s.feature_steps, s.feature_batch_size, seed=seed, show_progress=progress,
        desc="feature net: training",
    )
    reference = FIDMetric(feature_extractor=ShapesFIDFeatures(net))
    reference.update_real(world.eval01)

    def save(folder: Path):
        net.save_pretrained(folder)
        reference.save_reference(folder / FID_REFERENCE)

    _save_stage(root, "features", save)
    quality = {
        "train_loss": float(np.mean(losses[-20:])),
        "cell_accuracy": cell_accuracy(net, world.eval_images, render_targets(world.eval_scenes)),
    }
    return net, {"num_parameters": sum(p.numel() for p in net.parameters()), "quality": quality}


def _train_vq(s: ShapesWorldSettings, seed: int, world: _World, root: Path, progress: bool, net: ShapesAttributeNet):
    config = tiny_janus_config(
        codebook_size=s.codebook_size, base_channels=s.vq_base_channels, patch_size=s.patch_size
    ).vq_config
    perceptual = ShapesPerceptualDistance(net)
    vq, log = train_vqgan(world.train_images, config, perceptual, s.vq, seed, progress, "VQ tokenizer: training")
    _save_stage(root, "vq", vq.save_pretrained)
    train_codes, _ = world.codes(vq)
    counts = torch.bincount(train_codes.flatten(), minlength=s.codebook_size).double()
    probs = counts[counts > 0] / counts.sum()
    recon01 = world.eval_recon01(vq)
    quality = {
        "recon_l1": float((recon01 - world.eval01).abs().mean()),  # in [0, 1] pixel units
        "codebook_usage": float((counts > 0).double().mean()),  # share of entries the training images use
        "codebook_perplexity": float(torch.exp(-(probs * probs.log()).sum())),
        "recon_shapes_eval": _shapes_eval(recon01, world.eval_scenes),  # real renders score 1.0
        "recon_shapes_fid": _fid(net, world.eval01, recon01),
    }
    return vq, {"num_parameters": sum(p.numel() for p in vq.parameters()), "train_log": log, "quality": quality}


def _train_clip(s: ShapesWorldSettings, seed: int, world: _World, root: Path, progress: bool, vq: JanusVQVAE,
                stage: str = "clip"):
    train_codes, _ = world.codes(vq)
    # The reward scores decoded images, so the CLIP also sees VQ reconstructions of its training renders.
    recon01 = _decode(JanusVQCodec(vq), train_codes, "CLIP: decoding train images", progress)
    recon = (recon01 * 255).round().to(torch.uint8)
    captions = [scene.prompt for scene in world.train_scenes]
    config = shapes_clip_config(s.clip_embed_dim)
    model, log = train_shapes_clip(
        torch.cat([world.train_images, recon]), captions * 2, config, s.clip_steps, s.clip_batch_size,
        s.clip_learning_rate, seed, progress, desc="CLIP: training",
    )
    _save_stage(root, stage, lambda folder: save_open_clip(model, config, folder))
    eval_captions = [scene.prompt for scene in world.eval_scenes]
    quality = {
        "retrieval_top1": clip_retrieval_accuracy(model, world.eval01, eval_captions),
        "retrieval_top1_on_recon": clip_retrieval_accuracy(model, world.eval_recon01(vq), eval_captions),
        "retrieval_chance": 1.0 / len(set(eval_captions)),
    }
    return model, {"num_parameters": sum(p.numel() for p in model.parameters()), "train_log": log, "quality": quality}


def _train_policy(s, seed: int, world: _World, root: Path, progress: bool, net: ShapesAttributeNet, vq: JanusVQVAE):
    model = build_tiny_janus(
        seed=seed,
        hidden_size=s.policy_hidden_size,
        num_layers=s.policy_num_layers,
        codebook_size=s.codebook_size,
        base_channels=s.vq_base_channels,
        patch_size=s.patch_size,
    )
    model.model.vqmodel.load_state_dict(vq.state_dict())
    with torch.no_grad():  # (ours) code embeddings start at the tokenizer's unit-norm codebook, not at noise
        model.model.generation_embeddings.weight.copy_(F.normalize(vq.quantize.embedding.weight, dim=-1))
    processor = build_tiny_janus_processor(num_image_tokens=model.config.vision_config.num_image_tokens)
    # The text config's special tokens are the tokenizer's, so a trainer loading the policy has nothing to align.
    text_config = model.config.get_text_config()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(text_config, name, getattr(processor.tokenizer, name))
    policy = make_policy(model, processor)
    sft = ImageTokenSFT(policy, model, replace(s.sft, seed=seed, show_progress=progress))
    train_codes, eval_codes = world.codes(vq)
    losses = sft.train([scene.prompt for scene in world.train_scenes], train_codes)
    eval_prompts = [scene.prompt for scene in world.eval_scenes]
    generator = torch.Generator().manual_seed(seed)
    prompts = policy.encode_prompts(eval_prompts)
    # One batch with one generator, as the manifest's figures were first measured; its bar moves once, at the end.
    with _bar(len(eval_prompts), "SFT policy: sampling validation images", progress) as bar:
        codes = policy.sample(
            model, prompts, guidance_scale=s.eval_guidance_scale, top_p=s.eval_top_p, generator=generator
        )
        bar.update(len(codes))
    samples01 = _decode(sft.codec, codes, "SFT policy: decoding samples", progress)

    def save(folder: Path):
        with policy.codec_attached(model, sft.codec):
            model.save_pretrained(folder)
        processor.save_pretrained(folder)

    _save_stage(root, "policy", save)
    quality = {
        "sft_train_loss": float(np.mean(losses[-max(1, len(losses) // 20) :])),  # nats per code, with prompt dropout
        "sft_eval_loss": sft.evaluate(eval_prompts, eval_codes),  # validation, no dropout; uniform is log K
        "samples_guidance_scale": s.eval_guidance_scale,
        "samples_top_p": s.eval_top_p,
        "samples_shapes_eval": _shapes_eval(samples01, world.eval_scenes),
        "samples_shapes_fid": _fid(net, world.eval01, samples01),
    }
    return model, {"num_parameters_without_vq": sum(p.numel() for p in model.parameters()), "quality": quality}


# --- preparation, manifest and loading ------------------------------------------------------------------------------


def _identity(settings: ShapesWorldSettings, seed: int, tiny: bool) -> dict:
    """What a cache was prepared with; a cache is reused only for the same identity."""
    return {"seed": seed, "tiny": tiny, "settings": json.loads(json.dumps(asdict(settings)))}


#: settings added after caches were first written, with the value those caches were prepared with
_LATER_SETTINGS = {"patch_size": 8}


def _recorded_identity(manifest: dict) -> dict:
    """A manifest's identity, with the settings added since it was written filled in as it was prepared."""
    identity = manifest.get("identity", {})
    return {**identity, "settings": {**_LATER_SETTINGS, **identity.get("settings", {})}}


def _recorded_patch_size(manifest: dict | None) -> int:
    return _recorded_identity(manifest or {})["settings"]["patch_size"]


def _complete(root: Path, manifest: dict | None, stage: str) -> bool:
    return manifest is not None and stage in manifest.get("stages", {}) and (root / stage).is_dir()


def prepare_shapes_world(
    cache_dir: str | os.PathLike | None = None,
    tiny: bool = False,
    seed: int = 0,
    force: bool = False,
    show_progress: bool = True,
    backbone: str = "janus",
    patch_size: int | None = None,
    until: str | None = None,
    second_clip: bool = False,
) -> str:
    """Train and cache whatever ShapesWorld component is missing; returns the cache folder.

    Stages run in order (features -> vq -> clip -> policy); the first missing one and every later one (which depend
    on it) are trained, the earlier ones loaded. A complete cache returns at once, silently. `backbone="llamagen"`
    then adds the LlamaGen policy (`policy_llamagen/`) if it is missing, loading the rest: an existing world gains it
    without retraining anything else.

    Args:
        cache_dir: the cache folder (see `shapes_cache_dir` for the default).
        tiny: seconds-long training of small models (loadable, not good): for tests and smoke runs.
        seed: seeds the data, the initialisations and the batch orders.
        force: retrain everything, replacing the cache.
        show_progress: print the banner, the `stage k/4` lines and the progress bars.
        backbone: "janus" (the world's own policy, always prepared) or "llamagen" (also `policy_llamagen/`).
        patch_size: pixels per code side (`ShapesWorldSettings.patch_size`): 8 (8x8 codes) or 4 (16x16 codes).
            None: the cache's recorded one, else 8.
        until: stop after this stage (one of `STAGES`), e.g. "vq" for the v2 gate's pre-RL check, which needs only
            the feature net and the VQ; a later call without it resumes at the next stage.
        second_clip: also prepare `clip_second/` (`SECOND_CLIP_STAGE`), the `shapes_clip_second` reward, on a
            prepared world without retraining anything else.

    Raises:
        ValueError: if the cache was prepared with another seed, size or settings; pass `force=True` or another
            `cache_dir`.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone={backbone!r}: ShapesWorld prepares a policy of architecture {BACKBONES}.")
    if until is not None and until not in STAGES:
        raise ValueError(f"until={until!r} is not a stage; use one of {STAGES}.")
    if until is not None and (backbone != "janus" or second_clip):
        extra = f"backbone={backbone!r}" if backbone != "janus" else "second_clip=True"
        raise ValueError(f"until={until!r} stops before the world is complete, and {extra} needs all of it; prepare "
                         "the world first, then add it.")
    root = shapes_cache_dir(cache_dir, tiny)
    root.mkdir(parents=True, exist_ok=True)
    # One preparer at a time: under `accelerate launch` every rank asks for the cache, and the others must wait
    # for it rather than train their own copy.
    with FileLock(str(root / ".prepare.lock")):
        if patch_size is None:
            patch_size = 8 if force else _recorded_patch_size(read_manifest(root))
        if patch_size not in (4, 8, 16):
            raise ValueError(f"patch_size={patch_size}: use 4, 8 or 16 (pixels per code side on the 64 px canvas).")
        settings = replace(TINY if tiny else FULL, patch_size=patch_size)
        _prepare(root, settings, tiny, seed, force, show_progress, until)
        if backbone == "llamagen":
            _prepare_llamagen(root, settings, tiny, seed, show_progress)
        if second_clip:
            _prepare_second_clip(root, settings, seed, show_progress)
        return str(root)


def _say(show: bool, text: str) -> None:
    if show:
        tqdm.write(text)  # between bars, never inside one
        sys.stdout.flush()


def _prepare(root: Path, settings: ShapesWorldSettings, tiny: bool, seed: int, force: bool, show_progress: bool,
             until: str | None = None) -> str:
    identity = _identity(settings, seed, tiny)
    manifest = None if force else read_manifest(root)
    if manifest is not None and _recorded_identity(manifest) != identity:
        recorded = _recorded_identity(manifest)
        raise ValueError(
            f"The ShapesWorld cache at {root} was prepared with seed={recorded['seed']}, tiny={recorded['tiny']}, "
            f"patch_size={recorded['settings']['patch_size']} (or other settings) but seed={seed}, tiny={tiny}, "
            f"patch_size={settings.patch_size} was asked for. Pass force=True to retrain it, or another cache_dir."
        )
    last = STAGES.index(until) if until else len(STAGES) - 1
    todo = [stage for stage in STAGES[: last + 1] if not _complete(root, manifest, stage)]
    if not todo:
        return str(root)
    first = STAGES.index(todo[0])
    names = ", ".join(STAGE_NAMES[stage] for stage in STAGES)
    resume = f"; stages 1-{first} are cached, resuming at stage {first + 1}" if first else ""
    stop = f"; stopping after stage {last + 1} ({STAGE_NAMES[until]}) as asked" if until else ""
    grid = 64 // settings.patch_size
    estimate = ESTIMATE[tiny] if tiny or grid == 8 else "not yet measured at this grid (8x8 codes: about 26 min)"
    _say(show_progress, f"Preparing ShapesWorld (first run only) into {root}: {len(STAGES)} stages ({names}), "
                        f"{grid}x{grid} codes, {estimate}{resume}{stop}")
    manifest = {
        "format": MANIFEST_FORMAT,
        "identity": identity,
        "command": " ".join(sys.argv),
        "call": f"prepare_shapes_world(cache_dir={str(root)!r}, tiny={tiny}, seed={seed}, force={force}, "
                f"patch_size={settings.patch_size}, until={until!r})",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "open_clip": open_clip.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "sizes": {"num_train_images": settings.num_train_images, "num_eval_images": settings.num_eval_images},
        "stages": {stage: (manifest or {})["stages"][stage] for stage in STAGES[:first]},
    }
    start = time.perf_counter()
    args = (settings, seed, _World(settings, seed, show_progress), root, show_progress)

    def run(stage: str, trainer, *extra):
        number = f"{STAGES.index(stage) + 1}/{len(STAGES)}"
        _say(show_progress, f"stage {number}: {STAGE_NAMES[stage]} ({STAGE_WORK[stage]})")
        stage_start = time.perf_counter()
        component, record = trainer(*args, *extra)
        disk = sum(f.stat().st_size for f in (root / stage).rglob("*") if f.is_file())
        wall = round(time.perf_counter() - stage_start, 1)
        manifest["stages"][stage] = {**record, "disk_mb": round(disk / 2**20, 2), "wall_s": wall}
        _write_manifest(root, manifest)  # after each stage, so an interrupted run keeps what is done
        return component

    net = run("features", _train_features) if first <= 0 else ShapesAttributeNet.from_pretrained(root / "features")
    if last >= 1:
        vq = run("vq", _train_vq, net) if first <= 1 else JanusVQVAE.from_pretrained(root / "vq")
    if last >= 2 and first <= 2:
        run("clip", _train_clip, vq)
    if last >= 3:
        run("policy", _train_policy, net, vq)
    else:
        _say(show_progress, f"ShapesWorld prepared up to stage {last + 1} ({STAGE_NAMES[until]}) in "
                            f"{(time.perf_counter() - start) / 60:.1f} min: {root}; run again without `until` to "
                            "finish it")
        return str(root)
    manifest["wall_s_this_call"] = round(time.perf_counter() - start, 1)  # stages run here, data and loading
    manifest["total_wall_s"] = round(sum(record["wall_s"] for record in manifest["stages"].values()), 1)
    manifest["quality"] = _headline(manifest["stages"])
    _write_manifest(root, manifest)
    _say(show_progress, f"ShapesWorld prepared in {manifest['wall_s_this_call'] / 60:.1f} min: {root} "
                        "(figures in manifest.json)")
    return str(root)


def _llamagen_settings(tiny: bool):
    from .llamagen_policy import LLAMAGEN_FULL, LLAMAGEN_TINY

    return LLAMAGEN_TINY if tiny else LLAMAGEN_FULL


def _llamagen_complete(root: Path, manifest: dict | None, tiny: bool) -> bool:
    """The LlamaGen stage is cached, with the settings this code would train it with."""
    settings = json.loads(json.dumps(asdict(_llamagen_settings(tiny))))
    return _complete(root, manifest, LLAMAGEN_STAGE) and manifest["stages"][LLAMAGEN_STAGE]["settings"] == settings


def _prepare_llamagen(root: Path, settings: ShapesWorldSettings, tiny: bool, seed: int, show_progress: bool) -> None:
    """The extra stage on a prepared world: train and save `policy_llamagen/` unless it is cached; its record and
    headline figures join the manifest. It depends on the feature net, the VQ and the CLIP: a world whose stages are
    retrained drops the record (the manifest is rebuilt), and the next request trains it again."""
    from .llamagen_policy import train_llamagen_policy

    manifest = read_manifest(root)
    if _llamagen_complete(root, manifest, tiny):
        return
    llamagen = _llamagen_settings(tiny)
    _say(show_progress, f"Preparing ShapesWorld's LlamaGen policy into {root / LLAMAGEN_STAGE} (the other stages are "
                        f"cached): a caption encoder, then image-token SFT, {LLAMAGEN_ESTIMATE[tiny]}")
    start = time.perf_counter()
    world = _World(settings, seed, show_progress)
    net = ShapesAttributeNet.from_pretrained(root / "features")
    vq = JanusVQVAE.from_pretrained(root / "vq").eval()
    reward = shapes_clip_reward(root, prepare=False)
    _, record = train_llamagen_policy(settings, llamagen, seed, world, root, show_progress, net, vq, reward)
    disk = sum(f.stat().st_size for f in (root / LLAMAGEN_STAGE).rglob("*") if f.is_file())
    manifest["stages"][LLAMAGEN_STAGE] = {
        "settings": json.loads(json.dumps(asdict(llamagen))), **record, "disk_mb": round(disk / 2**20, 2),
        "wall_s": round(time.perf_counter() - start, 1),  # its data and loading included
    }
    quality = record["quality"]
    manifest["quality"].update({
        "llamagen_sft_eval_loss": quality["sft_eval_loss"],
        "llamagen_sft_samples_shapes_eval_accuracy": quality["samples_shapes_eval"]["accuracy"],
        "llamagen_sft_samples_shapes_fid": quality["samples_shapes_fid"],
    })
    _write_manifest(root, manifest)
    _say(show_progress, f"ShapesWorld's LlamaGen policy prepared in {manifest['stages'][LLAMAGEN_STAGE]['wall_s']} s: "
                        f"{root / LLAMAGEN_STAGE}")


def _prepare_second_clip(root: Path, settings: ShapesWorldSettings, seed: int, show_progress: bool) -> None:
    """The extra stage on a prepared world: `clip_second/`, a CLIP trained as `clip/` is, on the renders (and their
    VQ reconstructions) of scenes drawn with seed + `SECOND_CLIP_SEED_OFFSET`, from that seed's initial weights.
    Its retrieval is measured on that seed's validation scenes. Like the LlamaGen stage, a world whose stages are
    retrained drops its record, and the next request trains it again."""
    manifest = read_manifest(root)
    if _complete(root, manifest, SECOND_CLIP_STAGE):
        return
    other = seed + SECOND_CLIP_SEED_OFFSET
    _say(show_progress, f"Preparing ShapesWorld's second CLIP into {root / SECOND_CLIP_STAGE} (the other stages are "
                        f"cached): other scenes and weights (seed {other}), about as long as stage 3")
    start = time.perf_counter()
    vq = JanusVQVAE.from_pretrained(root / "vq").eval()
    _, record = _train_clip(settings, other, _World(settings, other, show_progress), root, show_progress, vq,
                            stage=SECOND_CLIP_STAGE)
    disk = sum(f.stat().st_size for f in (root / SECOND_CLIP_STAGE).rglob("*") if f.is_file())
    manifest["stages"][SECOND_CLIP_STAGE] = {"seed": other, **record, "disk_mb": round(disk / 2**20, 2),
                                             "wall_s": round(time.perf_counter() - start, 1)}
    _write_manifest(root, manifest)
    _say(show_progress, f"ShapesWorld's second CLIP prepared in {manifest['stages'][SECOND_CLIP_STAGE]['wall_s']} s: "
                        f"{root / SECOND_CLIP_STAGE}")


def _headline(stages: dict) -> dict:
    """The figures that say whether the world is usable for RL, gathered from the stage records."""
    vq, clip, policy = (stages[name]["quality"] for name in ("vq", "clip", "policy"))
    return {
        "feature_net_cell_accuracy": stages["features"]["quality"]["cell_accuracy"],
        "vq_recon_l1": vq["recon_l1"],
        "vq_codebook_usage": vq["codebook_usage"],
        "vq_recon_shapes_eval_accuracy": vq["recon_shapes_eval"]["accuracy"],
        "vq_recon_shapes_fid": vq["recon_shapes_fid"],
        "clip_retrieval_top1": clip["retrieval_top1"],
        "clip_retrieval_chance": clip["retrieval_chance"],
        "sft_eval_loss": policy["sft_eval_loss"],
        "sft_samples_shapes_eval_accuracy": policy["samples_shapes_eval"]["accuracy"],
        "sft_samples_shapes_eval_mean_score": policy["samples_shapes_eval"]["mean_score"],
        "sft_samples_shapes_fid": policy["samples_shapes_fid"],
    }


def _component(cache_dir, name: str, prepare: bool) -> Path:
    """The folder of one component, preparing the cache (with its recorded seed and size) when it is missing."""
    root = shapes_cache_dir(cache_dir)
    manifest = read_manifest(root)
    identity = (manifest or {}).get("identity", {})
    tiny, seed = identity.get("tiny", False), identity.get("seed", 0)
    patch_size = _recorded_patch_size(manifest)
    backbone = "llamagen" if name == LLAMAGEN_STAGE else "janus"
    second_clip = name == SECOND_CLIP_STAGE
    complete = _llamagen_complete(root, manifest, tiny) if backbone == "llamagen" else _complete(root, manifest, name)
    if complete:
        return root / name
    if not prepare:
        flag, call = (("--backbone llamagen", "backbone='llamagen'") if backbone == "llamagen" else
                      ("--second_clip", "second_clip=True") if second_clip else ("", ""))
        how = f"`python examples/prepare_shapes_world.py{' ' + flag if flag else ''}` (or `prepare_shapes_world({call})`)"
        raise FileNotFoundError(f"No ShapesWorld {name!r} in {root}. Run {how}, or pass prepare=True.")
    prepare_shapes_world(root, tiny=tiny, seed=seed, backbone=backbone, patch_size=patch_size, second_clip=second_clip)
    return root / name


def shapes_policy_path(
    cache_dir: str | os.PathLike | None = None, prepare: bool = True, backbone: str = "janus"
) -> str:
    """The folder of the world's SFT'd policy (VQ attached) and its processor, for `from_pretrained`.

    `backbone="janus"`: the tiny Janus (`policy/`), what a recipe's `model_name_or_path: shapes` resolves to;
    `"llamagen"`: the tiny LlamaGen (`policy_llamagen/`), with `shapes_backbone: llamagen`. It prepares what is
    missing if `prepare` is True.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone={backbone!r}: the world's policies are {BACKBONES}.")
    return str(_component(cache_dir, LLAMAGEN_STAGE if backbone == "llamagen" else "policy", prepare))


def shapes_clip_reward(cache_dir: str | os.PathLike | None = None, prepare: bool = True, second: bool = False,
                       **kwargs):
    """The `shapes_clip` reward: a `CLIPReward` on the ShapesWorld CLIP, loaded as an open_clip `local-dir:` model;
    `second=True`: `shapes_clip_second`, on the second CLIP (`SECOND_CLIP_STAGE`).

    `kwargs` (device, dtype, batch_size) go to `CLIPReward`. Scores are cosine similarities in [-1, 1].
    """
    stage = SECOND_CLIP_STAGE if second else "clip"
    reward = CLIPReward(f"local-dir:{_component(cache_dir, stage, prepare)}", pretrained=None, **kwargs)
    reward.__name__ = "shapes_clip_second" if second else "shapes_clip"  # TRL logs it as rewards/<name>/...
    return reward


def load_shapes_vq(cache_dir: str | os.PathLike | None = None, prepare: bool = True) -> JanusVQVAE:
    """The ShapesWorld VQ tokenizer, a `JanusVQVAE` in eval mode; wrap it in `JanusVQCodec` for codes <-> pixels."""
    return JanusVQVAE.from_pretrained(_component(cache_dir, "vq", prepare)).eval()


def load_shapes_fid(cache_dir: str | os.PathLike | None = None, prepare: bool = True) -> FIDMetric:
    """A ShapesFID `FIDMetric`, its real statistics (validation images) loaded: call `update_fake` then `compute`."""
    folder = _component(cache_dir, "features", prepare)
    metric = FIDMetric(feature_extractor=ShapesFIDFeatures(ShapesAttributeNet.from_pretrained(folder)))
    metric.load_reference(folder / FID_REFERENCE)
    return metric


__all__ = [
    "BACKBONES",
    "CACHE_ENV",
    "FULL",
    "TINY",
    "ShapesWorldSettings",
    "clip_retrieval_accuracy",
    "load_shapes_fid",
    "load_shapes_vq",
    "prepare_shapes_world",
    "read_manifest",
    "shapes_cache_dir",
    "shapes_clip_config",
    "shapes_clip_reward",
    "shapes_policy_path",
    "train_shapes_clip",
]
