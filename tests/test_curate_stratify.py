"""The curation's counting rules: the paper's mix as exact counts, shortfall policies, seeded draws, the filter."""

import pytest

from ranke_trl.data.arguments import PAPER_MIX, PAPER_TOTAL
from ranke_trl.data.filters import filter_rows, normalize_caption
from ranke_trl.data.stratify import (
    InsufficientSourceError, allocate, largest_remainder, requested_counts, select_rows, source_permutation,
)


def test_the_papers_ratios_give_table_h1s_counts():
    assert requested_counts(PAPER_MIX, PAPER_TOTAL) == {
        "journeydb": 4500, "dalle3": 3000, "mscoco": 3000, "human_gestures": 3000, "geneval": 750, "typography": 750,
    }


def test_largest_remainder_rounds_to_the_exact_total_ties_to_the_first_source():
    assert largest_remainder({"a": 1, "b": 1, "c": 1}, 10) == {"a": 4, "b": 3, "c": 3}
    assert largest_remainder({"a": 0.3, "b": 0.7}, 11) == {"a": 3, "b": 8}  # 3.3 / 7.7: b has the larger remainder
    counts = largest_remainder(PAPER_MIX, 1001)
    assert sum(counts.values()) == 1001 and counts["journeydb"] == 301  # 300.3: the largest remainder


def test_counts_are_taken_as_they_are_and_ratios_need_a_total():
    assert requested_counts({"a": 3, "b": 2}) == {"a": 3, "b": 2}
    with pytest.raises(ValueError, match="set `total`"):
        requested_counts({"a": 0.5, "b": 0.5})


def test_redistribute_spreads_the_deficit_over_the_others_by_ratio_capped_by_what_they_have():
    requested = {"a": 30, "b": 20, "c": 20, "d": 30}
    allocation = allocate(requested, {"a": 1000, "b": 5, "c": 12, "d": 1000}, "redistribute")
    assert allocation.taken == {"a": 42, "b": 5, "c": 12, "d": 41}  # the 33 missing rows split 30:30 over a and d
    assert sum(allocation.taken.values()) == 100 and allocation.notes


def test_redistribute_raises_only_when_the_whole_pool_is_short():
    with pytest.raises(InsufficientSourceError, match="The pool has 9 rows for 10 requested"):
        allocate({"a": 5, "b": 5}, {"a": 6, "b": 3}, "redistribute")


def test_allow_short_takes_what_each_source_has():
    allocation = allocate({"a": 5, "b": 5}, {"a": 6, "b": 3}, "allow_short")
    assert allocation.taken == {"a": 5, "b": 3} and allocation.short


def test_error_lists_every_source_with_requested_and_available():
    with pytest.raises(InsufficientSourceError) as error:
        allocate({"a": 5, "b": 5}, {"a": 6, "b": 3})
    assert "a: requested 5, available 6\n" in str(error.value) and "b: requested 5, available 3  <- short" in str(
        error.value)
    assert error.value.requested == {"a": 5, "b": 5} and error.value.available == {"a": 6, "b": 3}


def test_a_sources_draw_depends_only_on_the_seed_and_its_name():
    longer = source_permutation(100, seed=0, source="dalle3")
    assert list(source_permutation(100, 0, "dalle3")) == list(longer)
    assert list(source_permutation(100, 0, "mscoco")) != list(longer)
    sources = ["a"] * 10 + ["b"] * 10
    small, large = (select_rows(sources, allocate({"a": n, "b": 2}, {"a": 10, "b": 10}), 0) for n in (3, 5))
    assert {i for i in small if i < 10} <= {i for i in large if i < 10}  # a larger quota extends the same draw


def test_captions_match_evaluation_prompts_after_normalisation():
    assert normalize_caption("  A photo of a Bench. ") == normalize_caption("a photo of a bench")
    assert normalize_caption("Ｔwo cats—sleeping") == "two cats sleeping"  # NFKC, punctuation as spaces


def test_the_filter_drops_each_row_by_its_first_failing_rule_and_counts_it():
    sources = ["x", "x", "x", "y", "y", "y"]
    captions = ["a red cat on a mat", "a red cat", "a red cat on a mat", "A photo of a bench.", "two", "fine caption x"]
    hashes = ["h1", None, "h2", "h3", "h4", "h1"]
    kept, dropped, leaks = filter_rows(sources, captions, hashes, {"geneval": ["a photo of a bench"]})
    assert kept == [0]
    assert dropped == {"undecodable": {"x": 1}, "short_caption": {"y": 1}, "duplicate_caption": {"x": 1},
                       "duplicate_image": {"y": 1}, "eval_leak": {"y": 1}}
    assert leaks == {"geneval": 1}
