"""ResNet-18 and SE-ResNet-18 from timm, with pretrained weights that survive the SE blocks.

The original FFDI improvement swapped in freshly built SE blocks and lost the
pretrained weights. Here SE is added through timm's own block argument, which
keeps every conv/bn parameter name of plain resnet18, so a resnet18 state dict
loads into the SE model and only the SE layers (and a resized head) start fresh.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_data_config
from timm.layers import SEModule
from torch import nn

from ffdi.config import AugmentConfig, ModelConfig
from ffdi.errors import ConfigError, WeightsError


def build_model(cfg: ModelConfig, image_size: int | None = None) -> nn.Module:
    """The network described by `cfg`, with weights from the hub or a file if asked.

    image_size: the input size (augment.image_size), for the architectures built for one size
    (ViT, CoAtNet...: their pretrained config says fixed_input_size); others take any size.
    """
    if not timm.is_model(cfg.arch):
        close = timm.list_models(f"*{cfg.arch.split('_')[0]}*")[:5]
        raise ConfigError(
            f"model.arch {cfg.arch!r} is not a timm model" + (f"; e.g. {', '.join(close)}" if close else "")
        )
    if cfg.se and cfg.arch not in timm.list_models(module="resnet"):
        # SE is added through the ResNet blocks' own attn_layer argument; other families have no such slot.
        raise ConfigError(f"model.se: true needs a ResNet-family model.arch, got {cfg.arch!r}")
    kwargs: dict[str, Any] = {"num_classes": cfg.num_classes}
    pretrained_cfg = timm.models.get_pretrained_cfg(cfg.arch)
    if image_size and pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        kwargs["img_size"] = image_size  # the hub loader resamples position embeddings to it
    if cfg.se:
        # rd_divisor=1 keeps the reduction exact (64 channels / 32 = 2), as in the original improvement.
        se = partial(SEModule, rd_ratio=1.0 / cfg.se_reduction, rd_divisor=1)
        kwargs["block_args"] = {"attn_layer": se}
    model = timm.create_model(cfg.arch, pretrained=False, **kwargs)
    if cfg.input != "rgb":
        add_artefact_input(model, cfg.input.removeprefix("rgb+"))
    if cfg.pretrained:
        # Hub download (needs internet). The plain architecture carries the weights;
        # they are then copied into whichever variant was built.
        plain = {k: v for k, v in kwargs.items() if k != "block_args"}
        hub = timm.create_model(cfg.arch, pretrained=True, **plain)
        load_backbone_weights(model, hub.state_dict())
    elif cfg.weights:
        load_backbone_weights(model, read_state_dict(cfg.weights))
    return model


def resolve_augment(aug: AugmentConfig, model: nn.Module) -> AugmentConfig:
    """`aug` with what the user left unset taken from the model's pretrained config (timm's
    resolve_data_config): image_size its input size, resize the size its crop_pct implies
    (image_size / crop_pct, as timm evaluates it), normalize null/model its mean and std."""
    if aug.image_size is not None and aug.resize is not None and aug.normalize not in (None, "model"):
        return aug
    data_cfg = resolve_data_config({}, model=model)
    size = aug.image_size or int(data_cfg["input_size"][-1])
    resize = aug.resize or max(size, int(math.floor(size / data_cfg["crop_pct"])))
    changes: dict[str, Any] = {"image_size": size, "resize": resize}
    if aug.normalize in (None, "model"):
        changes.update(
            normalize="model",
            mean=tuple(float(m) for m in data_cfg["mean"]),
            std=tuple(float(s) for s in data_cfg["std"]),
        )
    # Validated again, like every config: e.g. an image_size set above the resize the model chose.
    return dataclasses.replace(aug, **changes)


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
    fresh_ok = [
        k
        for k in result.missing_keys
        if ".se." in k or k.startswith(head_prefix(model)) or k.startswith(ARTEFACTS + ".")
    ]
    not_ok = sorted(set(result.missing_keys) - set(fresh_ok))
    if not_ok:
        raise WeightsError(f"weights lack parameters of the model: {', '.join(not_ok[:5])}")
    return {"missing": list(result.missing_keys), "skipped": skipped}


# --- artefact input channels (model.input) ----------------------------------------------------

# The three SRM high-pass kernels of Fridrich & Kodovsky's rich models, as used by face-forgery
# detectors (e.g. Luo et al., CVPR 2021): 1st-order edge, 2nd-order, and the 3rd-order "KV" kernel.
SRM_KERNELS = [
    [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, -2, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]],
    [[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], [0, 0, 0, 0, 0]],
    [[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]],
]
SRM_SCALE = (2.0, 4.0, 12.0)
ARTEFACTS = "artefacts"  # the attribute, and state-dict prefix, of the input adapter


class ArtefactInput(nn.Module):
    """RGB plus three fixed residual channels -> 3 channels, through a learned 1x1 conv.

    srm: each SRM kernel over the three colour channels; npr: the image minus its 2x nearest
    down-and-up-sampled copy (NPR, CVPR 2024), the trace upsampling layers leave. The 1x1 conv
    starts as the identity on RGB and zero on the residuals, so a pretrained stem sees what it
    was trained on until training finds the residuals useful.
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "srm":
            k = torch.tensor(SRM_KERNELS, dtype=torch.float32) / torch.tensor(SRM_SCALE).view(3, 1, 1)
            self.register_buffer("kernels", k.unsqueeze(1).repeat(1, 3, 1, 1) / 3, persistent=False)
        self.mix = nn.Conv2d(6, 3, 1, bias=False)
        with torch.no_grad():
            self.mix.weight.zero_()
            self.mix.weight[:, :3, 0, 0] = torch.eye(3)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "srm":
            return F.conv2d(x, self.kernels.to(x.dtype), padding=2)
        h, w = x.shape[-2:]
        down = F.interpolate(x, scale_factor=0.5, mode="nearest")
        return x - F.interpolate(down, size=(h, w), mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.cat([x, self.residual(x)], 1))


def add_artefact_input(model: nn.Module, kind: str) -> None:
    """Put an ArtefactInput in front of `model`, as a child and a forward pre-hook.

    Not a wrapper module: the backbone keeps timm's parameter names, its classifier and its
    stages, so pretrained weights, the head and the explanation layers are found as before.
    """
    setattr(model, ARTEFACTS, ArtefactInput(kind))
    model.register_forward_pre_hook(lambda m, args: (getattr(m, ARTEFACTS)(args[0]), *args[1:]))


def is_norm(module: nn.Module) -> bool:
    """BatchNorm, LayerNorm, GroupNorm and timm's own (LayerNorm2d, BatchNormAct2d, RmsNorm...)."""
    torch_norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    return isinstance(module, torch_norms) or "norm" in type(module).__name__.lower()


def set_tuning(model: nn.Module, tune: str) -> int:
    """Freeze what model.tune leaves fixed; return the number of trainable parameters.

    Frozen parameters get requires_grad=False, so autograd records no graph through a frozen
    backbone and the backward pass stops at the first trainable layer.
    """
    if tune == "full":
        return sum(p.numel() for p in model.parameters())
    keep = {id(p) for p in model.get_classifier().parameters()}
    if tune == "norm":
        keep |= {id(p) for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)}
        # The input adapter is new, so it trains, except under a linear probe: its gradient would
        # need the backward pass through the frozen backbone that a probe exists to avoid.
        if hasattr(model, ARTEFACTS):
            keep |= {id(p) for p in getattr(model, ARTEFACTS).parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_mode(model: nn.Module, tune: str) -> None:
    """model.train(), except that a linear probe's backbone stays in eval mode: frozen features
    mean frozen BatchNorm statistics too."""
    model.train()
    if tune == "linear":
        model.eval()
        model.get_classifier().train()


def head_prefix(model: nn.Module) -> str:
    return model.default_cfg.get("classifier", "fc") + "." if hasattr(model, "default_cfg") else "fc."


def count_se_modules(model: nn.Module) -> int:
    return sum(isinstance(m, SEModule) for m in model.modules())
