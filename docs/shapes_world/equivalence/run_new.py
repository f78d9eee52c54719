import glob, json, os
from shapes_world.experiment import load_row, row_overrides, run_experiment
import ranke_trl; assert ranke_trl.__file__.startswith("/work/main"), ranke_trl.__file__
REPO = "/work/main"
sizes = {"base": ["--num_eval_prompts", "8"],
         "sft": ["--num_eval_prompts", "8", "--max_train_samples", "8", "--batch_size", "8"],
         "grpo": ["--num_eval_prompts", "8", "--max_train_samples", "8", "--per_device_train_batch_size", "8",
                  "--num_generations", "4"]}
wanted = ["Base", "SFT", "Std. RL", "Decoder-only", "RankE", "RankE (black-box)", "uniform GAN"]
rows = []
for path in sorted(glob.glob(os.path.join(REPO, "recipes", "shapes_experiment", "*.yaml"))):
    row = load_row(path)
    if row.name in wanted:
        rows.append(load_row(path, row_overrides(row.mode, seeds=[0], steps=4, eval_every=2) + sizes[row.mode]))
payload = run_experiment(rows, "/tmp/cmp/out_new", cache_dir="/tmp/cmp/world", workers=1)
json.dump({"rows": payload["rows"], "curves": payload["curves"]}, open("/tmp/cmp/new.json", "w"), indent=1, sort_keys=True)
print("new done", list(payload["rows"]))
