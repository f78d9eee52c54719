"""Image-token SFT, the paper's SFT row: next-token cross-entropy on the curated set's ground-truth codes, with the
same data and budget keys as the RankE recipes, through the backbone adapter (any registered backbone).

    python examples/train_sft.py --recipe recipes/janus_sft.yaml
    python examples/train_sft.py --recipe recipes/llamagen_sft.yaml
    python examples/train_sft.py --recipe recipes/janus_sft.yaml --resume_from_checkpoint latest   # after a stop

The output directory loads like any RankE input or output: `model_name_or_path: outputs/janus-pro-1b-sft` in a
RankE recipe, `ranke-trl eval --policy_name_or_path outputs/janus-pro-1b-sft`. Any recipe key can be overridden on
the command line (`--key value`); unknown keys fail before anything loads.
"""

import math

import torch

from ranke_trl.data import load_prompt_dataset
from ranke_trl.policy import load_policy_model, make_policy
from ranke_trl.recipes import build_policy
from ranke_trl.sampling import save_sampling
from ranke_trl.sft import (
    ImageTokenSFT, ground_truth_codes, last_sft_checkpoint, parse_sft_recipe, sft_config_from_recipe,
)


def main(argv=None):
    script_args, config, sft_args = parse_sft_recipe(argv)
    dataset = load_prompt_dataset(
        script_args.dataset_name,
        split=script_args.dataset_split,
        config=script_args.dataset_config,
        prompt_column=script_args.prompt_column,
        max_samples=script_args.max_train_samples,
        seed=config.seed,
    )
    model, processor = build_policy(script_args, config)
    if isinstance(model, str):  # a Hub id or directory: loaded with the recipe's model_init_kwargs
        model, processor = load_policy_model(model, config, processor)
    device = torch.device("cuda" if torch.cuda.is_available() and not config.use_cpu else "cpu")
    policy = make_policy(model.to(device), processor, prompt_template=config.prompt_template)
    sft = ImageTokenSFT(policy, model, sft_config_from_recipe(config, sft_args))
    codes = ground_truth_codes(dataset, sft.codec, sft_args.codes_column, config.image_column)
    resume = config.resume_from_checkpoint
    if resume is not None and str(resume).lower() in ("latest", "true"):
        resume = last_sft_checkpoint(config.output_dir)
        if resume is None:
            raise ValueError(f"resume_from_checkpoint: no checkpoint-<step> in {config.output_dir}.")
    save_steps = config.save_steps if config.save_strategy == "steps" else 0
    save_steps = math.ceil(save_steps * config.max_steps) if 0 < save_steps < 1 else int(save_steps)  # a ratio
    losses = sft.fit(list(dataset["prompt"]), codes, config.output_dir, save_steps, resume, processor)
    sft.save(config.output_dir, processor)
    save_sampling(config.sampling_settings(), config.output_dir)  # evaluation's defaults, as a RankE run saves them
    print(f"SFT finished {sft.global_step} steps on {len(codes)} pairs; last loss {losses[-1]:.3f} nats/code. "
          f"Output: {config.output_dir}")


if __name__ == "__main__":
    main()
