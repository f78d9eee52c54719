import json, sys
from ranke_trl.world.pretrain import prepare_shapes_world
from ranke_trl.world.experiment import ExperimentSettings, run_experiment
import ranke_trl; assert ranke_trl.__file__.startswith("/tmp/cmp/old"), ranke_trl.__file__
world = prepare_shapes_world("/tmp/cmp/world", tiny=True, seed=0, show_progress=False)
rows = ["Base", "SFT", "Std. RL", "Decoder-only", "RankE", "RankE (black-box)", "uniform GAN"]
settings = ExperimentSettings(steps=4, eval_every=2, seeds=[0], num_eval_prompts=8, num_train_prompts=8,
                              rollouts_per_step=8, num_generations=4, rows=rows, workers=1)
payload = run_experiment(settings, "/tmp/cmp/out_old", cache_dir=world)
json.dump({"rows": payload["rows"], "curves": payload["curves"]}, open("/tmp/cmp/old.json", "w"), indent=1, sort_keys=True)
print("old done", list(payload["rows"]))
