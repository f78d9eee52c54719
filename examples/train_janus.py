"""Train a Janus policy (and co-evolve its VQ decoder) with RankE, from a recipe.

    accelerate launch examples/train_janus.py --recipe recipes/shapes_clip.yaml
    accelerate launch examples/train_janus.py --recipe recipes/janus_clip.yaml
    accelerate launch examples/train_janus.py --recipe recipes/tiny_janus_clip.yaml --max_steps 4
    accelerate launch --config_file recipes/accelerate/zero2.yaml examples/train_janus.py --recipe recipes/janus_clip.yaml

Any recipe key can be overridden on the command line (`--key value`); unknown keys fail before anything loads.
"""

from ranke_trl import RankEGRPOTrainer
from ranke_trl.console import enable_console_logging, named_setup_errors
from ranke_trl.data import load_prompt_dataset
from ranke_trl.recipes import (build_callbacks, build_peft_config, build_policy, build_rbp_rewards, build_rewards,
                               parse_recipe)


def main(argv=None):
    enable_console_logging()  # RankE's start-up summary and warnings
    with named_setup_errors():  # a bad recipe, dataset or model: one named line, not a traceback per process
        trainer, script_args, config = set_up(argv)
    train(trainer, script_args, config)


def set_up(argv=None):
    """Parse the recipe, load the data and the models, build the trainer: everything that can fail before training."""
    script_args, config = parse_recipe(argv)
    dataset = load_prompt_dataset(
        script_args.dataset_name,
        split=script_args.dataset_split,
        config=script_args.dataset_config,
        prompt_column=script_args.prompt_column,
        max_samples=script_args.max_train_samples,
        seed=config.seed,
    )
    model, processor = build_policy(script_args, config)
    trainer = RankEGRPOTrainer(
        model=model,
        reward_funcs=build_rewards(script_args),
        rbp_reward_funcs=build_rbp_rewards(script_args),
        args=config,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=build_peft_config(script_args),
    )
    return trainer, script_args, config


def train(trainer, script_args, config):
    for callback in build_callbacks(script_args, config, trainer):  # those of plugins' recipe keys
        trainer.add_callback(callback)
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    if trainer.accelerator.is_main_process:
        print(trainer.summary())
    # Every rank leaves together: one rank exiting while another still saves can abort the launcher.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
