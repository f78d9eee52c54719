"""One rank of a distributed RankE run on the tiny recipe, launched by `tests/test_distributed.py`.

    accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 2 \
        tests/distributed_worker.py --out DIR [--backbone janus|llamagen] [recipe overrides, e.g. --ddp_backend gloo] \
        [--then --out DIR2 ... another job, in the same processes]

The backbone picks the tiny recipe (`recipes/tiny_<backbone>_clip.yaml`) and the code head the test watches.

Run 1 trains `max_steps=2` (a decoder phase after each step, a checkpoint at step 2) and saves the whole system to
`DIR/final`. Run 2 is a fresh trainer in the same processes that resumes from `DIR/run/checkpoint-2` to step 3.
Each rank writes `DIR/rank<r>.pt` with whole (gathered) weights at each point, for the test to compare across ranks
and against the saved files. Jobs separated by `--then` run one after another in the same launch (one process start
for several jobs under the same accelerate configuration).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from transformers import TrainerCallback

from ranke_trl import RankEGRPOTrainer
from ranke_trl.data import load_prompt_dataset
from ranke_trl.distributed import is_zero3_partitioned
from ranke_trl.recipes import build_peft_config, build_policy, build_rewards, parse_recipe

# Weights compared by the test: the backbone's code head (with LoRA: its base layer and adapter too), and every
# adapter matrix.
CODE_HEADS = {"janus": "generation_head.vision_head.", "llamagen": "lm_head."}


def whole_state(module: torch.nn.Module, keep=lambda name: True) -> dict[str, torch.Tensor]:
    """Named parameters of `module` as whole CPU tensors, gathering ZeRO-3 partitions (all ranks must call it)."""
    params = [(n, p) for n, p in module.named_parameters() if keep(n)]
    if any(hasattr(p, "ds_id") for _, p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in params]):
            return {n: p.detach().cpu().clone() for n, p in params}
    return {n: p.detach().cpu().clone() for n, p in params}


def watching(backbone: str):
    """The filter of watched parameter names for `backbone`."""
    return lambda name: CODE_HEADS[backbone] in name or "lora_" in name


class RecordAtTrainBegin(TrainerCallback):
    """Keeps the decoder, policy and reference weights as training (re)starts, i.e. right after a checkpoint was loaded."""

    def __init__(self, trainer, watched):
        self.trainer, self.watched, self.state = trainer, watched, None

    def on_train_begin(self, args, state, control, **kwargs):
        ref = getattr(self.trainer, "ref_model", None)
        ref = getattr(ref, "module", ref)
        self.state = {
            "decoder": {k: v.cpu().clone() for k, v in self.trainer.codec.module.state_dict().items()},
            "policy": whole_state(self.trainer.model, self.watched),
            "ref": whole_state(ref, self.watched) if ref is not None else None,
        }


def build_trainer(argv: list[str]):
    script_args, config = parse_recipe(argv)
    dataset = load_prompt_dataset(script_args.dataset_name, max_samples=script_args.max_train_samples, seed=config.seed)
    model, processor = build_policy(script_args, config)
    return RankEGRPOTrainer(
        model=model,
        reward_funcs=build_rewards(script_args),
        args=config,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=build_peft_config(script_args),
    )


def main():
    jobs, job = [], []
    for arg in sys.argv[1:]:
        if arg == "--then":
            jobs, job = [*jobs, job], []
        else:
            job.append(arg)
    for i, job in enumerate([*jobs, job]):
        run_job(job, last=i == len(jobs))


def run_job(argv: list[str], last: bool):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--backbone", default="janus", choices=list(CODE_HEADS))
    known, overrides = parser.parse_known_args(argv)
    watched = watching(known.backbone)
    common = [
        "--recipe", f"recipes/tiny_{known.backbone}_clip.yaml", "--output_dir", os.path.join(known.out, "run"),
        "--report_to", "none", "--log_images_steps", "0", "--save_steps", "2", "--max_train_samples", "32",
        "--per_device_train_batch_size", "4", "--decoder_batch_size", "2",
        "--ref_model_sync_steps", "1", "--ref_model_mixup_alpha", "0.5", "--seed", "0", *overrides,
    ]
    result = {}

    trainer = build_trainer([*common, "--max_steps", "2"])
    ref = getattr(trainer, "ref_model", None)
    result["ref_type"] = type(ref).__name__
    ref = getattr(ref, "module", ref)  # a DeepSpeed engine's parameters are named under `module.`
    result["policy_partitioned_at_init"] = is_zero3_partitioned(trainer.model)  # ZeRO-3 + from_pretrained
    result["policy_init"] = whole_state(trainer.model, watched)
    result["ref_init"] = whole_state(ref, watched) if ref is not None else None
    result["decoder_init"] = {k: v.cpu().clone() for k, v in trainer.codec.module.state_dict().items()}
    trainer.train()
    result["decoder_run1"] = {k: v.cpu().clone() for k, v in trainer.codec.module.state_dict().items()}
    result["policy_run1"] = whole_state(trainer.model, watched)
    result["ref_run1"] = whole_state(ref, watched) if ref is not None else None
    result["decoder_phases_run1"] = trainer._decoder_phases
    trainer.save_model(os.path.join(known.out, "final"))
    trainer.accelerator.wait_for_everyone()

    resumed = build_trainer([*common, "--max_steps", "3"])
    recorder = RecordAtTrainBegin(resumed, watched)
    resumed.add_callback(recorder)
    resumed.train(resume_from_checkpoint=os.path.join(known.out, "run", "checkpoint-2"))
    result["begin_run2"] = recorder.state
    result["decoder_run2"] = {k: v.cpu().clone() for k, v in resumed.codec.module.state_dict().items()}
    result["global_step_run2"] = resumed.state.global_step
    result["decoder_phases_run2"] = resumed._decoder_phases
    result["distributed_type"] = str(resumed.accelerator.distributed_type)
    result["num_processes"] = resumed.accelerator.num_processes

    torch.save(result, os.path.join(known.out, f"rank{resumed.accelerator.process_index}.pt"))
    resumed.accelerator.wait_for_everyone()
    if last:
        resumed.accelerator.end_training()


if __name__ == "__main__":
    main()
