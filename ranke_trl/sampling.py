"""How images are sampled from the policy: the one definition of the sampling settings.

`SamplingArguments` is shared by `RankEConfig` (rollouts and the scored log-probs) and the evaluation arguments, so
`guidance_scale`, `temperature`, `top_k`, `top_p` and `logprob_mode` have one name, one meaning and one default.
A training run saves its values beside the model (`sampling_config.json`); evaluating or generating from that
directory starts from them, and any setting given explicitly wins.

Each field defaults to None, meaning "not set here": `resolve_sampling` fills it from the run's saved settings
when there are any, else from `SAMPLING_DEFAULTS`. After `RankEConfig.__post_init__` every field is concrete.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

from .policy.static_sampler import check_sampler

SAMPLING_FILE = "sampling_config.json"
LOGPROB_MODES = ("guided", "conditional")
#: the defaults: the paper's rollouts (top-p 0.9, METHOD.md), CFG 5.0 (ours: Janus's default), the guided log-probs
SAMPLING_DEFAULTS = {"guidance_scale": 5.0, "temperature": 1.0, "top_k": 0, "top_p": 0.9, "logprob_mode": "guided"}


@dataclass
class SamplingArguments:
    """Sampling settings of the image-token policy (rollouts, evaluation and generation alike)."""

    guidance_scale: float | None = field(
        default=None,
        metadata={"help": "Classifier-free guidance scale `s` in `u + s(c - u)`; 1 disables CFG. Default 5.0 (ours: "
                  "Janus's default), or the value saved with the run being evaluated."},
    )
    temperature: float | None = field(
        default=None, metadata={"help": "Sampling temperature (> 0). Default 1.0, or the run's saved value."}
    )
    top_k: int | None = field(
        default=None, metadata={"help": "Top-k filtering; 0 disables it. Default 0, or the run's saved value."}
    )
    top_p: float | None = field(
        default=None,
        metadata={"help": "Nucleus sampling threshold in (0, 1]; 1 disables it. Default 0.9 (paper), or the run's "
                  "saved value."},
    )
    logprob_mode: str | None = field(
        default=None,
        metadata={
            "help": "Which distribution the GRPO log-probs score. 'guided' (default, ours): the CFG-combined, "
            "temperature-scaled distribution the rollouts were drawn from, before top-k/top-p truncation. "
            "'conditional': the conditional branch alone, temperature-scaled."
        },
    )

    sampler: str = field(
        default="eager",
        metadata={
            "help": "How codes are drawn (the same distribution and, with the same seeds, the same codes; only the "
            "speed differs). 'eager' (default): the KV-cached CFG loop with a cache that grows each step; no "
            "compilation and nothing to warm up, so it suits any run. 'static': a preallocated KV cache and "
            "fixed shapes per step. 'compiled': 'static' with the decoding step compiled by torch.compile (CUDA "
            "graphs on a GPU, inductor C++ kernels on a CPU): the fastest for long runs, at a one-off compile "
            "(tens of seconds to minutes) per batch size and prompt-length bucket of 32 tokens. Not saved with "
            "the run."
        },
    )

    def sampling_settings(self) -> dict:
        """The five settings as a dict (concrete after `resolve_sampling`)."""
        return {name: getattr(self, name) for name in SAMPLING_DEFAULTS}

    def resolve_sampling(self, saved: dict | None = None) -> dict[str, str]:
        """Fill every unset field from `saved` (a run's settings), else from `SAMPLING_DEFAULTS`; then validate.

        Returns where each value came from: 'set', 'run' or 'default'.
        """
        sources = {}
        for name, default in SAMPLING_DEFAULTS.items():
            if getattr(self, name) is not None:
                sources[name] = "set"
            elif saved is not None and saved.get(name) is not None:
                setattr(self, name, saved[name])
                sources[name] = "run"
            else:
                setattr(self, name, default)
                sources[name] = "default"
        check_sampling(self.sampling_settings())
        check_sampler(self.sampler)
        return sources


def check_sampling(settings: dict) -> None:
    """Raise a ValueError naming the first out-of-range sampling setting."""
    g, t, k, p = (settings[n] for n in ("guidance_scale", "temperature", "top_k", "top_p"))
    if not (isinstance(g, (int, float)) and math.isfinite(g) and g >= 1.0):
        raise ValueError(f"guidance_scale must be a finite number >= 1 (1 disables CFG), got {g}.")
    if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {t}; use top_k=1 for greedy sampling.")
    if not (isinstance(k, int) and k >= 0):
        raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {k}.")
    if not (isinstance(p, (int, float)) and 0.0 < p <= 1.0):
        raise ValueError(f"top_p must lie in (0, 1] (1 disables it), got {p}.")
    if settings["logprob_mode"] not in LOGPROB_MODES:
        raise ValueError(f"logprob_mode={settings['logprob_mode']!r} is not one of {LOGPROB_MODES}.")


def save_sampling(settings: dict, output_dir: str | os.PathLike) -> str:
    """Write `sampling_config.json` into `output_dir` and return its path."""
    path = os.path.join(output_dir, SAMPLING_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({name: settings[name] for name in SAMPLING_DEFAULTS}, f, indent=2)
    return path


def load_sampling(model_dir: str | os.PathLike | None) -> dict | None:
    """The sampling settings saved with a run in `model_dir` (a local directory or a Hub id), or None."""
    if model_dir is None:
        return None
    path = os.path.join(model_dir, SAMPLING_FILE)
    if not os.path.isdir(model_dir):  # a Hub id: the file is optional (models not trained by RankE lack it)
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(str(model_dir), SAMPLING_FILE)
        except Exception:
            return None
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    return {name: saved[name] for name in SAMPLING_DEFAULTS if name in saved}


def describe_sampling(settings: dict, sources: dict | None = None) -> str:
    """One line for the console: `CFG 3, temperature 1, top-k 0, top-p 0.9, log-probs guided (from the run)`."""
    text = (f"CFG {settings['guidance_scale']:g}, temperature {settings['temperature']:g}, top-k {settings['top_k']}, "
            f"top-p {settings['top_p']:g}, log-probs {settings['logprob_mode']}")
    if sources:
        labels = {"set": "set here", "run": "saved with the run", "default": "library default"}
        groups = [f"{labels[o]}: {', '.join(n for n in sources if sources[n] == o)}"
                  for o in ("set", "run", "default") if o in sources.values()]
        text += f" ({'; '.join(groups)})"
    return text
