"""Evaluate a trained system from a recipe: generate for a prompt set, score, write results JSON and Markdown.

    accelerate launch examples/evaluate.py --recipe recipes/eval_coco.yaml --policy_name_or_path outputs/ranke
    python examples/evaluate.py --recipe recipes/eval_tiny.yaml --policy_name_or_path /tmp/tiny-janus

Any recipe key can be overridden on the command line (`--key value`); unknown keys fail before anything loads.
The same runs as `ranke-trl eval --recipe ...`.
"""

from ranke_trl.cli import parse_eval_args
from ranke_trl.console import named_setup_errors
from ranke_trl.evaluation.runner import evaluate


def main(argv=None):
    with named_setup_errors():  # a bad recipe: one named line, not a traceback per process
        args = parse_eval_args(argv)
    return evaluate(args)


if __name__ == "__main__":
    main()
