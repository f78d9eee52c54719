"""ShapesWorld: the paper's table at CPU scale (see ranke_trl/world/experiment.py).

    python examples/shapes_experiment.py --quick --workers 2        # main rows, 1 seed, short runs
    python examples/shapes_experiment.py --workers 2                # every row, 3 seeds for the main rows
    python examples/shapes_experiment.py --rows RankE "Std. RL" --seeds 0 1 2 --steps 60

Prepares the world first if its cache is missing (examples/prepare_shapes_world.py). Writes results.json,
results.md and PNG figures to --output_dir.
"""

import argparse
import dataclasses

from ranke_trl.world.experiment import QUICK, ROWS, ExperimentSettings, run_experiment


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="main rows, one seed, short runs")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), help="rows to run (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds of the main rows")
    parser.add_argument("--steps", type=int, help="policy optimiser steps per run")
    parser.add_argument("--eval_every", type=int, help="evaluate every this many steps")
    parser.add_argument("--workers", type=int, help="runs in parallel processes (default 1; 2 suits two cores)")
    parser.add_argument("--cache_dir", default=None, help="ShapesWorld cache (default: $RANKE_SHAPES_CACHE)")
    parser.add_argument("--output_dir", default="outputs/shapes-experiment")
    args = parser.parse_args(argv)
    settings = dataclasses.replace(QUICK) if args.quick else ExperimentSettings()
    for name in ("rows", "seeds", "steps", "eval_every", "workers"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    payload = run_experiment(settings, args.output_dir, cache_dir=args.cache_dir)
    print(open(f"{args.output_dir}/results.md").read())
    print(f"results, curves and figures in {args.output_dir}")
    return payload


if __name__ == "__main__":
    main()
