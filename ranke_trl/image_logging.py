"""Sample-image grids: written as PNG under `output_dir/samples/` and sent to the backends that take images."""

from __future__ import annotations

import os

import torch
from torchvision.utils import make_grid, save_image


def image_grid(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> one (3, H', W') grid in [0, 1]."""
    nrow = nrow or max(1, int(len(images) ** 0.5))
    return make_grid(images.float().clamp(0, 1).cpu(), nrow=nrow, padding=2, pad_value=1.0)


def grid_caption(captions: list[str], nrow: int) -> str:
    """What each row of a grid of `nrow` images per row shows: `row 1: "a red square" (4 rollouts)`, one per line."""
    lines = []
    for r, start in enumerate(range(0, len(captions), nrow)):
        row = captions[start : start + nrow]
        if len(set(row)) == 1:
            lines.append(f"row {r + 1}: {row[0]!r} ({len(row)} rollouts of this prompt)")
        else:
            lines.append(f"row {r + 1}: " + " | ".join(repr(c) for c in row))
    return "\n".join(lines)


def log_image_grid(
    images: torch.Tensor, captions: list[str], step: int, output_dir: str, report_to, callbacks=(),
    nrow: int | None = None,
) -> str:
    """Save a grid to `output_dir/samples/step_<step>.png`, its prompts to `step_<step>.txt` beside it, and log both
    to tensorboard, wandb and trackio if active.

    `captions`: one prompt per image. `nrow`: images per grid row (the trainer passes the group size, so each row
    is one prompt's rollouts). Returns the PNG path.
    """
    nrow = nrow or max(1, int(len(images) ** 0.5))
    grid = image_grid(images, nrow)
    path = os.path.join(output_dir, "samples", f"step_{step:06d}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_image(grid, path)
    caption = f"step {step}, rollouts read row by row\n" + grid_caption(captions, nrow)
    with open(path[: -len(".png")] + ".txt", "w", encoding="utf-8") as f:
        f.write(caption + "\n")
    report_to = report_to or []
    if "tensorboard" in report_to:
        for callback in callbacks:
            writer = getattr(callback, "tb_writer", None)
            if writer is not None:
                writer.add_image("samples", grid, step)
                writer.add_text("samples/prompts", caption, step)
                writer.flush()
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:
            wandb.log({"samples": wandb.Image(grid.permute(1, 2, 0).numpy(), caption=caption)}, step=step)
    if "trackio" in report_to:
        import trackio

        trackio.log({"samples": trackio.Image(grid.permute(1, 2, 0).numpy(), caption=caption)}, step=step)
    return path
