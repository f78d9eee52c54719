"""Stratified sampling: how many rows each source gives (the paper's mix, Table H.1), and which ones.

A mix is counts (`{"journeydb": 4500, ...}`) or ratios with a total (`{"journeydb": 0.3, ...}`, 15000); ratios become
counts by largest-remainder rounding, so the counts always sum to the total. When a source has fewer rows than its
count, `on_shortfall` decides:

- `error` (the paper recipe's): raise `InsufficientSourceError`, naming requested and available rows per source;
- `redistribute`: take all of each short source and spread the deficit over the others in proportion to their
  ratios, capped by what each has; raise only if the whole pool is short;
- `allow_short`: take what there is; the set is smaller than asked.

Rows are then drawn from each source in the order of a permutation seeded by `(seed, source)`: a source's draw does
not depend on the other sources or on its quota (a larger quota takes a longer prefix of the same permutation).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

SHORTFALL_POLICIES = ("error", "redistribute", "allow_short")


class InsufficientSourceError(ValueError):
    """A source (or the whole pool) has fewer rows than the mix asks for; the message lists every source."""

    def __init__(self, requested: Mapping[str, int], available: Mapping[str, int], whole_pool: bool = False):
        self.requested, self.available = dict(requested), dict(available)
        lines = [
            f"  {name}: requested {count}, available {self.available.get(name, 0)}"
            + ("  <- short" if self.available.get(name, 0) < count else "")
            for name, count in self.requested.items()
        ]
        what = (
            f"The pool has {sum(self.available.values())} rows for {sum(self.requested.values())} requested"
            if whole_pool
            else "Some sources have fewer rows than the mix asks for"
        )
        super().__init__(
            f"{what}:\n" + "\n".join(lines) + "\nLower their counts, or set on_shortfall to 'redistribute' (spread the "
            "deficit over the other sources) or 'allow_short' (a smaller set)."
        )


def largest_remainder(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Integer counts proportional to `weights` that sum to `total` (Hamilton's method).

    Each source gets the floor of its exact share; the rows left go one each to the largest fractional parts, ties
    to the source listed first. `{"a": 0.3, "b": 0.7}, 10 -> {"a": 3, "b": 7}`.
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}.")
    if any(w < 0 or not math.isfinite(w) for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0; got {dict(weights)}.")
    scale = sum(weights.values())
    exact = {name: total * w / scale for name, w in weights.items()}
    counts = {name: math.floor(share) for name, share in exact.items()}
    order = sorted(exact, key=lambda name: -(exact[name] - counts[name]))  # sorted() is stable: ties keep mix order
    for name in order[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def requested_counts(mix: Mapping[str, float], total: int | None = None) -> dict[str, int]:
    """The rows asked of each source: `mix` as counts (integers, `total` None or their sum), or as ratios rounded by
    largest remainder to `total`."""
    if not mix:
        raise ValueError("The mix is empty; give at least one source with a count or a ratio.")
    if total is None:
        if not all(float(v).is_integer() and v >= 0 for v in mix.values()):
            raise ValueError(f"Mix {dict(mix)} gives ratios; set `total` (e.g. 15000) to turn them into counts.")
        return {name: int(v) for name, v in mix.items()}
    if all(float(v).is_integer() for v in mix.values()) and sum(mix.values()) == total:
        return {name: int(v) for name, v in mix.items()}
    return largest_remainder(mix, total)


@dataclass
class Allocation:
    """Rows requested, available and taken per source, in mix order, and what the shortfall policy did."""

    requested: dict[str, int]
    available: dict[str, int]
    taken: dict[str, int]
    on_shortfall: str
    notes: list[str] = field(default_factory=list)

    @property
    def short(self) -> bool:
        return sum(self.taken.values()) < sum(self.requested.values())


def allocate(
    requested: Mapping[str, int], available: Mapping[str, int], on_shortfall: str = "error"
) -> Allocation:
    """How many rows to take from each source (see the module docstring). Raises `InsufficientSourceError`."""
    if on_shortfall not in SHORTFALL_POLICIES:
        raise ValueError(f"on_shortfall={on_shortfall!r}; choose from {SHORTFALL_POLICIES}.")
    requested = dict(requested)
    available = {name: int(available.get(name, 0)) for name in requested}
    short = [name for name in requested if available[name] < requested[name]]
    allocation = Allocation(requested, available, dict(requested), on_shortfall)
    if not short:
        return allocation
    if on_shortfall == "error":
        raise InsufficientSourceError(requested, available)
    if on_shortfall == "allow_short":
        allocation.taken = {name: min(count, available[name]) for name, count in requested.items()}
        allocation.notes.append(f"allow_short: {sum(allocation.taken.values())} rows instead of "
                                f"{sum(requested.values())} ({', '.join(short)} short).")
        return allocation
    total = sum(requested.values())
    if sum(available.values()) < total:
        raise InsufficientSourceError(requested, available, whole_pool=True)
    fixed: dict[str, int] = {}
    while True:  # water-filling: fix the sources that cannot meet their share, re-share the rest
        free = {name: requested[name] for name in requested if name not in fixed and requested[name] > 0}
        shares = largest_remainder(free, total - sum(fixed.values())) if free else {}
        capped = {name: available[name] for name, share in shares.items() if share > available[name]}
        if not capped:
            break
        fixed.update(capped)
    allocation.taken = {name: fixed.get(name, shares.get(name, 0)) for name in requested}
    moved = {name: allocation.taken[name] - count for name, count in requested.items()
             if allocation.taken[name] != count}
    allocation.notes.append("redistribute: " + ", ".join(f"{name} {delta:+d}" for name, delta in moved.items()))
    return allocation


def source_permutation(num_rows: int, seed: int, source: str) -> np.ndarray:
    """A permutation of `range(num_rows)` seeded by `(seed, source)` only."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(source.encode("utf-8"))]))
    return rng.permutation(num_rows)


def select_rows(sources: list[str], allocation: Allocation, seed: int) -> list[int]:
    """Indices into a table whose row `i` comes from `sources[i]`: the first `taken[s]` rows of each source's seeded
    permutation, then all of them shuffled once (seeded), so any prefix of the set mixes the sources."""
    by_source: dict[str, list[int]] = {}
    for index, name in enumerate(sources):
        by_source.setdefault(name, []).append(index)
    chosen = []
    for name, count in allocation.taken.items():
        rows = by_source.get(name, [])
        order = source_permutation(len(rows), seed, name)[:count]
        chosen.extend(rows[i] for i in order)
    mixing = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(b"mix")])).permutation(len(chosen))
    return [chosen[i] for i in mixing]


__all__ = [
    "Allocation",
    "InsufficientSourceError",
    "SHORTFALL_POLICIES",
    "allocate",
    "largest_remainder",
    "requested_counts",
    "select_rows",
    "source_permutation",
]
