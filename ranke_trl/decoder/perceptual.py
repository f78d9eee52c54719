"""The frozen LPIPS distance inside the reconstruction anchor `L_rec` (METHOD.md, Eq. 7), built offline-safely.

The `lpips` wheel ships its calibrated linear heads but fetches the VGG / AlexNet backbone from torchvision's
download server at run time. Here the backbone comes from a local file when one is given, so training machines
without internet access work.
"""

from __future__ import annotations

import os

import torch
from torch import nn

_TORCHVISION_NAMES = {"vgg": "vgg16", "alex": "alexnet"}


def _load_state_dict(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    # Some checkpoints wrap the weights, e.g. {"state_dict": {...}}.
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _load_backbone(model: nn.Module, net: str, path: str) -> None:
    """Copy torchvision `features.<i>.*` weights (an ImageNet `vgg16` / `alexnet` state dict) into LPIPS's slices."""
    state = _load_state_dict(path)
    mapped = {}
    for slice_name, block in model.net.named_children():  # slice1..slice5, each holding features[i] as child "i"
        for name in block.state_dict():
            key = f"features.{name}"
            if key not in state:
                raise ValueError(
                    f"lpips_weights_path={path!r} has no key {key!r}; it must be torchvision's ImageNet "
                    f"{_TORCHVISION_NAMES[net]} state dict (keys 'features.<i>.weight'), matching lpips_net={net!r}."
                )
            mapped[f"{slice_name}.{name}"] = state[key]
    model.net.load_state_dict(mapped, strict=True)


def build_lpips(net: str = "vgg", weights_path: str | None = None, random_backbone: bool = False) -> nn.Module:
    """A frozen `lpips.LPIPS` in eval mode: `lpips(x, y)` maps two (B, 3, H, W) batches in [-1, 1] to (B, 1, 1, 1).

    Args:
        net: 'vgg' or 'alex' (`RankEConfig.lpips_net`).
        weights_path: a local `.pth` / `.bin` / `.safetensors` file with torchvision's ImageNet weights of the backbone
            (`RankEConfig.lpips_weights_path`). None downloads them through torchvision.
        random_backbone: keep a random backbone (tests only; distances are then meaningless).
    """
    import lpips

    if net not in _TORCHVISION_NAMES:
        raise ValueError(f"lpips_net={net!r} is not one of {tuple(_TORCHVISION_NAMES)}.")
    if weights_path is not None and not os.path.isfile(weights_path):
        raise FileNotFoundError(
            f"lpips_weights_path={weights_path!r} does not exist. Point it at torchvision's ImageNet "
            f"{_TORCHVISION_NAMES[net]} weights file, or set lambda_lpips=0 to train without LPIPS."
        )
    download = weights_path is None and not random_backbone
    try:
        model = lpips.LPIPS(net=net, pnet_rand=not download, verbose=False)
    except OSError as err:  # urllib's URLError is an OSError
        raise RuntimeError(
            f"Could not download the LPIPS {net} backbone ({err}). Set lpips_weights_path to a local copy of "
            f"torchvision's ImageNet {_TORCHVISION_NAMES[net]} weights, or lambda_lpips=0 to train without LPIPS."
        ) from err
    if weights_path is not None and not random_backbone:
        _load_backbone(model, net, weights_path)
    model.eval()
    model.requires_grad_(False)
    return model
