"""How a decoder draws, measured per image: rendering, as opposed to content (what is drawn).

ShapesFID, ShapesEval and the CLIP score mostly measure content. RankE's claim is about rendering: codes a policy
drifts to are drawn badly by the original decoder, and a co-evolved decoder draws them well. In ShapesWorld a clean
render of any scene is known exactly, so rendering can be measured directly:

- **off-palette fraction** (`off_palette_fraction`): pixels farther than `OFF_PALETTE_DISTANCE` from every palette
  colour and the background. A clean render has none.
- **paired render error** (`paired_render_error`): L1 and SSIM distance (1 - SSIM, torchmetrics; no learned
  weights, so nothing the decoder was trained against) between an image and the clean re-render of the scene
  ShapesEval detects in it. Only *confidently detected* images are scored (`CONFIDENT_COVERAGE`); their share is
  reported. An object whose kind ShapesEval cannot read is re-rendered as nothing (background), so every one of its
  pixels counts as error: an unreadable blob is never dropped, and never replaced by a guess that would flatter it.
- **the floor** (`rendering_floor`): the same measures on VQ reconstructions of real images, the least a VQ decoder
  can score.
- **the code-perturbation check** (`perturbation_curve`, `python -m shapes_world.rendering perturb --cache DIR`):
  before any RL, replace a fraction p of real images' ground-truth codes with plausible-but-unusual codes
  (`unusual_codes`) and decode with the original decoder D0. If its render error does not rise steeply with p, the
  world cannot show a rendering-type latent covariate shift, whatever RL does.

Images are (N, 3, 64, 64) float in [0, 1] (the world's native size; the re-render is pixel-exact there).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from .scenes import Scene, ShapeSpec, render_scene
from .shapes_eval import DetectedShape, ShapesEval, summarize
from .vocab import BACKGROUND, CANVAS, KINDS, PALETTE, SIZES

#: the background and the six shape colours, (C + 1, 3) in [0, 1]
PALETTE01 = torch.tensor([BACKGROUND, *PALETTE.values()], dtype=torch.float64) / 255
_GAPS = torch.cdist(PALETTE01, PALETTE01) + torch.eye(len(PALETTE01)) * 10
#: the smallest RGB distance between two palette colours (background included): blue-purple, 141.5 / 255
MIN_PALETTE_GAP = float(_GAPS.min())
#: (ours) a pixel is on-palette within a quarter of that gap of some colour: 35.4 / 255 = 0.139 in [0, 1] units.
#: Clean renders have only exact palette colours; a quarter leaves room for a decoder's small colour noise, while a
#: blend of two colours (a blurred edge, a smear) is off-palette from a quarter of the way between them.
OFF_PALETTE_MARGIN = 0.25
OFF_PALETTE_DISTANCE = OFF_PALETTE_MARGIN * MIN_PALETTE_GAP
#: (ours) an image is confidently detected when ShapesEval's objects (readable or not), their boxes widened by
#: `COVERAGE_MARGIN_PX`, hold this share of its ink (distance from white, summed over the pixels ShapesEval does not
#: call background); only then is the clean re-render a fair reference for it. Weighting by ink lets the faint halo
#: of a blurred edge count for little and a smear or a missed object for much: on 128 validation renders, blurred
#: (sigma 1.5 px) or resampled through 24 px (L1 0.018, the world VQ's reconstruction error), 97-99% are confident;
#: with a grey smear beside the shapes, none is.
CONFIDENT_COVERAGE = 0.95
COVERAGE_MARGIN_PX = 3
#: the code-perturbation check's fractions of replaced codes
PERTURB_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.4)


def _check_images(images01: torch.Tensor) -> torch.Tensor:
    if images01.ndim != 4 or images01.shape[1] != 3:
        raise ValueError(f"Expected images (N, 3, H, W) in [0, 1], got shape {tuple(images01.shape)}.")
    if images01.shape[-2:] != (CANVAS, CANVAS):
        raise ValueError(f"Rendering measures need ShapesWorld's native {CANVAS} px images (the re-render is exact "
                         f"there), got {tuple(images01.shape[-2:])}; decode at {CANVAS} px.")
    return images01.detach().float().cpu().clamp(0, 1)


def off_palette_fraction(images01: torch.Tensor) -> torch.Tensor:
    """(N,) fraction of each image's pixels farther than `OFF_PALETTE_DISTANCE` (RGB, [0, 1] units) from every
    palette colour and the background; images (N, 3, 64, 64) in [0, 1]. 0 on clean renders."""
    pixels = _check_images(images01).double().permute(0, 2, 3, 1)  # (N, H, W, 3)
    nearest = torch.cdist(pixels.flatten(1, 2), PALETTE01[None].expand(len(pixels), -1, -1)).amin(-1)  # (N, H*W)
    return (nearest > OFF_PALETTE_DISTANCE).float().mean(-1)


def rerender_object(found: DetectedShape) -> ShapeSpec | None:
    """The world's shape that renders exactly as `found` did, or None if its kind is unreadable.

    Every kind's pixel box at 64 px spans `x - half .. x + half - 1` (and likewise in y), so the centre is
    `(x0 + x1 + 1) / 2` and the size the nearest of `SIZES` to the box's longer side.
    """
    if found.kind not in KINDS:
        return None
    x0, y0, x1, y1 = found.bbox
    side = max(x1 - x0, y1 - y0) + 1
    size = min(SIZES, key=lambda name: abs(SIZES[name] - side))
    return ShapeSpec(found.kind, found.color, size, (x0 + x1 + 1) // 2, (y0 + y1 + 1) // 2)


def _coverage(image: torch.Tensor, labels: np.ndarray, detected: list[DetectedShape]) -> float:
    """Share of the ink of `image` (3, H, W) on painted pixels (`labels` not background) that lies inside a detected
    object's box widened by the margin."""
    ink = (1 - image.double()).norm(dim=0).numpy() * (labels != 0)
    if ink.sum() == 0:
        return 1.0  # nothing drawn, nothing to explain: the re-render (blank) is exact
    explained = np.zeros(labels.shape, dtype=bool)
    m, size = COVERAGE_MARGIN_PX, labels.shape[0]
    for found in detected:
        x0, y0, x1, y1 = found.bbox
        explained[max(0, y0 - m) : min(size, y1 + m + 1), max(0, x0 - m) : min(size, x1 + m + 1)] = True
    return float(ink[explained].sum() / ink.sum())


def paired_render_error(images01: torch.Tensor, shapes_eval: ShapesEval | None = None) -> dict[str, torch.Tensor]:
    """Per-image error against the clean re-render of what ShapesEval detects; images (N, 3, 64, 64) in [0, 1].

    Returns (N,) tensors:
        l1: mean |image - re-render| over pixels and channels, in [0, 1]; NaN unless confident.
        ssim_distance: 1 - SSIM (torchmetrics, Gaussian window 11, sigma 1.5, data range 1), in [0, 2]; NaN
            unless confident.
        coverage: share of the image's ink the detected objects explain (see `CONFIDENT_COVERAGE`).
        confident: 1.0 where coverage >= `CONFIDENT_COVERAGE`, else 0.0.
        objects, unreadable_objects: detected objects, and those of unreadable kind (re-rendered as background, so
            counted in full as error).
        renders: (N, 3, 64, 64) the re-renders, in [0, 1].
    """
    images01 = _check_images(images01)
    shapes_eval = shapes_eval or ShapesEval()
    renders, coverage, objects, unreadable = [], [], [], []
    for image in images01:
        detected = shapes_eval.detect(image)
        shapes = [spec for spec in map(rerender_object, detected) if spec is not None]
        renders.append(torch.from_numpy(render_scene(Scene(tuple(shapes), {}))).permute(2, 0, 1))
        coverage.append(_coverage(image, shapes_eval.color_labels(image), detected))
        objects.append(len(detected))
        unreadable.append(len(detected) - len(shapes))
    renders = torch.stack(renders).float() / 255
    coverage = torch.tensor(coverage)
    confident = coverage >= CONFIDENT_COVERAGE
    l1 = (images01 - renders).abs().mean((1, 2, 3))
    ssim = structural_similarity_index_measure(images01, renders, data_range=1.0, reduction="none")
    nan = torch.tensor(float("nan"))
    return {
        "l1": torch.where(confident, l1, nan),
        "ssim_distance": torch.where(confident, 1 - ssim, nan),
        "coverage": coverage,
        "confident": confident.float(),
        "objects": torch.tensor(objects, dtype=torch.float),
        "unreadable_objects": torch.tensor(unreadable, dtype=torch.float),
        "renders": renders,
    }


def rendering_report(images01: torch.Tensor, shapes_eval: ShapesEval | None = None) -> dict[str, dict]:
    """All rendering measures of images (N, 3, 64, 64) in [0, 1]: `{"means": {...}, "per_image": {...}}`.

    means: `off_palette` (over all images), `l1` and `ssim_distance` (over confidently detected images; NaN when
    none is), `confident` (their share). per_image: (N,) tensors of `off_palette` and of `paired_render_error`'s
    keys but `renders`.
    """
    per_image = {"off_palette": off_palette_fraction(images01), **paired_render_error(images01, shapes_eval)}
    per_image.pop("renders")
    confident = per_image["confident"].bool()
    means = {"off_palette": float(per_image["off_palette"].mean()), "confident": float(confident.float().mean())}
    means |= {key: float(per_image[key][confident].mean()) if confident.any() else math.nan
              for key in ("l1", "ssim_distance")}
    return {"means": means, "per_image": per_image}


@torch.no_grad()
def reconstruct(codec, images01: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth codes (N, tokens) of images (N, 3, H, W) in [0, 1] under `codec` (a `VQCodec`), and their
    reconstructions (N, 3, H, W) in [0, 1]."""
    device = next(codec.module.parameters()).device
    codes = torch.cat([codec.encode(images01[i : i + batch_size].to(device) * 2 - 1)
                       for i in range(0, len(images01), batch_size)])
    return codes, codec.decode_images(codes, batch_size).cpu()


def rendering_floor(codec, real01: torch.Tensor) -> dict[str, float]:
    """The rendering measures' floor: their means on `codec`'s reconstructions of real images (N, 3, 64, 64) in
    [0, 1], plus `l1_to_real` (the reconstruction's L1 to the real image itself)."""
    _, recon = reconstruct(codec, real01)
    means = rendering_report(recon)["means"]
    return {**means, "l1_to_real": float((recon - real01.cpu()).abs().mean())}


# --- the code-perturbation check --------------------------------------------------------------------------------------


def _pair_counts(grids: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """How often code a sits left of code b, and above it, in code grids (M, g, g): two (size, size) tensors."""
    def count(first, second):
        flat = (first.reshape(-1) * size + second.reshape(-1)).long()
        return torch.bincount(flat, minlength=size * size).view(size, size).double()

    return count(grids[:, :, :-1], grids[:, :, 1:]), count(grids[:, :-1], grids[:, 1:])


def unusual_codes(codes: torch.Tensor, corpus_codes: torch.Tensor, codebook_size: int, generator: torch.Generator,
                  frequent_mass: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """A plausible-but-unusual replacement for every code of `codes` (N, g*g), from a corpus of codes (M, g*g).

    Plausible: the code is one of the corpus's frequent codes, the fewest that make up `frequent_mass` of its
    occurrences (ours: 0.9), so the decoder saw it often in training. Unusual: among those, the one seen least often
    next to this position's four neighbours in the corpus (left, right, above, below pairs counted), ties broken at
    random; never the original code. This is the kind of code an RL policy drifts to: in the vocabulary, out of
    context.

    Returns the replacements (N, g*g) and how often each was seen next to those neighbours in the corpus (0: never).
    """
    side = math.isqrt(codes.shape[1])
    if side * side != codes.shape[1]:
        raise ValueError(f"Codes of {codes.shape[1]} tokens do not form a square grid.")
    counts = torch.bincount(corpus_codes.reshape(-1), minlength=codebook_size).double()
    order = counts.argsort(descending=True)
    keep = int((counts[order].cumsum(0) < frequent_mass * counts.sum()).sum()) + 1
    frequent = order[:keep]  # (F,)
    right, below = _pair_counts(corpus_codes.view(-1, side, side), codebook_size)
    grids = codes.view(-1, side, side)
    score = torch.zeros(*grids.shape, len(frequent), dtype=torch.float64)
    score[:, :, 1:] += right[grids[:, :, :-1]][..., frequent]  # the left neighbour, then a candidate
    score[:, :, :-1] += right.T[grids[:, :, 1:]][..., frequent]  # a candidate, then the right neighbour
    score[:, 1:] += below[grids[:, :-1]][..., frequent]
    score[:, :-1] += below.T[grids[:, 1:]][..., frequent]
    score[grids[..., None] == frequent] = float("inf")
    noise = torch.rand(score.shape, generator=generator, dtype=torch.float64) * 0.5  # breaks ties of integer counts
    best = (score + noise).argmin(-1)
    seen = score.gather(-1, best[..., None]).squeeze(-1)
    return frequent[best].view_as(codes), seen.view_as(codes)


def perturb_codes(codes: torch.Tensor, replacements: torch.Tensor, fraction: float,
                  order: torch.Tensor) -> torch.Tensor:
    """`codes` (N, T) with `round(fraction * T)` positions per image replaced, the first ones of `order` (N, T), a
    random permutation per image; a larger fraction replaces a superset of positions."""
    ranks = order.argsort(-1)
    return torch.where(ranks < round(fraction * codes.shape[1]), replacements, codes)


@torch.no_grad()
def perturbation_curve(codec, real01: torch.Tensor, scenes: list[Scene], corpus_codes: torch.Tensor,
                       fractions=PERTURB_FRACTIONS, seed: int = 0) -> list[dict[str, float]]:
    """The world's pre-RL gate: D0's render error as a fraction p of real images' codes turns plausible-but-unusual.

    Args:
        codec: the original decoder D0, a `VQCodec`.
        real01: real renders (N, 3, 64, 64) in [0, 1]; scenes: their scenes (for ShapesEval's verdict).
        corpus_codes: (M, T) ground-truth codes of the world's training images (what "usual" means).
        fractions: the p to try, each replacing a superset of the previous one's positions.

    Returns one row per p: `rendering_report`'s means, `l1_to_real` (to the real image), `l1_to_unperturbed` (to
    D0's reconstruction of the untouched codes), `shapes_eval_accuracy` (against the real scene's prompt) and
    `unseen_context` (share of replacements never seen next to their neighbours). The p = 0 row is the floor.
    """
    generator = torch.Generator().manual_seed(seed)
    codes, recon = reconstruct(codec, real01)
    codes = codes.cpu()
    replacements, seen = unusual_codes(codes, corpus_codes.cpu(), codec.codebook_size, generator)
    order = torch.stack([torch.randperm(codes.shape[1], generator=generator) for _ in codes])
    shapes_eval, rows = ShapesEval(), []
    for fraction in fractions:
        perturbed = perturb_codes(codes, replacements, fraction, order)
        images = codec.decode_images(perturbed.to(next(codec.module.parameters()).device), 64).cpu()
        changed = perturbed != codes
        verdicts = shapes_eval.evaluate_batch(list(images), [scene.metadata for scene in scenes])
        rows.append({
            "p": fraction,
            **rendering_report(images, shapes_eval)["means"],
            "l1_to_real": float((images - real01.cpu()).abs().mean()),
            "l1_to_unperturbed": float((images - recon).abs().mean()),
            "shapes_eval_accuracy": summarize(verdicts)["image_accuracy"],
            "unseen_context": float((seen[changed] == 0).double().mean()) if changed.any() else 0.0,
        })
    return rows


def _world_images(split: str, num: int, seed: int) -> tuple[list[Scene], torch.Tensor]:
    from .data import sample_scenes

    scenes = sample_scenes(split, num, seed)
    images = torch.from_numpy(np.stack([render_scene(scene) for scene in scenes])).permute(0, 3, 1, 2)
    return scenes, images.float() / 255


def run_perturbation_check(cache_dir, num_images: int | None = None, corpus_images: int | None = None,
                           fractions=PERTURB_FRACTIONS, seed: int = 0) -> dict:
    """`perturbation_curve` on a prepared world: D0 is its `vq/`, the real images its validation renders (the
    manifest's count by default) and the corpus its training renders (likewise), both from its seed."""
    from ranke_trl.policy.janus import JanusVQCodec

    from .pretrain import load_shapes_vq, read_manifest, shapes_cache_dir

    root = shapes_cache_dir(cache_dir)
    manifest = read_manifest(root)
    if manifest is None:
        raise FileNotFoundError(f"No prepared ShapesWorld in {root} (no manifest.json); run "
                                "`python examples/prepare_shapes_world.py` or pass the cache that holds one.")
    world_seed, sizes = manifest["identity"]["seed"], manifest["sizes"]
    codec = JanusVQCodec(load_shapes_vq(root, prepare=False))
    scenes, real01 = _world_images("validation", num_images or sizes["num_eval_images"], world_seed)
    _, corpus01 = _world_images("train", corpus_images or sizes["num_train_images"], world_seed)
    corpus_codes, _ = reconstruct(codec, corpus01)
    rows = perturbation_curve(codec, real01, scenes, corpus_codes, fractions, seed)
    settings = {"cache": str(root), "num_images": len(real01), "corpus_images": len(corpus01), "seed": seed,
                "off_palette_distance": OFF_PALETTE_DISTANCE, "confident_coverage": CONFIDENT_COVERAGE}
    return {"settings": settings, "rows": rows}


def _table(rows: list[dict]) -> str:
    keys = ["p", "off_palette", "l1", "ssim_distance", "confident", "l1_to_real", "l1_to_unperturbed",
            "shapes_eval_accuracy", "unseen_context"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---:|" * len(keys)]
    lines += ["| " + " | ".join(f"{row[k]:.4f}" for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shapes_world.rendering", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    perturb = commands.add_parser("perturb", help="D0's render error as p of real images' codes turn unusual.")
    perturb.add_argument("--cache", default=None, help="The world's cache (default: $RANKE_SHAPES_CACHE or ~/.cache).")
    perturb.add_argument("--num_images", type=int, default=None, help="Validation images (default: the manifest's).")
    perturb.add_argument("--corpus_images", type=int, default=None, help="Training images counted for 'usual'.")
    perturb.add_argument("--fractions", type=float, nargs="+", default=list(PERTURB_FRACTIONS))
    perturb.add_argument("--seed", type=int, default=0, help="Seeds the replaced positions and tie-breaks.")
    perturb.add_argument("--output", default=None, help="Also write the rows and settings to this JSON file.")
    args = parser.parse_args(argv)
    result = run_perturbation_check(args.cache, args.num_images, args.corpus_images, args.fractions, args.seed)
    if args.output:  # strict JSON: an undefined mean (no confident image) is null
        rows = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
                for row in result["rows"]]
        Path(args.output).write_text(json.dumps({**result, "rows": rows}, indent=2, allow_nan=False) + "\n")
    print(json.dumps(result["settings"]))
    print(_table(result["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
