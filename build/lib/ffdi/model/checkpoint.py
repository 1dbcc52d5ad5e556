"""Checkpoints, in one format: what a checkpoint holds, saving, loading, and the resume state.

A checkpoint alone rebuilds its model and input pipeline: it carries the model, augment
and train config that made it, and the precision training resolved to.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import torch
from torch import nn

from ffdi.config import AugmentConfig, ModelConfig, Params
from ffdi.files import atomic_path, project_root, torch_save
from ffdi.model.networks import build_model


def model_config(params: Params) -> dict:
    """What a checkpoint needs to rebuild its model and input pipeline."""
    d = params.to_dict()
    return {k: d[k] for k in ("model", "augment", "train")}


def resume_dir(params: Params, data_hash: str) -> Path:
    """Where a run keeps its per-epoch state until it completes.

    Outside DVC's outputs (DVC deletes those before a stage reruns) and anchored on the
    project root (temp executors are deleted too). Keyed by everything that shapes
    training, so only an identical rerun resumes.
    """
    key = json.dumps(
        [model_config(params), data_hash, list(params.data.holdout), params.tracking.experiment], sort_keys=True
    )
    return project_root() / ".ffdi" / "resume" / hashlib.sha256(key.encode()).hexdigest()[:16]


def snapshot(model: nn.Module, params: Params, epoch: int, metrics: dict, precision: str) -> dict:
    """The checkpoint of one epoch's weights: what models/model.pt holds."""
    return {
        "model": copy.deepcopy(model.state_dict()),
        "config": model_config(params),
        "precision": precision,
        "epoch": epoch,
        "metrics": metrics,
    }


def resume_state(model, optimizer, scheduler, scaler, params: Params, *, epoch: int, history, best, skipped) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "history": history,
        "best": best,
        "skipped": skipped,
        "config": model_config(params),
        # Each epoch reseeds from (seed, epoch); the state is kept for inspection.
        "rng": {"torch": torch.get_rng_state(), "seed": params.train.seed, "epoch": epoch},
    }


def save(path: str | Path, state: dict) -> None:
    torch_save(path, state)


def load(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """A checkpoint's dict, tensors only: a file from elsewhere must not be able to run code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; run the train stage first (dvc repro train)")
    return torch.load(path, map_location=device, weights_only=True)


def rebuild_model(ckpt: dict) -> nn.Module:
    """The network a checkpoint was trained as, with its weights."""
    # Weights come from the checkpoint itself; never re-fetch the pretrained source.
    model_cfg = dict(ckpt["config"]["model"], pretrained=False, weights=None)
    model = build_model(ModelConfig(**model_cfg), ckpt["config"]["augment"]["image_size"])
    model.load_state_dict(ckpt["model"])
    return model


def augment_config(ckpt: dict) -> AugmentConfig:
    return AugmentConfig(**ckpt["config"]["augment"])


def finish(state_dir: Path, out: Path) -> None:
    """Move the best checkpoint to its output and drop the resume state."""
    with atomic_path(out) as tmp:
        shutil.copyfile(state_dir / "best.pt", tmp)
    shutil.rmtree(state_dir, ignore_errors=True)
