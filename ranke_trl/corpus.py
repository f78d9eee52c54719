"""Corpus images: the real images of the training set, their tensors and their ground-truth codes.

Stage 2 (L_rec, L_Dis) and the shift diagnostics need real images and their codes `z_gt = Q(E(x))`. Codes are
computed once with the frozen encoder and cached (they are small); pixels are read from the dataset on demand.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def image_to_tensor(image, size: int) -> torch.Tensor:
    """An image -> (3, size, size) in [-1, 1].

    Accepts a PIL image, an image file's path, a uint8 array (H, W, 3) or (H, W) (grey; also as nested lists), or a
    float tensor
    (3, H, W) in [0, 1]. Resizes the short side to `size` (bicubic, antialiased) and centre-crops, like the VQ
    tokenizer's preprocessing.
    """
    if image is None:
        raise ValueError("the image is missing (None)")
    if isinstance(image, str):
        with Image.open(image) as opened:
            image = opened.convert("RGB")
    if isinstance(image, (list, tuple)):  # an array stored as a `datasets` sequence feature
        image = np.asarray(image, dtype=np.uint8)
    if isinstance(image, Image.Image):
        image = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    elif isinstance(image, np.ndarray):
        array = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image
        image = torch.from_numpy(array.copy()).permute(2, 0, 1)
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    if image.ndim != 3 or image.size(0) != 3:
        raise ValueError(f"Expected an RGB image (3, H, W); got shape {tuple(image.shape)}.")
    h, w = image.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)[0]
        top, left = (new_h - size) // 2, (new_w - size) // 2
        image = image[:, top : top + size, left : left + size]
    return (image.clamp(0, 1) * 2 - 1).contiguous()


class CorpusImages:
    """Real images of a `datasets.Dataset` column, as (B, 3, size, size) tensors in [-1, 1], read on demand."""

    def __init__(self, dataset, column: str, image_size: int):
        if column not in dataset.column_names:
            raise ValueError(
                f"The dataset has no image column {column!r} (columns: {dataset.column_names}). Add one, or set "
                "`image_column` to the column that holds the corpus images."
            )
        self.dataset = dataset
        self.column = column
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.dataset)

    def pixels(self, indices) -> torch.Tensor:
        """Images at dataset rows `indices` -> (B, 3, size, size) in [-1, 1]; an unusable image names its row."""
        indices = list(map(int, indices))
        try:
            rows = self.dataset.select_columns([self.column])[indices][self.column]
        except Exception as err:  # an undecodable file fails while `datasets` decodes the whole slice
            raise ValueError(f"Corpus images at rows {indices[0]}-{indices[-1]} of column {self.column!r} cannot be "
                             f"decoded: {err}") from err
        tensors = []
        for row, image in zip(indices, rows):
            try:
                tensors.append(image_to_tensor(image, self.image_size))
            except Exception as err:
                raise ValueError(f"The corpus image at row {row} of column {self.column!r} cannot be used: {err}. "
                                 "Fix or drop that row (images: PIL, a file path, or uint8 (H, W[, 3])).") from err
        return torch.stack(tensors)


@torch.no_grad()
def encode_corpus(
    corpus: CorpusImages,
    codec,
    max_images: int | None = None,
    batch_size: int = 32,
    device=None,
    cache_path: str | None = None,
    show_progress: bool = True,
) -> torch.LongTensor:
    """Ground-truth codes (M, N) of the first `max_images` corpus images, computed once and cached at `cache_path`."""
    from safetensors.torch import load_file, save_file

    total = len(corpus) if max_images is None else min(max_images, len(corpus))
    if cache_path and os.path.exists(cache_path):
        codes = load_file(cache_path)["codes"]
        if codes.size(0) == total and codes.size(1) == codec.num_tokens:
            return codes.long()
        logger.warning("Ignoring stale corpus code cache %s (shape %s).", cache_path, tuple(codes.shape))
    chunks = []
    for start in tqdm(range(0, total, batch_size), desc="Encoding corpus images", disable=not show_progress):
        pixels = corpus.pixels(range(start, min(start + batch_size, total)))
        chunks.append(codec.encode(pixels.to(device) if device is not None else pixels).cpu())
    codes = torch.cat(chunks) if chunks else torch.empty(0, codec.num_tokens, dtype=torch.long)
    if cache_path:
        os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
        save_file({"codes": codes.to(torch.int32)}, cache_path)
    return codes


def stored_codes(dataset, codec, column: str = "gt_codes", limit: int | None = None) -> torch.LongTensor | None:
    """Ground-truth codes (M, N) read from the dataset's `column` (e.g. the curated set's, `ranke_trl.data.curate`)
    instead of encoding its images; M is `limit` rows at most.

    None, so that the caller encodes the images itself, when the column is missing, or when its rows are not all
    `codec.num_tokens` codes in [0, `codec.codebook_size`) (codes of another backbone or resolution).
    """
    if dataset is None or column not in getattr(dataset, "column_names", ()):
        return None
    rows = len(dataset) if limit is None else min(limit, len(dataset))
    table = dataset.select_columns([column]).select(range(rows)).with_format("arrow")[:][column]
    lengths = pc.list_value_length(table).to_numpy(zero_copy_only=False) if rows else np.zeros(0)
    if rows == 0 or table.null_count or not (lengths == codec.num_tokens).all():
        logger.info("Column %r does not hold %d codes per row; encoding the images instead.", column, codec.num_tokens)
        return None
    codes = torch.from_numpy(pc.list_flatten(table).to_numpy(zero_copy_only=False).astype(np.int64))
    codes = codes.view(rows, codec.num_tokens)
    if codes.min() < 0 or codes.max() >= codec.codebook_size:
        logger.warning("Column %r holds codes outside [0, %d); encoding the images instead.", column,
                       codec.codebook_size)
        return None
    return codes
