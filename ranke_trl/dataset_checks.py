"""Start-up checks of a training set: everything that would otherwise fail (or silently do nothing) steps later.

`check_training_dataset` runs before any model is loaded. It names the problem, the row and the fix.
"""

from __future__ import annotations


def _is_chat(prompt) -> bool:
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(m, dict) and "content" in m for m in prompt)


def check_training_dataset(dataset, args, prompt_column: str = "prompt") -> None:
    """Raise a ValueError naming the problem when `dataset` cannot train a RankE run configured by `args`.

    Checks: a `prompt` column; every prompt a non-empty string or a list of chat messages (the first bad row is
    named); at least one generation batch of prompts (`generation_batch_size / num_generations` rows), since a
    smaller set trains 0 steps and would save the untrained model as if training had happened; and, when the run
    reads corpus images, that the first one can be used. Iterable (streaming) datasets are checked for the column
    only.
    """
    if dataset is None:
        raise ValueError("RankEGRPOTrainer needs a `train_dataset` with a 'prompt' column.")
    columns = list(getattr(dataset, "column_names", None) or [])
    if prompt_column not in columns:
        raise ValueError(
            f"The training set has no {prompt_column!r} column (columns: {columns}). Rename the column that holds the "
            "prompts to 'prompt' (`dataset.rename_column(...)`), or set `prompt_column` in the recipe."
        )
    if not hasattr(dataset, "__len__"):
        return
    prompts = dataset.select_columns([prompt_column])[prompt_column]
    for row, prompt in enumerate(prompts):
        if isinstance(prompt, str) and prompt.strip():
            continue
        if _is_chat(prompt):
            continue
        raise ValueError(
            f"Row {row} of the training set has prompt {prompt!r} ({type(prompt).__name__}); every prompt must be a "
            "non-empty string (or a list of chat messages). Drop or fix that row, e.g. "
            "`dataset.filter(lambda r: isinstance(r['prompt'], str) and r['prompt'].strip())`."
        )
    needed = max(1, args.generation_batch_size // args.num_generations)
    if len(dataset) < needed:
        raise ValueError(
            f"The training set has {len(dataset)} prompts, fewer than one generation batch needs "
            f"({args.generation_batch_size} rollouts = {needed} prompts x {args.num_generations} generations), so "
            "training would run 0 steps. Add prompts, or lower per_device_train_batch_size (or raise num_generations)."
        )
    image_column = args.image_column
    if image_column in columns and len(dataset) and args.train_decoder:
        from .corpus import image_to_tensor

        try:
            image_to_tensor(dataset.select_columns([image_column])[0][image_column], 8)
        except Exception as err:
            raise ValueError(
                f"Row 0 of the training set's {image_column!r} column cannot be read as an RGB image ({err}). Corpus "
                "images must be PIL images, image files' paths, or uint8 arrays (H, W[, 3])."
            ) from err
