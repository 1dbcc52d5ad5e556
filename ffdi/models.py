"""ResNet-18 and SE-ResNet-18 from timm, with pretrained weights that survive the SE blocks.

The original FFDI improvement swapped in freshly built SE blocks and lost the
pretrained weights. Here SE is added through timm's own block argument, which
keeps every conv/bn parameter name of plain resnet18, so a resnet18 state dict
loads into the SE model and only the SE layers (and a resized head) start fresh.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import SEModule
from torch import nn

from ffdi.config import ModelConfig
from ffdi.errors import ConfigError, WeightsError



def build_model(cfg: ModelConfig) -> nn.Module:
    """The network described by `cfg`, with weights from the hub or a file if asked."""
    if not timm.is_model(cfg.arch):
        close = timm.list_models(f"*{cfg.arch.split('_')[0]}*")[:5]
        raise ConfigError(f"model.arch {cfg.arch!r} is not a timm model" + (f"; e.g. {', '.join(close)}" if close else ""))
    if cfg.se and cfg.arch not in timm.list_models(module="resnet"):
        # SE is added through the ResNet blocks' own attn_layer argument; other families have no such slot.
        raise ConfigError(f"model.se: true needs a ResNet-family model.arch, got {cfg.arch!r}")
    kwargs: dict[str, Any] = {"num_classes": cfg.num_classes}
    if cfg.se:
        # rd_divisor=1 keeps the reduction exact (64 channels / 32 = 2), as in the original improvement.
        se = partial(SEModule, rd_ratio=1.0 / cfg.se_reduction, rd_divisor=1)
        kwargs["block_args"] = {"attn_layer": se}
    model = timm.create_model(cfg.arch, pretrained=False, **kwargs)
    if cfg.pretrained:
        # Hub download (needs internet). The plain architecture carries the weights;
        # they are then copied into whichever variant was built.
        hub = timm.create_model(cfg.arch, pretrained=True, num_classes=cfg.num_classes)
        load_backbone_weights(model, hub.state_dict())
    elif cfg.weights:
        load_backbone_weights(model, read_state_dict(cfg.weights))
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a .safetensors file, a state dict, or a checkpoint holding one under 'model'.

    Loading is restricted to tensors and plain containers (weights_only=True): a
    weights file from the internet must not be able to run code.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"model.weights {str(path)!r}: file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError, ...
        raise WeightsError(f"{path}: refused or unreadable as a weights-only checkpoint: {e}") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return obj


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Copy pretrained weights into `model`; only SE layers and a resized head may stay fresh.

    Returns {'missing': [...], 'skipped': [...]} for the record. Anything else that
    fails to match is an error: silently training from scratch is the bug we avoid.
    """
    own = model.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if any(not k.startswith(head_prefix(model)) for k in skipped):
        bad = [k for k in skipped if not k.startswith(head_prefix(model))]
        raise WeightsError(f"weights do not fit the model: shape mismatch for {', '.join(bad[:5])}")
    state = {k: v for k, v in state.items() if k not in skipped}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise WeightsError(f"weights have keys the model lacks: {', '.join(result.unexpected_keys[:5])}")
    fresh_ok = [k for k in result.missing_keys if ".se." in k or k.startswith(head_prefix(model))]
    not_ok = sorted(set(result.missing_keys) - set(fresh_ok))
    if not_ok:
        raise WeightsError(f"weights lack parameters of the model: {', '.join(not_ok[:5])}")
    return {"missing": list(result.missing_keys), "skipped": skipped}


def head_prefix(model: nn.Module) -> str:
    return model.default_cfg.get("classifier", "fc") + "." if hasattr(model, "default_cfg") else "fc."


def count_se_modules(model: nn.Module) -> int:
    return sum(isinstance(m, SEModule) for m in model.modules())
