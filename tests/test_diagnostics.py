"""Latent Covariate Shift diagnostics (METHOD.md, Appendix C): code histograms, token KL in bits, entropy."""

import math

import pytest
import torch

from ranke_trl.diagnostics import (
    CodeHistogram,
    ShiftDiagnostics,
    code_histogram,
    codebook_entropy_bits,
    token_kl_bits,
)


def test_code_histogram_counts_every_code_of_any_shape():
    codes = torch.tensor([[0, 2, 2], [3, 2, 0]])
    assert code_histogram(codes, codebook_size=5).tolist() == [2, 0, 3, 1, 0]


def test_code_histogram_rejects_codes_outside_the_codebook_naming_its_size():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        code_histogram(torch.tensor([1, 4]), codebook_size=4)


def test_code_histogram_rejects_float_codes():
    with pytest.raises(TypeError, match="integer"):
        code_histogram(torch.tensor([1.0, 2.0]), codebook_size=4)


def test_token_kl_is_zero_for_identical_histograms():
    counts = torch.tensor([5, 1, 0, 7])
    assert token_kl_bits(counts, counts) == pytest.approx(0.0, abs=1e-12)


def test_token_kl_matches_a_hand_computed_value_in_bits():
    # Without smoothing: p = (3/4, 1/4), q = (1/2, 1/2).
    # KL = 3/4 log2(3/2) + 1/4 log2(1/2) = 0.75 * 0.5849625 - 0.25 = 0.1887219 bits.
    expected = 0.75 * math.log2(1.5) + 0.25 * math.log2(0.5)
    assert token_kl_bits(torch.tensor([3, 1]), torch.tensor([5, 5]), smoothing=0.0) == pytest.approx(expected)
    assert expected == pytest.approx(0.1887219, abs=1e-6)


def test_token_kl_adds_the_smoothing_to_every_count_of_both_histograms():
    # smoothing 1: p counts (2, 0) -> (3, 1) = (3/4, 1/4); q counts (1, 1) -> (2, 2) = (1/2, 1/2).
    expected = 0.75 * math.log2(1.5) + 0.25 * math.log2(0.5)
    assert token_kl_bits(torch.tensor([2, 0]), torch.tensor([1, 1]), smoothing=1.0) == pytest.approx(expected)


def test_token_kl_without_smoothing_is_infinite_when_p_uses_a_code_q_never_does():
    assert token_kl_bits(torch.tensor([1, 1]), torch.tensor([2, 0]), smoothing=0.0) == math.inf


def test_token_kl_is_finite_with_smoothing_when_p_uses_a_code_q_never_does():
    assert math.isfinite(token_kl_bits(torch.tensor([1, 1]), torch.tensor([2, 0]), smoothing=1.0))


def test_larger_smoothing_pulls_the_kl_towards_zero():
    p, q = torch.tensor([9, 1, 0]), torch.tensor([1, 1, 8])
    kls = [token_kl_bits(p, q, smoothing=s) for s in (0.5, 1.0, 10.0)]
    assert kls[0] > kls[1] > kls[2] > 0


def test_token_kl_rejects_histograms_of_different_codebook_sizes():
    with pytest.raises(ValueError, match="mismatched codebook sizes"):
        token_kl_bits(torch.tensor([1, 1]), torch.tensor([1, 1, 1]))


def test_entropy_of_uniform_codes_is_log2_of_the_codebook_size():
    codes = torch.arange(16).repeat(3)
    assert codebook_entropy_bits(code_histogram(codes, 16)) == pytest.approx(4.0)


def test_entropy_of_a_single_used_code_is_zero():
    assert codebook_entropy_bits(torch.tensor([0, 9, 0])) == 0.0


def test_entropy_matches_a_hand_computed_value():
    # p = (1/2, 1/4, 1/4): H = 0.5 * 1 + 2 * 0.25 * 2 = 1.5 bits.
    assert codebook_entropy_bits(torch.tensor([2, 1, 1, 0])) == pytest.approx(1.5)


def test_code_histogram_accumulates_batches():
    histogram = CodeHistogram(4).update(torch.tensor([0, 1])).update(torch.tensor([[1, 3]]))
    assert histogram.counts.tolist() == [1, 2, 0, 1]
    assert histogram.num_codes == 4


def test_code_histogram_save_load_round_trip(tmp_path):
    histogram = CodeHistogram(6).update(torch.tensor([5, 5, 0, 2]))
    histogram.save(tmp_path / "gt.safetensors")
    loaded = CodeHistogram.load(tmp_path / "gt.safetensors", codebook_size=6)
    assert torch.equal(loaded.counts, histogram.counts)


def test_code_histogram_load_rejects_mismatched_codebook_sizes(tmp_path):
    CodeHistogram(6).update(torch.tensor([1])).save(tmp_path / "gt.safetensors")
    with pytest.raises(ValueError, match="mismatched codebook sizes"):
        CodeHistogram.load(tmp_path / "gt.safetensors", codebook_size=8)


def test_shift_diagnostics_reports_kl_and_both_entropies():
    gt = torch.tensor([1, 1, 1, 1])
    metrics = ShiftDiagnostics(gt, codebook_size=4, smoothing=0.0)(torch.tensor([[0, 0, 1, 1]]))
    # p_θ = (1/2, 1/2, 0, 0) against uniform: KL = log2(2) = 1 bit; H(p_θ) = 1 bit, H(p_gt) = 2 bits.
    expected = {"shift/token_kl_bits": 1.0, "shift/entropy_bits": 1.0, "shift/gt_entropy_bits": 2.0}
    assert metrics == pytest.approx(expected)


def test_shift_diagnostics_without_ground_truth_reports_only_entropy():
    metrics = ShiftDiagnostics(None, codebook_size=4)(torch.tensor([0, 1, 2, 3]))
    assert metrics == {"shift/entropy_bits": pytest.approx(2.0)}


def test_shift_diagnostics_rejects_ground_truth_of_another_codebook_size():
    with pytest.raises(ValueError, match="mismatched codebook sizes"):
        ShiftDiagnostics(torch.ones(5, dtype=torch.long), codebook_size=4)


def test_shift_diagnostics_description_states_unit_and_smoothing():
    description = ShiftDiagnostics(torch.ones(4, dtype=torch.long), codebook_size=4, smoothing=0.5).description
    assert "bits" in description["shift/token_kl_bits"] and "smoothing 0.5" in description["shift/token_kl_bits"]
