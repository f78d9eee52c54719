"""Diagnostics of Latent Covariate Shift (METHOD.md, Appendix C).

Everything here works on codebook *indices* only; nothing is decoded. A code tensor is an integer tensor of any
shape with values in `[0, K)`, `K` the codebook size.

- `p_gt(k)`: unigram frequency of code `k` over the ground-truth codes of real images.
- `p_θ(k)`: the same over policy samples for the same prompts.
- Shift: `KL(p_θ ‖ p_gt)` in **bits** (log base 2), after adding `smoothing` to every count of both histograms.
  Bits match the codebook entropy, `H(p) = −Σ_k p(k) log₂ p(k)`, so both numbers share one unit.

Typical use: build `p_gt` once with :class:`CodeHistogram` over the tokenised real images, `save` it, then give
its counts to :class:`ShiftDiagnostics`, which the trainer calls on every generation batch and logs.
"""

from __future__ import annotations

import math
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

_HISTOGRAM_FORMAT = "ranke_trl.CodeHistogram"


def code_histogram(codes: torch.Tensor, codebook_size: int) -> torch.LongTensor:
    """Count how often each codebook entry occurs.

    `codes`: integer tensor of any shape (e.g. (B, N) rollouts), values in [0, codebook_size).
    Returns a (codebook_size,) int64 tensor on the CPU whose entries sum to `codes.numel()`.
    """
    if codebook_size <= 0:
        raise ValueError(f"codebook_size must be positive, got {codebook_size}.")
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor of codebook indices, got dtype {codes.dtype}.")
    flat = codes.detach().reshape(-1).long()
    if flat.numel() == 0:
        return torch.zeros(codebook_size, dtype=torch.long)
    low, high = int(flat.min()), int(flat.max())
    if low < 0 or high >= codebook_size:
        raise ValueError(
            f"codes must lie in [0, {codebook_size}) for a codebook of size {codebook_size}, found values in "
            f"[{low}, {high}]. Check that codebook_size matches the VQ tokenizer that produced these codes."
        )
    return torch.bincount(flat, minlength=codebook_size).cpu()


def _as_counts(counts: torch.Tensor, name: str) -> torch.Tensor:
    if counts.dim() != 1:
        raise ValueError(f"{name} must be a 1-D histogram of shape (K,), got shape {tuple(counts.shape)}.")
    counts = counts.detach().double().cpu()
    if (counts < 0).any():
        raise ValueError(f"{name} holds negative counts; pass raw code counts (e.g. from code_histogram).")
    return counts


def _normalise(counts: torch.Tensor, smoothing: float, name: str) -> torch.Tensor:
    counts = counts + smoothing
    total = counts.sum()
    if total <= 0:
        raise ValueError(f"{name} is empty and smoothing is 0, so it has no distribution; count some codes first.")
    return counts / total


def token_kl_bits(p_counts: torch.Tensor, q_counts: torch.Tensor, smoothing: float = 1.0) -> float:
    """`KL(p ‖ q)` in bits between two unigram code distributions given as raw counts.

    `p_counts`, `q_counts`: (K,) non-negative counts (any numeric dtype). `smoothing` (>= 0) is added to every
    count of *both* histograms before normalising (additive / Laplace smoothing), so unseen codes do not make the
    divergence infinite. With `smoothing=0`, a code with p > 0 and q = 0 gives `inf`; terms with p = 0 count 0.
    Returns a float >= 0.
    """
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}.")
    p_counts, q_counts = _as_counts(p_counts, "p_counts"), _as_counts(q_counts, "q_counts")
    if p_counts.shape != q_counts.shape:
        raise ValueError(
            f"mismatched codebook sizes: p_counts has {p_counts.numel()} entries, q_counts has {q_counts.numel()}."
        )
    p = _normalise(p_counts, smoothing, "p_counts")
    q = _normalise(q_counts, smoothing, "q_counts")
    support = p > 0
    if (q[support] == 0).any():
        return math.inf
    return float((p[support] * (p[support].log2() - q[support].log2())).sum().clamp_min(0.0))


def codebook_entropy_bits(counts: torch.Tensor) -> float:
    """Entropy `H(p) = −Σ_k p(k) log₂ p(k)` in bits of the distribution given by raw counts.

    `counts`: (K,) non-negative, not all zero. Unused codes contribute 0 (0 log 0 = 0); no smoothing is applied.
    Returns a float in [0, log₂ K].
    """
    p = _normalise(_as_counts(counts, "counts"), 0.0, "counts")
    p = p[p > 0]
    # max() turns the -0.0 of a one-code histogram into 0.0.
    return max(0.0, float(-(p * p.log2()).sum()))


class CodeHistogram:
    """Running unigram histogram of codebook indices, saved as safetensors.

    `counts`: (K,) int64 raw counts, never smoothed, so a saved histogram can be reused with any smoothing.
    """

    def __init__(self, codebook_size: int):
        if codebook_size <= 0:
            raise ValueError(f"codebook_size must be positive, got {codebook_size}.")
        self.codebook_size = int(codebook_size)
        self.counts = torch.zeros(self.codebook_size, dtype=torch.long)

    def update(self, codes: torch.Tensor) -> "CodeHistogram":
        """Add the codes of a batch: integer tensor of any shape, values in [0, K)."""
        self.counts += code_histogram(codes, self.codebook_size)
        return self

    @property
    def num_codes(self) -> int:
        """How many codes have been counted so far."""
        return int(self.counts.sum())

    def save(self, path: str | os.PathLike) -> None:
        """Write the raw counts and the codebook size to a `.safetensors` file."""
        metadata = {"format": _HISTOGRAM_FORMAT, "codebook_size": str(self.codebook_size)}
        save_file({"counts": self.counts.contiguous()}, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, codebook_size: int) -> "CodeHistogram":
        """Read a histogram written by `save`, checking it was counted over a codebook of `codebook_size` entries.

        The check is mandatory: a histogram from another tokenizer would give a meaningless KL.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No code histogram at {path}; build one with CodeHistogram.update(...).save().")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != _HISTOGRAM_FORMAT or "counts" not in handle.keys():
                raise ValueError(f"{path} is not a CodeHistogram file (expected format {_HISTOGRAM_FORMAT!r}).")
            counts = handle.get_tensor("counts").long()
        stored = int(metadata["codebook_size"])
        if stored != codebook_size or counts.numel() != codebook_size:
            raise ValueError(
                f"mismatched codebook sizes: {path} was counted over {stored} codes, but {codebook_size} were "
                "expected. Recount the ground-truth codes with the tokenizer the policy uses."
            )
        histogram = cls(codebook_size)
        histogram.counts = counts
        return histogram


class ShiftDiagnostics:
    """Per-batch covariate-shift metrics of the policy's codes against the ground-truth code histogram.

    `gt_counts`: (K,) raw counts of real-image codes (e.g. `CodeHistogram.load(...).counts`), or None when no
    ground truth is available, in which case only the policy's entropy is reported.

    Calling it on `policy_codes` (integer tensor of any shape, values in [0, K); pass the codes of all rollouts,
    gathered across ranks for a global value) returns a dict of floats:

    - `"shift/token_kl_bits"`: `KL(p_θ ‖ p_gt)` in bits with additive `smoothing` (only with `gt_counts`),
    - `"shift/entropy_bits"`: `H(p_θ)` in bits,
    - `"shift/gt_entropy_bits"`: `H(p_gt)` in bits (only with `gt_counts`).

    One batch holds far fewer codes than K, so the per-batch KL is biased upwards by sparsity and the smoothing;
    compare runs at equal batch sizes, and for the Appendix C numbers accumulate a `CodeHistogram` over the whole
    evaluation set and call `from_counts` on it.
    """

    def __init__(self, gt_counts: torch.Tensor | None, codebook_size: int, smoothing: float = 1.0):
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {smoothing}.")
        if gt_counts is not None:
            gt_counts = gt_counts.detach().long().cpu()
            if gt_counts.shape != (codebook_size,):
                raise ValueError(
                    f"mismatched codebook sizes: gt_counts has shape {tuple(gt_counts.shape)}, expected "
                    f"({codebook_size},)."
                )
            if gt_counts.sum() == 0:
                raise ValueError("gt_counts is all zeros; count the ground-truth codes first.")
        self.gt_counts = gt_counts
        self.codebook_size = int(codebook_size)
        self.smoothing = float(smoothing)
        self.gt_entropy_bits = None if gt_counts is None else codebook_entropy_bits(gt_counts)

    @classmethod
    def from_file(cls, path: str | os.PathLike, codebook_size: int, smoothing: float = 1.0) -> "ShiftDiagnostics":
        """Build from a ground-truth histogram saved with `CodeHistogram.save`."""
        return cls(CodeHistogram.load(path, codebook_size).counts, codebook_size, smoothing)

    @property
    def description(self) -> dict[str, str]:
        """What each metric means, for the `meta` of evaluation results."""
        text = {"shift/entropy_bits": f"H(p_policy) in bits over a codebook of {self.codebook_size} codes"}
        if self.gt_counts is not None:
            text["shift/token_kl_bits"] = (
                f"KL(p_policy || p_gt) in bits of unigram code frequencies, additive smoothing {self.smoothing} "
                f"on every count; p_gt from {int(self.gt_counts.sum())} ground-truth codes"
            )
            text["shift/gt_entropy_bits"] = "H(p_gt) in bits of the ground-truth code frequencies"
        return text

    def from_counts(self, policy_counts: torch.Tensor) -> dict[str, float]:
        """The metrics for a (K,) histogram of policy codes (e.g. accumulated over an evaluation set)."""
        metrics = {"shift/entropy_bits": codebook_entropy_bits(policy_counts)}
        if self.gt_counts is not None:
            metrics["shift/token_kl_bits"] = token_kl_bits(policy_counts, self.gt_counts, self.smoothing)
            metrics["shift/gt_entropy_bits"] = self.gt_entropy_bits
        return metrics

    def __call__(self, policy_codes: torch.Tensor) -> dict[str, float]:
        return self.from_counts(code_histogram(policy_codes, self.codebook_size))

    def batch(self, policy_codes: torch.Tensor) -> dict[str, float]:
        """The training-time proxy on one generation batch, under names of its own: `shift/batch_token_kl_bits`
        and `shift/batch_entropy_bits` (plus `shift/gt_entropy_bits`). Biased upwards by sparsity (a batch holds far
        fewer codes than K), so it is not the Appendix C number, which `from_counts` gives over an evaluation set."""
        metrics = self(policy_codes)
        return {(k if k == "shift/gt_entropy_bits" else k.replace("shift/", "shift/batch_")): v
                for k, v in metrics.items()}
