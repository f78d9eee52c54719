"""ShapesWorld: the paper's table at CPU scale, one recipe file per row (recipes/shapes_experiment/*.yaml).

    python examples/shapes_experiment.py --workers 2                # every row, 3 seeds for the main rows
    python examples/shapes_experiment.py --quick --workers 2        # main rows, seed 0, 100 steps
    python examples/shapes_experiment.py --rows RankE "Std. RL" --seeds 0 1 2 --steps 60

Each row's recipe states all its settings; --seeds, --steps and --eval_every override them in every row (and every
key that states them, see `shapes_world.experiment.row_overrides`). Prepares the world first if its cache is missing
(examples/prepare_shapes_world.py). Writes results.json, results.md and PNG figures to --output_dir.
"""

import argparse
import glob
import os

from shapes_world.experiment import MAIN_ROWS, load_row, row_overrides, read_row_file, run_experiment

ROW_RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "shapes_experiment")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=sorted(glob.glob(os.path.join(ROW_RECIPES, "*.yaml"))),
                        help="row recipes, in table order (default: recipes/shapes_experiment/*.yaml)")
    parser.add_argument("--rows", nargs="+", help="names of the rows to run (default: every recipe's)")
    parser.add_argument("--quick", action="store_true", help="shorthand for --rows <main rows> --seeds 0 --steps 100")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds of every row")
    parser.add_argument("--steps", type=int, help="policy optimiser steps per run")
    parser.add_argument("--eval_every", type=int, help="evaluate every this many steps")
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel processes (2 suits two cores)")
    parser.add_argument("--cache_dir", default=None, help="ShapesWorld cache (default: $RANKE_SHAPES_CACHE)")
    parser.add_argument("--output_dir", default="outputs/shapes-experiment")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.seeds, args.steps = args.rows or MAIN_ROWS, args.seeds or [0], args.steps or 100
    recipes = {read_row_file(path)["row"]: path for path in args.recipes}
    unknown = sorted(set(args.rows or []) - set(recipes))
    if unknown:
        parser.error(f"unknown rows {unknown}; the recipes hold {list(recipes)}")
    rows = []
    for name, path in recipes.items():
        if args.rows is None or name in args.rows:
            mode = read_row_file(path)["mode"]
            rows.append(load_row(path, row_overrides(mode, args.seeds, args.steps, args.eval_every)))
    payload = run_experiment(rows, args.output_dir, cache_dir=args.cache_dir, workers=args.workers)
    print(open(f"{args.output_dir}/results.md").read())
    print(f"results, curves and figures in {args.output_dir}")
    return payload


if __name__ == "__main__":
    main()
