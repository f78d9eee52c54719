"""Convert LlamaGen's original T2I checkpoints (peizesun/llamagen_t2i) to a transformers directory.

    python examples/convert_llamagen_to_hf.py --gpt_ckpt t2i_XL_stage1_256.pt --vq_ckpt vq_ds16_t2i.pt \
        --t5_id google/flan-t5-xl --image_size 256 --output_dir llamagen-t2i-xl-256 [--dtype bfloat16] \
        [--push_to_hub user/llamagen-t2i-xl-256]

The result loads with `AutoModel` / `AutoProcessor` once `ranke_trl` is imported, and trains with the RankE recipes
`recipes/llamagen_clip.yaml` and `recipes/llamagen_hps.yaml`.
"""

from ranke_trl.models.llamagen.convert_llamagen_weights_to_hf import main

if __name__ == "__main__":
    main()
