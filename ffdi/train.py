"""The training loop: train_one_epoch() and validate() return metric dicts; fit() runs epochs.

Determinism: every epoch reseeds the global RNGs and the sampler/worker
generator from (seed, epoch). A run resumed at epoch k therefore sees exactly the
batches and augmentations an uninterrupted run would, with no RNG state to save.
"""

from __future__ import annotations

import copy
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ffdi.config import AugmentConfig, Params, TrainConfig
from ffdi.data import ImageDataset, build_transform, skip_collate
from ffdi.io import torch_save
from ffdi.metrics import roc_auc
from ffdi.models import build_model

# Which direction is better for each selectable metric.
MAXIMISE = {"val_auc": True, "val_acc": True, "val_loss": False}


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_loader(
    manifest: pd.DataFrame,
    aug: AugmentConfig,
    batch_size: int,
    workers: int,
    train: bool,
    generator: Optional[torch.Generator] = None,
    on_bad_image: str = "error",
) -> DataLoader:
    dataset = ImageDataset(manifest, build_transform(aug, train=train), draft_size=aug.resize, on_bad_image=on_bad_image)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=False,
        num_workers=workers,
        generator=generator,
        collate_fn=skip_collate,
        pin_memory=torch.cuda.is_available(),
    )


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    channels_last: bool = True,
    desc: str = "train",
    skipped: Optional[list] = None,
) -> dict[str, float]:
    """One pass over `loader`. Unreadable images (under on_bad_image=skip) are appended to `skipped`."""
    model.train()
    # Sums stay on the device: no host sync per step.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    with tqdm(total=len(loader.dataset), desc=desc, unit="img", mininterval=1.0, leave=False) as bar:
        for step, batch in enumerate(loader):
            bar.update(len(batch.y) + len(batch.skipped))
            _note_skipped(loader, batch, skipped)
            if batch.x is None:
                continue
            x, y = _to_device(batch.x, device, channels_last), batch.y.to(device, non_blocking=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}")
    if seen == 0:
        raise RuntimeError("the training loader yielded no usable images")
    return {"train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen}


def _note_skipped(loader: DataLoader, batch, skipped: Optional[list]) -> None:
    for i, reason in batch.skipped:
        tqdm.write(f"skipped: {reason}")
        if skipped is not None:
            skipped.append((loader.dataset.paths[i], reason))


@dataclass
class Inference:
    logits: torch.Tensor  # (N_kept, 2), on the CPU
    targets: torch.Tensor  # (N_kept,)
    index: np.ndarray  # dataset rows the logits belong to
    skipped: list  # (path, reason) of images that could not be read


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    channels_last: bool = True,
    tta_hflip: bool = False,
    desc: str = "predict",
) -> Inference:
    """Logits for every readable image of `loader`. With TTA, averaged with the mirror image's."""
    model.eval()
    out, targets, index, skipped = [], [], [], []
    with tqdm(total=len(loader.dataset), desc=desc, unit="img", mininterval=1.0, leave=False) as bar:
        for batch in loader:
            bar.update(len(batch.y) + len(batch.skipped))
            _note_skipped(loader, batch, skipped)
            if batch.x is None:
                continue
            x = _to_device(batch.x, device, channels_last)
            logits = model(x)
            if tta_hflip:
                logits = (logits + model(torch.flip(x, dims=[3]))) / 2
            out.append(logits.float().cpu())
            targets.append(batch.y)
            index.append(batch.index)
    if not out:
        raise RuntimeError(f"{desc}: no readable images")
    return Inference(torch.cat(out), torch.cat(targets), torch.cat(index).numpy(), skipped)


def fake_probability(logits: torch.Tensor) -> np.ndarray:
    return logits.softmax(1)[:, 1].numpy().astype(np.float64)


def validate(
    model: nn.Module, loader: DataLoader, device: torch.device, channels_last: bool = True, skipped: Optional[list] = None
) -> dict[str, float]:
    res = predict_logits(model, loader, device, channels_last, desc="val")
    if skipped is not None:
        skipped.extend(res.skipped)
    logits, y = res.logits, res.targets
    return {
        "val_loss": F.cross_entropy(logits, y).item(),
        "val_acc": (logits.argmax(1) == y).float().mean().item(),
        "val_auc": roc_auc(y.numpy(), fake_probability(logits)),
    }


def model_config(params: Params) -> dict:
    """What a checkpoint needs to rebuild its model and input pipeline."""
    d = params.to_dict()
    return {k: d[k] for k in ("model", "augment", "train")}


def fit(
    params: Params,
    train_manifest: pd.DataFrame,
    val_manifest: pd.DataFrame,
    state_dir: Path,
    on_epoch: Callable[[dict], None] = lambda row: None,
    on_resume: Callable[[list[dict]], None] = lambda history: None,
) -> dict:
    """Train for params.train.epochs, keeping `state_dir/last.pt` and `state_dir/best.pt` current.

    If `state_dir/last.pt` exists (a killed run with the same config), training
    resumes after its last complete epoch. Returns {'history', 'best', 'skipped'}.
    """
    cfg = params.train
    device = select_device(cfg.device)
    seed_everything(cfg.seed)
    model = build_model(params.model).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)

    history: list[dict] = []
    best: dict = {}
    skipped: list = []  # (path, reason), every epoch's
    last_path, best_path = state_dir / "last.pt", state_dir / "best.pt"
    if last_path.is_file():
        state = torch.load(last_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best = list(state["history"]), dict(state["best"])
        skipped = [tuple(s) for s in state.get("skipped", [])]
        tqdm.write(f"resuming from {last_path} after epoch {state['epoch']}")
        on_resume(history)

    generator = torch.Generator()
    policy = params.data.on_bad_image
    train_loader = make_loader(train_manifest, params.augment, cfg.batch_size, cfg.workers, True, generator, policy)
    val_loader = make_loader(val_manifest, params.augment, cfg.batch_size, cfg.workers, False, None, policy)
    key, maximise = cfg.best_metric, MAXIMISE[cfg.best_metric]

    for epoch in range(len(history), cfg.epochs):
        seed_everything(cfg.seed * 1000 + epoch)
        generator.manual_seed(cfg.seed * 1000 + epoch)
        t0 = time.perf_counter()
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        epoch_skipped: list = []
        row.update(
            train_one_epoch(model, train_loader, optimizer, device, cfg.channels_last, f"epoch {epoch}", epoch_skipped)
        )
        row.update(validate(model, val_loader, device, cfg.channels_last, epoch_skipped))
        row["skipped_images"] = len(epoch_skipped)
        skipped = sorted(set(skipped) | set(epoch_skipped))
        scheduler.step()
        row["epoch_seconds"] = time.perf_counter() - t0
        history.append(row)

        value = row[key]
        if not best or (value > best["value"] if maximise else value < best["value"]):
            best = {"metric": key, "value": value, "epoch": epoch}
            torch_save(best_path, checkpoint(model, params, epoch, row))
        torch_save(
            last_path,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "history": history,
                "best": best,
                "skipped": skipped,
                "config": model_config(params),
                # Each epoch reseeds from (seed, epoch); the state is kept for inspection.
                "rng": {"torch": torch.get_rng_state(), "seed": cfg.seed, "epoch": epoch},
            },
        )
        tqdm.write(
            f"epoch {epoch}: train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
            f"val_acc {row['val_acc']:.4f} val_auc {row['val_auc']:.4f} ({row['epoch_seconds']:.0f}s)"
        )
        on_epoch(row)
    return {"history": history, "best": best, "skipped": skipped}


def checkpoint(model: nn.Module, params: Params, epoch: int, metrics: dict) -> dict:
    return {
        "model": copy.deepcopy(model.state_dict()),
        "config": model_config(params),
        "epoch": epoch,
        "metrics": metrics,
    }


def finish(state_dir: Path, out: Path) -> None:
    """Move the best checkpoint to its output and drop the resume state."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.copyfile(state_dir / "best.pt", tmp)
    tmp.replace(out)
    shutil.rmtree(state_dir, ignore_errors=True)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint was trained as, from the config it carries."""
    from ffdi.config import AugmentConfig, ModelConfig, from_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; run the train stage first (dvc repro train)")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    # Weights come from the checkpoint itself; never re-fetch the pretrained source.
    model_cfg = dict(ckpt["config"]["model"], pretrained=False, weights=None)
    model = build_model(from_dict(ModelConfig, model_cfg, "model."))
    model.load_state_dict(ckpt["model"])
    ckpt["augment"] = from_dict(AugmentConfig, ckpt["config"]["augment"], "augment.")
    return model.to(device), ckpt
