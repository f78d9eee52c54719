"""Train and cache ShapesWorld's pretrained components: the ShapesFID feature net, the VQ tokenizer, the
`shapes_clip` reward and the SFT'd tiny Janus policy (see `shapes_world/pretrain.py`); with `--backbone llamagen`,
also a tiny LlamaGen policy SFT'd on the same codes (`shapes_world/llamagen_policy.py`).

    python examples/prepare_shapes_world.py                 # full preparation, ~26 min on 2 idle CPU cores
    python examples/prepare_shapes_world.py --tiny          # seconds; poor models, for tests and smoke runs
    python examples/prepare_shapes_world.py --backbone llamagen   # adds the LlamaGen policy, ~7-9 min more
    RANKE_SHAPES_CACHE=/data/shapes python examples/prepare_shapes_world.py --seed 1 --force
    python examples/prepare_shapes_world.py --cache_dir /data/world2 --patch_size 4 --until vq   # v2 gate, step 1

A second run reuses the cache. Recipes then say `model_name_or_path: shapes` and `reward_funcs: [shapes_clip]`.
"""

import argparse
import json
import os

from shapes_world.pretrain import BACKBONES, CACHE_ENV, STAGES, prepare_shapes_world, read_manifest, shapes_cache_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = f"${CACHE_ENV} or {shapes_cache_dir()}"
    parser.add_argument("--cache_dir", default=None, help=f"Cache folder (default: {default}).")
    parser.add_argument("--tiny", action="store_true", help="Seconds-long training of small models, for tests.")
    parser.add_argument("--seed", type=int, default=0, help="Seeds the data, initialisations and batch orders.")
    parser.add_argument("--force", action="store_true", help="Retrain everything, replacing the cache.")
    parser.add_argument("--backbone", choices=BACKBONES, default="janus",
                        help="'llamagen' also prepares the LlamaGen policy (policy_llamagen/); the rest is reused.")
    parser.add_argument("--patch_size", type=int, choices=(4, 8, 16), default=None,
                        help="Pixels per code side on the 64 px canvas: 8 (8x8 codes, the default world) or 4 "
                             "(16x16 codes, the v2 protocol's world 2). Default: the cache's, else 8.")
    parser.add_argument("--until", choices=STAGES, default=None,
                        help="Stop after this stage (e.g. 'vq' for the v2 gate's pre-RL check); rerun without it "
                             "to finish the world.")
    parser.add_argument("--second_clip", action="store_true",
                        help="Also prepare clip_second/, a CLIP on other scenes and weights (the shapes_clip_second "
                             "reward, for L_rbp apart from the evaluation's CLIP); the rest is reused.")
    args = parser.parse_args()

    root = prepare_shapes_world(cache_dir=args.cache_dir, tiny=args.tiny, seed=args.seed, force=args.force,
                                backbone=args.backbone, patch_size=args.patch_size, until=args.until,
                                second_clip=args.second_clip)
    manifest = read_manifest(root)
    print(f"ShapesWorld cache: {root}")
    for stage, record in manifest["stages"].items():
        print(f"  {stage:<9} {os.path.join(root, stage)}  ({record['wall_s']} s)")
        print("            " + json.dumps(record["quality"]))
    total = manifest.get("total_wall_s", round(sum(record["wall_s"] for record in manifest["stages"].values()), 1))
    print(f"  manifest  {os.path.join(root, 'manifest.json')}  (total {total} s)")


if __name__ == "__main__":
    main()
