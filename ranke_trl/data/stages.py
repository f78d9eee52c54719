"""Staged outputs: each curation stage saved with `save_to_disk`, and skipped when its settings' hash matches.

A stage's hash covers its own settings and the hash of the stage before it, so changing the ingest resolution
redoes every stage, while changing the compression template redoes compression and encoding only. Each stage folder
holds the dataset and `curation_stage.json` (`hash`, `settings`, `stats`); the folder is written under a temporary
name and renamed into place, so an interrupted stage is never taken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from datasets import Dataset, load_from_disk

STAGE_FILE = "curation_stage.json"


def settings_hash(settings: dict) -> str:
    """sha256 of the settings as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode("utf-8")).hexdigest()


@dataclass
class StageResult:
    """A finished stage: its dataset (memory-mapped from its folder), hash and stats, and whether it was reused."""

    dataset: Dataset
    hash: str
    stats: dict
    skipped: bool


class StageStore:
    """The stage folders under `root` (`root/<stage>/`)."""

    def __init__(self, root: str | os.PathLike, log: Callable[[str], None] = print):
        self.root, self.log = str(root), log

    def path(self, stage: str) -> str:
        return os.path.join(self.root, stage)

    def run(
        self, stage: str, settings: dict, previous: str | None, build: Callable[[], tuple[Dataset, dict]]
    ) -> StageResult:
        """The stage's saved result if its hash (of `settings` and the `previous` stage's hash) matches, else
        `build() -> (dataset, stats)`, saved and reloaded from disk."""
        digest = settings_hash({"stage": stage, "settings": settings, "previous": previous})
        folder, record_path = self.path(stage), os.path.join(self.path(stage), STAGE_FILE)
        if os.path.isfile(record_path):
            with open(record_path, encoding="utf-8") as handle:
                record = json.load(handle)
            if record.get("hash") == digest:
                self.log(f"[curate] {stage}: settings unchanged (hash {digest[:12]}), reusing {folder}")
                return StageResult(load_from_disk(folder), digest, record.get("stats", {}), skipped=True)
        self.log(f"[curate] {stage}: running (hash {digest[:12]})")
        dataset, stats = build()
        partial = folder + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        dataset.save_to_disk(partial)
        with open(os.path.join(partial, STAGE_FILE), "w", encoding="utf-8") as handle:
            json.dump({"stage": stage, "hash": digest, "settings": settings, "stats": stats}, handle, indent=2,
                      sort_keys=True, default=str)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
        return StageResult(load_from_disk(folder), digest, stats, skipped=False)


__all__ = ["STAGE_FILE", "StageResult", "StageStore", "settings_hash"]
