"""The `ranke-trl` command line.

    ranke-trl eval --recipe recipes/eval_coco.yaml [--key value ...]     # evaluate a trained system
    ranke-trl table runs/std_rl/results.json runs/ranke/results.json     # one Markdown table of several runs

Several processes: `accelerate launch -m ranke_trl.cli eval --recipe ...` (or `examples/evaluate.py`).
"""

from __future__ import annotations

import argparse
import sys

USAGE = """usage: ranke-trl {eval,table} ...

  eval   --recipe FILE [--key value ...]    generate, score, write <output_dir>/results.json and results.md
  table  RESULTS.json [RESULTS.json ...] [--output FILE]    print one Markdown table of several runs
"""


def parse_eval_args(argv: list[str]):
    """`EvalArguments` from `--recipe FILE` plus `--key value` overrides; unknown keys raise `RecipeError`."""
    from .evaluation.runner import EvalArguments
    from .recipes import RecipeParser

    (args,) = RecipeParser((EvalArguments,)).parse_args_and_config(argv)
    return args


def _eval(argv: list[str]) -> int:
    from .evaluation.runner import evaluate

    evaluate(parse_eval_args(argv))
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"eval": _eval, "table": _table}
    if not argv or argv[0] not in commands:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
