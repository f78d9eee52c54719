"""Evaluation of text-to-image runs: FID, CLIP score, HPSv2 benchmark, GenEval export and results tables."""
