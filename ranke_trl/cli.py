"""The `ranke-trl` command line.

    ranke-trl generate --model outputs/ranke --prompt "a red square" --output_dir images/   # images from prompts
    ranke-trl eval --recipe recipes/eval_coco.yaml [--key value ...]     # evaluate a trained system
    ranke-trl table runs/std_rl/results.json runs/ranke/results.json     # one Markdown table of several runs
    ranke-trl curate --recipe recipes/data/blip3o_15k.yaml [--key value ...]   # build the paper's training set

Several processes: `accelerate launch -m ranke_trl.cli eval --recipe ...` (or `examples/evaluate.py`).
"""

from __future__ import annotations

import argparse
import sys

USAGE = """usage: ranke-trl {generate,eval,table,curate} ...

  generate --model DIR_OR_HUB_ID --prompt TEXT [--prompt TEXT ...] [--output_dir DIR]    PNGs, one call
  eval   --recipe FILE [--key value ...]    generate, score, write <output_dir>/results.json and results.md
  table  RESULTS.json [RESULTS.json ...] [--output FILE]    print one Markdown table of several runs
  curate --recipe FILE [--key value ...]    ingest, filter, stratify, compress and encode a training set
"""


def parse_eval_args(argv: list[str]):
    """`EvalArguments` from `--recipe FILE` plus `--key value` overrides; unknown keys raise `RecipeError`."""
    from .evaluation.runner import EvalArguments
    from .recipes import RecipeParser

    (args,) = RecipeParser((EvalArguments,)).parse_args_and_config(argv)
    return args


def _eval(argv: list[str]) -> int:
    from .console import named_setup_errors
    from .evaluation.runner import evaluate

    with named_setup_errors():  # a bad recipe: one named line
        args = parse_eval_args(argv)
    evaluate(args)
    return 0


def _generate(argv: list[str]) -> int:
    from .generation import TextToImagePipeline, save_images

    parser = argparse.ArgumentParser(prog="ranke-trl generate", description="Images from text prompts, as PNG files.")
    parser.add_argument("--model", required=True, help="A RankE output directory, any local model dir or Hub id.")
    parser.add_argument("--prompt", action="append", default=[], help="A prompt (repeat the flag for several).")
    parser.add_argument("--prompts_file", help="A text file with one prompt per line.")
    parser.add_argument("--output_dir", default="outputs/generated", help="Where the PNGs and prompts.txt go.")
    parser.add_argument("--images_per_prompt", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="Each image's seed derives from it and its indices.")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", default=None, help="e.g. cuda; default: where the model loads (CPU).")
    for name, kind in (("guidance_scale", float), ("temperature", float), ("top_k", int), ("top_p", float)):
        parser.add_argument(f"--{name}", type=kind, default=None, help="Default: the run's saved value.")
    parser.add_argument("--sampler", default="eager", choices=("eager", "static", "compiled"),
                        help="How codes are drawn (same codes, different speed); see SamplingArguments.sampler.")
    args = parser.parse_args(argv)
    prompts = list(args.prompt)
    if args.prompts_file:
        with open(args.prompts_file, encoding="utf-8") as f:
            prompts += [line.strip() for line in f if line.strip()]
    if not prompts:
        parser.error("give at least one --prompt or a --prompts_file")
    from .console import named_setup_errors

    with named_setup_errors():  # a missing or unsupported model: one named line
        pipe = TextToImagePipeline.from_pretrained(args.model, dtype=args.dtype, device=args.device)
    sampling = {k: getattr(args, k) for k in ("guidance_scale", "temperature", "top_k", "top_p")}
    print(f"Sampling: {pipe.describe()} (run defaults; overridden here: "
          f"{', '.join(f'{k}={v}' for k, v in sampling.items() if v is not None) or 'nothing'})")
    images = pipe(prompts, images_per_prompt=args.images_per_prompt, seed=args.seed, batch_size=args.batch_size,
                  sampler=args.sampler, **sampling)
    paths = save_images(images, prompts, args.output_dir, args.images_per_prompt)
    print(f"Wrote {len(paths)} images and prompts.txt to {args.output_dir}")
    return 0


def _table(argv: list[str]) -> int:
    from .evaluation.results import results_table

    parser = argparse.ArgumentParser(prog="ranke-trl table", description="One Markdown table of several runs.")
    parser.add_argument("results", nargs="+", help="results.json files written by `ranke-trl eval`, one row each.")
    parser.add_argument("--output", default=None, help="Also write the table to this file.")
    args = parser.parse_args(argv)
    table = results_table(args.results)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(table)
    print(table, end="")
    return 0


def _curate(argv: list[str]) -> int:
    from .data.curate import main as curate_main

    return curate_main(argv, prog=("ranke-trl", "curate"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"generate": _generate, "eval": _eval, "table": _table, "curate": _curate}
    if not argv or argv[0] not in commands:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
