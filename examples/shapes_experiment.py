"""ShapesWorld: the paper's table at CPU scale, one recipe file per row (a folder of row recipes).

    python examples/shapes_experiment.py --workers 2                # every row, 3 seeds for the main rows
    python examples/shapes_experiment.py --quick --workers 2        # main rows, seed 0, 100 steps
    python examples/shapes_experiment.py --rows RankE "Std. RL" --seeds 0 1 2 --steps 60
    python examples/shapes_experiment.py --recipe_dir recipes/shapes_v2 --output_dir outputs/shapes-v2 --workers 2
    python examples/shapes_experiment.py --recipe_dir recipes/shapes_v2 --output_dir outputs/shapes-v2 --report_only

Each row's recipe states all its settings; --seeds, --steps and --eval_every override them in every row (and every
key that states them, see `shapes_world.experiment.row_overrides`). A recipe folder may hold `experiment.yaml`, the
experiment's own settings: `paired: [[A, B], ...]`, the row pairs whose per-seed differences A − B are reported with
95% t-intervals and the minimum detectable effect (--paired adds pairs). Prepares the world first if its cache is
missing (examples/prepare_shapes_world.py).

Resumable: each run writes <output_dir>/runs/<row>/seed_<n>/result.json the moment it finishes; run the same command
again after an interruption and finished runs are skipped, unfinished ones continue from their newest checkpoint.
results.json, results.md and PNG figures are rebuilt from every finished run at the end of each invocation.
"""

import argparse
import glob
import os

import yaml

from shapes_world.experiment import MAIN_ROWS, load_row, read_row_file, row_overrides, run_experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT_FILE = "experiment.yaml"


def experiment_settings(recipe_dir: str) -> dict:
    """The folder's `experiment.yaml` (empty if none): `paired`, a list of [row A, row B] pairs."""
    path = os.path.join(recipe_dir, EXPERIMENT_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        settings = yaml.safe_load(f) or {}
    unknown = sorted(set(settings) - {"paired"})
    if unknown or not all(isinstance(p, list) and len(p) == 2 for p in settings.get("paired", [])):
        raise SystemExit(f"{path}: the only key is `paired`, a list of [row A, row B] pairs (got {settings}).")
    return settings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe_dir", default=os.path.join(REPO, "recipes", "shapes_experiment"),
                        help="folder of row recipes, in table order by file name, and its experiment.yaml")
    parser.add_argument("--recipes", nargs="+", help="row recipes, in table order (default: --recipe_dir's)")
    parser.add_argument("--rows", nargs="+", help="names of the rows to run (default: every recipe's); the report "
                        "still shows every row with finished runs")
    parser.add_argument("--quick", action="store_true", help="shorthand for --rows <main rows> --seeds 0 --steps 100; "
                        "the main rows are those of Base, SFT, Std. RL, Decoder-only and RankE the recipes hold")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds of every row")
    parser.add_argument("--steps", type=int, help="policy optimiser steps per run")
    parser.add_argument("--eval_every", type=int, help="evaluate every this many steps")
    parser.add_argument("--paired", nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="report per-seed paired differences A − B (repeatable; adds to experiment.yaml's)")
    parser.add_argument("--rerun", nargs="+", default=[], metavar="ROW",
                        help="discard these rows' runs in --output_dir and run them again (after a recipe change)")
    parser.add_argument("--report_only", action="store_true", help="run nothing; rebuild the report")
    parser.add_argument("--keep_checkpoints", action="store_true", help="keep each finished run's checkpoints")
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel processes (2 suits two cores)")
    parser.add_argument("--cache_dir", default=None, help="ShapesWorld cache (default: $RANKE_SHAPES_CACHE)")
    parser.add_argument("--output_dir", default="outputs/shapes-experiment")
    args = parser.parse_args(argv)
    paths = args.recipes or sorted(p for p in glob.glob(os.path.join(args.recipe_dir, "*.yaml"))
                                   if os.path.basename(p) != EXPERIMENT_FILE)
    recipes = {read_row_file(path)["row"]: path for path in paths}
    if args.quick:
        main_rows = [row for row in MAIN_ROWS if row in recipes] or list(recipes)
        args.rows, args.seeds, args.steps = args.rows or main_rows, args.seeds or [0], args.steps or 100
    named = set(args.rows or []) | set(args.rerun) | {name for pair in args.paired for name in pair}
    unknown = sorted(named - set(recipes))
    if unknown:
        parser.error(f"unknown rows {unknown}; the recipes hold {list(recipes)}")
    paired = experiment_settings(args.recipe_dir).get("paired", []) + args.paired
    rows = [load_row(path, row_overrides(read_row_file(path)["mode"], args.seeds, args.steps, args.eval_every))
            for path in recipes.values()]
    run_rows = [] if args.report_only else args.rows
    payload = run_experiment(rows, args.output_dir, cache_dir=args.cache_dir, workers=args.workers,
                             run_rows=run_rows, rerun=args.rerun, paired=paired,
                             keep_checkpoints=args.keep_checkpoints)
    print(open(f"{args.output_dir}/results.md").read())
    print(f"results, curves and figures in {args.output_dir}")
    return payload


if __name__ == "__main__":
    main()
