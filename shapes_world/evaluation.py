"""Scoring a policy + decoder in ShapesWorld: `WorldScorer`, `WorldEvaluator`, the train-time world report of a
recipe, and the `shapes` metric of `ranke-trl eval`.

`WorldScorer` measures generated images by the world's own metrics: the world CLIP's score, ShapesFID, ShapesEval
(overall and per prompt family), the token KL to ground-truth codes and the code entropy (Appendix C), two
diagnostics that split ShapesFID into content and rendering (`rerender_detected`), and rendering measured directly,
per image (`rendering.py`: off-palette pixels, paired L1 and SSIM distance to the clean re-render of what ShapesEval
detects). Three callers use it:

- `WorldEvaluator` samples fixed validation prompts with fixed per-image seeds; the experiment (`experiment.py`) calls
  it every `eval_every` steps, and a training recipe on the `shapes` policy before and after training through
  `world_eval_callback` and the recipe keys of `plugin.WorldEvalArguments` (`world_eval_prompts`, `world_eval_seed`).
- `WorldEvalMetric` is `ranke-trl eval --metrics shapes` (registered by `plugin.register`): the images the runner
  generates for the `shapes` prompt set, against the real renders of the same prompts.

`decoder_swap` decodes fixed codes with several decoders (the world's original D0, a run's co-evolved `decoder/`)
and scores each; `ranke-trl eval --metrics shapes shapes_d0` does the same inside an evaluation (`DecoderSwapMetric`):
the evaluated decoder's images under `shapes`, D0's images of the very same codes under `d0/...`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import TrainerCallback

from ranke_trl.corpus import image_to_tensor
from ranke_trl.diagnostics import CodeHistogram, ShiftDiagnostics
from ranke_trl.evaluation.clip_score import clip_score_from_cosine

from .data import make_split
from .pretrain import (
    FID_REFERENCE, load_shapes_fid, load_shapes_vq, read_manifest, shapes_cache_dir, shapes_clip_reward,
)
from .rendering import CONFIDENT_COVERAGE, COVERAGE_MARGIN_PX, OFF_PALETTE_DISTANCE, rendering_report
from .scenes import Scene, ShapeSpec, render_scene
from .shapes_eval import ShapesEval, summarize
from .vocab import KINDS, SIZES

if TYPE_CHECKING:
    from .plugin import WorldEvalArguments

METRICS = ["clip_score", "shapes_fid", "shapes_eval", "shift/token_kl_bits", "shift/entropy_bits"]
# Diagnostics that split ShapesFID into what is drawn and how it is rendered (see `rerender_detected`).
DIAGNOSTICS = ["shapes_fid_content", "unreadable_shapes"]
# Rendering measured directly, per image, averaged (`rendering.rendering_report`); `render/l1` and
# `render/ssim_distance` are over confidently detected images, and absent when there is none (results hold finite
# numbers only, and a NaN would make two reports compare unequal whatever they hold).
RENDERING = ["render/off_palette", "render/l1", "render/ssim_distance", "render/confident"]


def rerender_detected(images01: torch.Tensor, shapes_eval: ShapesEval) -> tuple[torch.Tensor, float]:
    """Clean renders of the scenes ShapesEval reads in `images01`, and the fraction of objects it could not read.

    Each detected object whose kind is recognised is drawn again with the world's renderer: same kind and colour,
    the size nearest its bounding box, at its bounding-box centre. ShapesFID on these re-renders measures *what* a
    model draws (content) with rendering quality removed; objects of unknown kind (blobs, smears) are left out and
    counted instead, a measure of rendering failures.

    Its centre, `round((x0 + x1) / 2)`, can sit one pixel off a clean render's (`rendering.rerender_object` inverts
    the renderer exactly); harmless to a FID, and kept so that content FID keeps the values published with it.
    """
    renders, unreadable, total = [], 0, 0
    for image in images01:
        shapes = []
        for found in shapes_eval.detect(image):
            total += 1
            if found.kind not in KINDS:
                unreadable += 1
                continue
            x0, y0, x1, y1 = found.bbox
            side = max(x1 - x0, y1 - y0) + 1
            size = min(SIZES, key=lambda name: abs(SIZES[name] - side))
            shapes.append(ShapeSpec(found.kind, found.color, size, round((x0 + x1) / 2), round((y0 + y1) / 2)))
        renders.append(torch.from_numpy(render_scene(Scene(tuple(shapes), {}))).permute(2, 0, 1))
    return torch.stack(renders).float() / 255, unreadable / max(1, total)


class WorldScorer:
    """The world's metrics of a set of generated images: metric name -> value (`METRICS`, `DIAGNOSTICS`, `RENDERING`).

    Args:
        cache_dir: the ShapesWorld cache (None: the default, see `pretrain.shapes_cache_dir`); it holds the CLIP and
            ShapesFID's real statistics (its validation renders).
        device: where the CLIP runs (None: the CPU).

    `scorer(images01, codes, prompts, metadata, shift)` takes images (B, 3, H, W) in [0, 1], their codes (B, N), one
    prompt and one ShapesEval metadata (a dict or its JSON) per image, and a `ShiftDiagnostics` holding the
    ground-truth histogram (None: no `shift/*` keys; the codes are then unused). Every value is finite: a measure
    undefined on these images (`render/l1` and `render/ssim_distance` when none is confidently detected) is absent.
    """

    def __init__(self, cache_dir=None, device=None):
        self.clip = shapes_clip_reward(cache_dir, device=device)
        self.fid = load_shapes_fid(cache_dir)
        self.shapes_eval = ShapesEval()

    @torch.no_grad()
    def __call__(self, images01, codes, prompts, metadata, shift: ShiftDiagnostics | None) -> dict[str, float]:
        cos = self.clip.score(images01, prompts)
        self.fid.reset_fake()
        self.fid.update_fake(images01)
        shapes_fid = self.fid.compute()
        evaluated = self.shapes_eval.evaluate_batch(list(images01), metadata)
        rerendered, unreadable = rerender_detected(images01, self.shapes_eval)
        self.fid.reset_fake()
        self.fid.update_fake(rerendered)
        content_fid = self.fid.compute()
        summary = summarize(evaluated)
        rendering = rendering_report(images01, self.shapes_eval)["means"]
        return _finite({
            "clip_score": float(clip_score_from_cosine(cos).mean()),
            "shapes_fid": shapes_fid,
            "shapes_eval": summary["overall"],
            "shapes_fid_content": content_fid,
            "unreadable_shapes": unreadable,
            **{f"shapes_eval/{k}": v for k, v in summary["per_family"].items()},
            **{f"render/{k}": v for k, v in rendering.items()},
            **(shift(codes) if shift is not None else {}),
        })


class WorldEvaluator:
    """Scores a policy + decoder on fixed validation prompts: metric name -> value (see `METRICS`).

    Args:
        cache_dir: the ShapesWorld cache (None: the default, see `pretrain.shapes_cache_dir`).
        num_prompts: validation prompts, one image each.
        guidance_scale, temperature, top_k, top_p: how the images are sampled (`ImageTokenPolicy.sample`).
        seed: fixes the validation prompts and, with the run's seed, each image's sampling seed.
    """

    def __init__(self, cache_dir, num_prompts: int, *, guidance_scale: float, temperature: float, top_k: int,
                 top_p: float, seed: int):
        data = make_split("validation", num_prompts, seed=seed)
        self.prompts, self.metadata = list(data["prompt"]), list(data["metadata"])
        self.real = torch.stack([image_to_tensor(im, 64) for im in data["image"]])
        self.scorer = WorldScorer(cache_dir)
        self.sampling = {"guidance_scale": guidance_scale, "temperature": temperature, "top_k": top_k, "top_p": top_p}
        self.seed = seed
        self.shift = None

    @torch.no_grad()
    def __call__(self, model, policy, codec, seed: int = 0) -> tuple[dict[str, float], torch.Tensor]:
        """Metrics and the first 8 images (3, 64, 64) in [0, 1]; `seed` (the run's seed) offsets the per-image
        sampling seeds, so runs with the same seed see the same noise in every mode and runs with different seeds
        see different noise."""
        if self.shift is None:  # ground-truth codes of the validation images, with this world's frozen encoder
            counts = CodeHistogram(codec.codebook_size).update(codec.encode(self.real)).counts
            self.shift = ShiftDiagnostics(counts, codec.codebook_size)
        codes = self.sample_codes(model, policy, seed, next(codec.module.parameters()).device)
        images = codec.decode_images(codes)
        return self.scorer(images, codes, self.prompts, self.metadata, self.shift), images[:8].cpu()


    @torch.no_grad()
    def sample_codes(self, model, policy, seed: int = 0, device=None) -> torch.LongTensor:
        """(num_prompts, N) codes of the validation prompts, with the per-image sampling seeds `__call__` uses, e.g.
        to decode the very same codes with two decoders (`decoder_swap`)."""
        device = device or next(model.parameters()).device
        generators = [torch.Generator(device=device).manual_seed(self.seed + 100_003 * seed + i)
                      for i in range(len(self.prompts))]
        return policy.sample(model, policy.encode_prompts(self.prompts, device), generator=generators, **self.sampling)


def world_eval_report(before: dict[str, float], after: dict[str, float], out_dir: str) -> str:
    """Write `world_eval.json` (metrics before and after training) to `out_dir`; returns a printable table."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "world_eval.json")
    with open(path, "w") as f:
        json.dump({"before": before, "after": after}, f, indent=2)
    keys = [k for k in METRICS + RENDERING if k in after and k in before]  # render/l1 needs confident images
    keys += sorted(k for k in after if k.startswith("shapes_eval/"))
    lines = [f"ShapesWorld evaluation ({path}):", f"  {'metric':<32} {'before':>10} {'after':>10}"]
    lines += [f"  {k:<32} {before[k]:>10.4g} {after[k]:>10.4g}" for k in keys]
    return "\n".join(lines)


# --- the train-time world report of a recipe (see plugin.WorldEvalArguments) ---------------------------------------


class WorldEvalCallback(TrainerCallback):
    """Scores the trainer's policy + decoder when training begins and ends; the main process prints the table."""

    def __init__(self, trainer, evaluator: WorldEvaluator, seed: int):
        self.trainer, self.evaluator, self.seed = trainer, evaluator, seed
        self.before: dict[str, float] | None = None

    def _measure(self) -> dict[str, float]:
        trainer = self.trainer
        return self.evaluator(trainer.model, trainer.policy, trainer.codec, self.seed)[0]

    def on_train_begin(self, args, state, control, **kwargs):
        self.before = self._measure()

    def on_train_end(self, args, state, control, **kwargs):
        after = self._measure()
        if self.trainer.accelerator.is_main_process:
            print(world_eval_report(self.before, after, args.output_dir))


def world_eval_callback(arguments: WorldEvalArguments, script_args, config, trainer) -> WorldEvalCallback | None:
    """The report's callback for a recipe on the `shapes` policy with `world_eval_prompts > 0`, else None."""
    if script_args.model_name_or_path != "shapes" or arguments.world_eval_prompts <= 0:
        return None
    evaluator = WorldEvaluator(
        None, arguments.world_eval_prompts, guidance_scale=config.guidance_scale, temperature=config.temperature,
        top_k=config.top_k, top_p=config.top_p, seed=arguments.world_eval_seed,
    )
    return WorldEvalCallback(trainer, evaluator, config.seed)


# --- `ranke-trl eval --metrics shapes` (registered by plugin.register) ----------------------------------------------


class WorldEvalMetric:
    """The world's metrics as a metric of `ranke-trl eval` (`ranke_trl.evaluation.register_metric`), on the images
    the runner generates for the `shapes` prompt set.

    Keys: `shapes_clip_score` (the world CLIP's `100 * max(cos, 0)`, not the ViT-L/14 `clip_score`), `shapes_fid` and
    `shapes_fid_content` (against the cache's validation statistics), `unreadable_shapes`, `shapes_eval` (GenEval's
    overall) and `shapes_eval/<family>`, the rendering measures `render/off_palette`, `render/l1`,
    `render/ssim_distance`, `render/confident` (`RENDERING`, `RENDERING_META`) and their floor `render_floor/...`
    (the same on the evaluated VQ's reconstructions of the prompts' real renders), `shift/token_kl_bits`,
    `shift/entropy_bits`, `shift/gt_entropy_bits` by the Appendix C protocol: every policy code of the run against
    the ground-truth codes of the same prompts' real renders, encoded by the evaluated VQ. Each process keeps its
    images; `compute` gathers them and scores all of them on every process, which is cheap at ShapesWorld's 64 px.
    """

    def __init__(self, args, codec, accelerator):
        self.args, self.codec, self.accelerator = args, codec, accelerator
        self.parts: dict[str, list] = {"images": [], "codes": [], "gt_codes": [], "floor": [], "prompts": [],
                                       "metadata": []}

    def prepare_references(self) -> None:
        from .plugin import prompt_scenes

        args = self.args
        self.scenes = prompt_scenes(args.prompt_split, args.max_prompts, args.dataset_seed)
        self.scorer = WorldScorer(None, device=self.accelerator.device)

    @torch.no_grad()
    def update(self, records, codes: torch.LongTensor, images01: torch.Tensor) -> None:
        scenes = [self.scenes[record.index] for record in records]
        for record, scene in zip(records, scenes):
            if scene.prompt != record.prompt:
                raise ValueError(f"Prompt {record.index} is {record.prompt!r}, its ShapesWorld scene {scene.prompt!r}: "
                                 "the 'shapes' metric needs the 'shapes' prompt set with its own split and seed.")
        size = self.codec.image_size
        real = torch.stack([torch.from_numpy(render_scene(scene, size)).permute(2, 0, 1) for scene in scenes])
        per = self.args.images_per_prompt
        self.parts["images"].append(images01.float().cpu())
        self.parts["codes"].append(codes.cpu())
        gt_codes = self.codec.encode(real.float().div(127.5).sub(1).to(images01.device))
        self.parts["gt_codes"].append(gt_codes.cpu())
        self.parts["floor"].append(self.codec.decode_images(gt_codes).cpu())  # the rendering measures' floor
        self.parts["prompts"] += [record.prompt for record in records for _ in range(per)]
        self.parts["metadata"] += [record.metadata for record in records for _ in range(per)]

    def compute(self) -> tuple[dict[str, float], dict]:
        from accelerate.utils import gather_object

        gathered = gather_object([self.parts])  # one dict per process, in rank order
        joined = {key: [item for part in gathered for item in part[key]] for key in self.parts}
        images, codes, gt_codes = (torch.cat(joined[key]) for key in ("images", "codes", "gt_codes"))
        size = self.codec.codebook_size
        shift = ShiftDiagnostics(CodeHistogram(size).update(gt_codes).counts, size, self.args.shift_smoothing)
        metrics = self.scorer(images, codes, joined["prompts"], joined["metadata"], shift)
        metrics["shapes_clip_score"] = metrics.pop("clip_score")
        floor = rendering_report(torch.cat(joined["floor"]), self.scorer.shapes_eval)["means"]
        metrics |= _finite({f"render_floor/{key}": value for key, value in floor.items()})
        return metrics, self._meta(shift, len(images), len(gt_codes))

    def _meta(self, shift: ShiftDiagnostics, num_images: int, num_real: int) -> dict:
        root = shapes_cache_dir()
        fid = {**self.scorer.fid.description, "reference": f"{root / 'features' / FID_REFERENCE} (validation renders)"}
        identity = (read_manifest(root) or {}).get("identity", {})
        return {
            "shapes_world": {"cache": str(root), "seed": identity.get("seed"), "tiny": identity.get("tiny")},
            "shapes_clip_score": {"model": f"the ShapesWorld CLIP ({root / 'clip'})", "score": "100 * max(cos, 0)",
                                  "num_images": num_images},
            "shapes_fid": fid,
            "shapes_fid_content": {**fid, "fake": "clean re-renders of the shapes ShapesEval reads in each image"},
            "unreadable_shapes": {"what": "fraction of detected objects whose kind ShapesEval cannot read"},
            "render": RENDERING_META,
            "render_floor": {"what": "the render/* measures on the evaluated decoder's reconstructions (encode, then "
                             "decode) of the prompts' real renders: the least this decoder scores",
                             "num_images": num_real},
            "shapes_eval": {"scorer": "ShapesEval (shapes_world/shapes_eval.py), GenEval's rules",
                            "overall": "mean over prompt families of the fraction of images judged correct",
                            "num_images": num_images},
            "shift": {**shift.description, "num_policy_codes": num_images * self.codec.num_tokens,
                      "reference": f"ground-truth codes of the {num_real} prompts' real renders, encoded by the "
                                   "evaluated VQ (Appendix C)"},
        }


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` without NaN values (render/l1 and render/ssim_distance when no image is confidently detected)."""
    return {key: value for key, value in metrics.items() if math.isfinite(value)}


RENDERING_META = {
    "off_palette": f"mean fraction of pixels farther than {OFF_PALETTE_DISTANCE:.4f} (RGB in [0, 1]) from every "
                   "palette colour and the background; 0 on clean renders",
    "l1": "mean |image - clean re-render of the scene ShapesEval detects|, over confidently detected images; "
          "objects of unreadable kind are re-rendered as background, so they count in full as error",
    "ssim_distance": "1 - SSIM (torchmetrics, Gaussian 11x11, sigma 1.5, data range 1; no learned weights) against "
                     "the same re-render, over confidently detected images",
    "confident": f"fraction of images whose detected objects' boxes (widened {COVERAGE_MARGIN_PX} px) hold >= "
                 f"{CONFIDENT_COVERAGE:.0%} of their ink (distance from white on non-background pixels): the images "
                 "l1 and ssim_distance are averaged over (both absent when it is 0)",
    "code": "shapes_world/rendering.py",
}


# --- decoder swap: the same codes through two decoders ------------------------------------------------------------


def world_decoder(cache_dir=None, device=None):
    """D0, the world's original VQ decoder (`<cache>/vq`, the one every policy starts with), as a `VQCodec`."""
    from ranke_trl.policy.janus import JanusVQCodec

    return JanusVQCodec(load_shapes_vq(cache_dir, prepare=False).to(device or "cpu"))


def run_decoder(run_dir, device=None):
    """The co-evolved decoder a RankE run saved (`<run_dir>/decoder`, or `run_dir` itself), as a `VQCodec`."""
    from transformers import JanusVQVAE

    from ranke_trl.checkpointing import DECODER_DIR
    from ranke_trl.policy.janus import JanusVQCodec

    folder = Path(run_dir) / DECODER_DIR if (Path(run_dir) / DECODER_DIR).is_dir() else Path(run_dir)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"No decoder in {run_dir}: expected {Path(run_dir) / DECODER_DIR}/ (a RankE output "
                                "directory) or a VQ saved with save_pretrained.")
    return JanusVQCodec(JanusVQVAE.from_pretrained(folder).eval().to(device or "cpu"))


@torch.no_grad()
def decoder_swap(codes, prompts, metadata, decoders: dict, scorer: WorldScorer | None = None,
                 batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Decode the same codes (B, N) with each decoder and score the images: decoder name -> metrics.

    `decoders` maps a name to a `VQCodec`, e.g. `{"D0": world_decoder(), "co-evolved": run_decoder(run_dir)}`.
    Each entry holds `WorldScorer`'s metrics but the `shift/*` keys (the codes, hence the token KL, are shared):
    the rendering measures `render/*`, ShapesFID, ShapesEval, content FID, unreadable shapes and the CLIP score.
    What changes between entries is the decoder alone, not where the policy drifted.
    """
    scorer = scorer or WorldScorer()
    results = {}
    for name, codec in decoders.items():
        device = next(codec.module.parameters()).device
        images = codec.decode_images(codes.to(device), batch_size).cpu()
        results[name] = scorer(images, codes, prompts, metadata, None)
    return results


def _same_weights(a, b) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k].cpu(), second[k].cpu()) for k in first)


class DecoderSwapMetric(WorldEvalMetric):
    """`ranke-trl eval --metrics shapes shapes_d0`: the world's metrics of the evaluated codes decoded by D0 instead.

    Every batch's codes (sampled by the evaluated policy with the run's seeds) are decoded again by the world's
    original decoder D0 and scored as `WorldScorer` does, under `d0/<key>` (`d0/render/l1`, `d0/shapes_fid`,
    `d0/shapes_eval`, ...; no `shift/*`, which depends on the codes alone). Next to the `shapes` metric, which scores
    the evaluated decoder's images of the same codes, this separates what the decoder does from where the policy
    drifts. Give the evaluation a co-evolved decoder with `decoder_name_or_path` (`decoder_subfolder: decoder`) to
    decode another run's codes with it.
    """

    def prepare_references(self) -> None:
        super().prepare_references()
        self.d0 = world_decoder(device=self.accelerator.device)

    @torch.no_grad()
    def update(self, records, codes: torch.LongTensor, images01: torch.Tensor) -> None:
        per = self.args.images_per_prompt
        self.parts["images"].append(self.d0.decode_images(codes.to(self.accelerator.device)).cpu())
        self.parts["codes"].append(codes.cpu())
        self.parts["prompts"] += [record.prompt for record in records for _ in range(per)]
        self.parts["metadata"] += [record.metadata for record in records for _ in range(per)]

    def compute(self) -> tuple[dict[str, float], dict]:
        from accelerate.utils import gather_object

        gathered = gather_object([self.parts])
        joined = {key: [item for part in gathered for item in part[key]] for key in self.parts}
        images, codes = torch.cat(joined["images"]), torch.cat(joined["codes"])
        metrics = self.scorer(images, codes, joined["prompts"], joined["metadata"], None)
        metrics["shapes_clip_score"] = metrics.pop("clip_score")
        root = shapes_cache_dir()
        meta = {"d0": {
            "decoder": f"the world's original VQ decoder D0 ({root / 'vq'})",
            "codes": "the evaluated policy's codes, the same ones the other metrics score",
            "same_as_evaluated_decoder": _same_weights(self.d0.module, self.codec.module),
            "keys": "as the 'shapes' metric's, on D0's images (no shift/*); render/* as in meta['render']",
            "num_images": len(images),
        }}
        return {f"d0/{key}": value for key, value in metrics.items()}, meta
