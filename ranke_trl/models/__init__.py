"""HF-native ports of backbones that transformers does not ship (each in the layout of `transformers.models.<name>`)."""
