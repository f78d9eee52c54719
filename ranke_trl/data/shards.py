"""The ingest stage: BLIP3o-60k's WebDataset shards -> one table of (source, key, caption, resized image).

BLIP3o-60k (`BLIP3o/BLIP3o-60k`, Apache-2.0) is 11 tar shards of `{key}.jpg` + `{key}.txt` with no source field: the
shard's name is the source (DATA.md). Names are matched case-insensitively on the file stem (commit 3b8853a uploaded
`Human_gestures.tar`). Only the shards of the sources the mix asks for are read, one process per shard at most,
streamed from the Hub (or from the local cache with `download_shards`, or from a local folder of tars).

Each image is centre-cropped and resized to the backbone's resolution as it is read (bicubic, antialiased: PIL's
`ImageOps.fit`) and stored re-encoded, so tens of GB of shards become a few GB. An image that does not decode is
kept as a row without image (the filter stage drops and counts it); `image_sha256` hashes the shard's own bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image, ImageOps

BLIP3O_REPO = "BLIP3o/BLIP3o-60k"
#: paper source -> shard stems (DATA.md); object_* and occupation_* are not used by the paper's mix
SOURCE_SHARDS: dict[str, tuple[str, ...]] = {
    "journeydb": ("journeyDB",),
    "dalle3": ("dalle3",),
    "mscoco": ("mscoco_human",),
    "human_gestures": ("human_gestures",),
    "geneval": ("geneval_train",),
    "typography": ("text_1", "text_2"),
}
INGEST_FEATURES = Features(
    {
        "source": Value("string"),
        "shard": Value("string"),
        "key": Value("string"),
        "caption": Value("string"),
        "image": ImageFeature(),
        "image_sha256": Value("string"),
    }
)


@dataclass(frozen=True)
class Shard:
    """One tar shard: its source, its file name as stored, where to read it and its size in bytes (if known)."""

    source: str
    file: str
    path: str
    size: int | None = None


def _stem(file: str) -> str:
    return os.path.splitext(os.path.basename(file))[0].casefold()


def source_of(file: str, source_shards: Mapping[str, Sequence[str]] = SOURCE_SHARDS) -> str | None:
    """The source a shard file belongs to (`"Human_gestures.tar" -> "human_gestures"`), or None if unused."""
    for source, stems in source_shards.items():
        if _stem(file) in {stem.casefold() for stem in stems}:
            return source
    return None


def list_shards(
    dataset: str,
    sources: Sequence[str],
    revision: str | None = None,
    source_shards: Mapping[str, Sequence[str]] = SOURCE_SHARDS,
) -> tuple[str | None, list[Shard]]:
    """`(revision, shards)`: the tar shards of `sources` (in that order, then by name) in a local folder or a Hub
    dataset. `revision` is the Hub commit the name `revision` resolves to (None for a local folder).

    Raises if a requested source has no shard, naming the files that were there.
    """
    unknown = [source for source in sources if source not in source_shards]
    if unknown:
        raise ValueError(f"Sources {unknown} have no shards; known sources: {sorted(source_shards)} (source_shards).")
    if os.path.isdir(dataset):
        files = {name: os.path.getsize(os.path.join(dataset, name)) for name in os.listdir(dataset)}
        resolved, locate = None, lambda name: os.path.join(os.path.abspath(dataset), name)
    else:
        from huggingface_hub import HfApi

        info = HfApi().dataset_info(dataset, revision=revision, files_metadata=True)
        files = {sibling.rfilename: sibling.size for sibling in info.siblings or []}
        resolved, locate = info.sha, lambda name: f"hf://datasets/{dataset}@{info.sha}/{name}"
    tars = sorted(name for name in files if name.endswith(".tar"))
    shards, missing = [], []
    for source in sources:
        found = [name for name in tars if source_of(name, {source: source_shards[source]})]
        if len(found) < len(source_shards[source]):
            missing.append(f"{source} (needs {list(source_shards[source])}, found {found})")
        shards += [Shard(source, name, locate(name), files[name]) for name in found]
    if missing:
        raise FileNotFoundError(f"{dataset} lacks shards for: {'; '.join(missing)}. Its tar files: {tars}.")
    return resolved, shards


def fit_image(image: Image.Image, size: int) -> Image.Image:
    """Centre crop to a square and resize to `size` x `size` (bicubic, antialiased), RGB."""
    return ImageOps.fit(image.convert("RGB"), (size, size), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))


def encode_image(image: Image.Image, image_format: str = "jpeg", quality: int = 95) -> bytes:
    """Image bytes, the same bytes for the same pixels: JPEG (4:4:4, `quality`) or PNG."""
    buffer = io.BytesIO()
    if image_format == "jpeg":
        image.save(buffer, format="JPEG", quality=quality, subsampling=0)
    elif image_format == "png":
        image.save(buffer, format="PNG", compress_level=6)
    else:
        raise ValueError(f"image_format={image_format!r}; use 'jpeg' or 'png'.")
    return buffer.getvalue()


def _shard_path(shard: dict, download: bool) -> str:
    if download and shard["path"].startswith("hf://datasets/"):
        from huggingface_hub import hf_hub_download

        repo_at_revision, file = shard["path"][len("hf://datasets/") :].rsplit("/", 1)
        repo, revision = repo_at_revision.rsplit("@", 1)
        return hf_hub_download(repo, file, repo_type="dataset", revision=revision)
    return shard["path"]


def ingest_rows(shards: list[dict], image_size: int, image_format: str, quality: int, download: bool):
    """Rows of `INGEST_FEATURES` from `shards` (dicts of `Shard` fields), streamed in file order."""
    from datasets import load_dataset

    for shard in shards:
        stream = load_dataset("webdataset", data_files=[_shard_path(shard, download)], split="train", streaming=True)
        if "jpg" in (stream.features or {}):
            stream = stream.cast_column("jpg", ImageFeature(decode=False))
        stem = os.path.splitext(shard["file"])[0]
        for sample in stream:
            raw = (sample.get("jpg") or {}).get("bytes")
            image, digest = None, None
            if raw:
                try:
                    with Image.open(io.BytesIO(raw)) as opened:
                        opened.load()
                        image = {"bytes": encode_image(fit_image(opened, image_size), image_format, quality),
                                 "path": None}
                    digest = hashlib.sha256(raw).hexdigest()
                except Exception:  # any decoder failure: the filter stage drops the row and counts it
                    image = None
            yield {
                "source": shard["source"],
                "shard": shard["file"],
                "key": f"{stem}/{sample['__key__']}",
                "caption": (sample.get("txt") or "").strip(),
                "image": image,
                "image_sha256": digest,
            }


def ingest(
    shards: Sequence[Shard],
    image_size: int,
    image_format: str = "jpeg",
    quality: int = 95,
    download: bool = False,
    num_proc: int | None = None,
    cache_dir: str | None = None,
    fingerprint: str | None = None,
) -> Dataset:
    """All rows of `shards` as one `Dataset` of `INGEST_FEATURES`, in shard order; `num_proc` processes read
    different shards in parallel (at most one per shard)."""
    jobs = [asdict(shard) for shard in shards]
    num_proc = min(num_proc or 1, len(jobs)) if jobs else None
    return Dataset.from_generator(
        ingest_rows,
        features=INGEST_FEATURES,
        gen_kwargs={"shards": jobs, "image_size": image_size, "image_format": image_format, "quality": quality,
                    "download": download},
        num_proc=num_proc if num_proc and num_proc > 1 else None,
        cache_dir=cache_dir,
        fingerprint=fingerprint,
    )


__all__ = [
    "BLIP3O_REPO",
    "INGEST_FEATURES",
    "SOURCE_SHARDS",
    "Shard",
    "encode_image",
    "fit_image",
    "ingest",
    "ingest_rows",
    "list_shards",
    "source_of",
]
