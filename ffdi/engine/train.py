"""The training loop: train_one_epoch() and validate() return metric dicts; fit() runs the epochs.

Determinism: every epoch reseeds the global RNGs, the shuffling and each image's augmentation
from (seed, epoch). A run resumed at epoch k therefore sees exactly the batches and augmentations
an uninterrupted run would, with no RNG state to save, whatever the number of loader workers and
although they live from one epoch to the next.

Validation scores through a Detector built on the live model, with the precision and
test-time views that evaluate and predict use later, so the epoch chosen as best is chosen
on the number that `metrics.json` reports.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ffdi.config import Params, TrainConfig
from ffdi.data.dataset import make_loader, set_workers
from ffdi.data.transforms import normalize_batch
from ffdi.engine import distributed
from ffdi.engine.checkpoint_saver import CheckpointSaver, WeightAverage
from ffdi.evaluation.metrics import roc_auc
from ffdi.hardware import (
    CpuShare,
    apply_threads,
    autocast,
    autocast_dtype,
    core_share,
    device_label,
    resolve_precision,
    resolve_threads,
    resolve_workers,
    select_device,
)
from ffdi.inference.detector import Detector
from ffdi.model.networks import build_model, resolve_augment, set_tuning, train_mode


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    # Rank 0 keeps the single-process seed; other ranks get their own augmentation stream.
    return seed * 1000 + epoch + 1_000_003 * rank


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    channels_last: bool = True,
    desc: str = "train",
    skipped: list | None = None,
    amp: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    tune: str = "full",
    after_step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """One pass over `loader`. Unreadable images (under on_bad_image=skip) are appended to `skipped`.

    amp: autocast dtype (None = fp32); scaler: for fp16; tune: model.tune (a linear probe keeps
    its backbone in eval mode); after_step: called after each optimiser step (the EMA update).
    In a DDP group the metrics are summed over every process.
    """
    train_mode(_plain(model), tune)
    device = torch.device(device)
    normalize = loader.dataset.normalize
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    # Sums stay on the device: no host sync per step. The progress bar shows a copy of them that
    # the device makes without the host waiting for it (a step or more old on a GPU).
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    shown = torch.zeros((), pin_memory=device.type == "cuda")  # loss_sum as it was after shown_seen images
    shown_value, shown_seen = shown.numpy(), 0  # a view: reading it is no torch call, and no sync
    seen = 0
    with tqdm(total=len(loader.dataset), desc=desc, unit="img", mininterval=1.0, leave=False) as bar:
        for step, batch in enumerate(loader):
            bar.update(len(batch.y) + len(batch.skipped))
            for i, reason in batch.skipped:
                tqdm.write(f"skipped: {reason}")
                if skipped is not None:
                    skipped.append((loader.dataset.paths[i], reason))
            if batch.x is None:
                continue
            x = normalize_batch(batch.x.to(device, non_blocking=True), normalize, channels_last)
            y = batch.y.to(device, non_blocking=True)
            with autocast(device, amp):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if after_step is not None:
                after_step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if step % 20 == 0:
                if shown_seen:
                    bar.set_postfix(loss=f"{float(shown_value) / shown_seen:.4f}")
                shown.copy_(loss_sum, non_blocking=True)
                shown_seen = seen
    totals = torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), device=device).double()])
    loss_total, correct_total, seen = distributed.all_reduce_sum(totals).tolist()
    if seen == 0:
        raise RuntimeError("the training loader yielded no usable images")
    return {"train_loss": loss_total / seen, "train_acc": correct_total / seen}


def _plain(net: nn.Module) -> nn.Module:
    """The model inside torch.compile and DDP wrappers."""
    while True:
        inner = getattr(net, "_orig_mod", None) or (net.module if isinstance(net, DistributedDataParallel) else None)
        if inner is None:
            return net
        net = inner


def validate(detector: Detector, loader: DataLoader, skipped: list | None = None) -> dict[str, float]:
    """Val metrics of what the Detector scores; in a DDP group over every shard, each image once."""
    res = detector.score_loader(loader, desc="val")
    res.index, res.view_logp, targets = distributed.gather_rows(res.index, res.view_logp, torch.as_tensor(res.targets))
    res.targets = targets.numpy()
    if skipped is not None:
        skipped.extend(distributed.gather_set(res.skipped))
    if len(res.targets) == 0:
        raise RuntimeError("val: no readable images")
    prob = res.prob
    return {
        "val_loss": res.log_loss(),
        "val_acc": float(((prob >= 0.5) == (res.targets == 1)).mean()),
        "val_auc": roc_auc(res.targets, prob),
        "val_images": len(res.targets),
    }


def fit(
    params: Params,
    train_manifest: pd.DataFrame,
    val_manifest: pd.DataFrame,
    state_dir: Path,
    *,
    on_epoch: Callable[[dict], None] = lambda row: None,
    on_resume: Callable[[list[dict]], None] = lambda history: None,
    cpu_share: CpuShare | None = None,
) -> dict:
    """Train for params.train.epochs, keeping `state_dir/last.pt` and `state_dir/best.pt` current.

    If `state_dir/last.pt` exists (a killed run with the same config), training resumes after
    its last complete epoch (on_resume gets its history). cpu_share: re-sizes threads and loader
    workers each epoch. With train.ema, the moving average of the weights is what is validated and
    checkpointed. Returns {'history', 'best', 'skipped', 'precision', 'device', 'trainable_params'}.
    """
    cfg, runtime = params.train, params.runtime
    rank, world = distributed.rank_and_world()
    device = _training_device(runtime.device)
    precision = resolve_precision(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    params, model, trainable = _build(params, device)
    ema = WeightAverage(model, cfg.ema) if cfg.ema else None
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    saver = CheckpointSaver(
        state_dir, params, precision, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema
    )
    history, skipped = saver.resume(device)  # skipped: (path, reason), every epoch's
    on_resume(history)
    net, detector = _wrapped(model, saver.scored, params=params, device=device, precision=precision, world=world)
    share = _share(runtime, cpu_share, device)
    train_loader, val_loader = _loaders(
        params, train_manifest, val_manifest, workers=share["loader_workers"], world=world, device=device
    )
    step = {"amp": autocast_dtype(precision), "scaler": scaler, "after_step": ema, **_step_options(params)}
    if rank == 0:
        tqdm.write(_start_line(device, precision, cfg.batch_size, share))

    for epoch in range(len(history), cfg.epochs):
        # Another pipeline may have started or ended: take this epoch's share of the cores.
        share = _share(runtime, cpu_share, device)
        apply_threads(share["torch_threads"])
        train_loader = set_workers(train_loader, share["loader_workers"], persistent=True)
        val_loader = set_workers(val_loader, share["loader_workers"], persistent=True)
        seed_everything(epoch_seed(cfg.seed, epoch, rank))
        train_loader.sampler.set_epoch(epoch, epoch_seed(cfg.seed, epoch, rank))
        t0 = time.perf_counter()
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "device": str(device), "precision": precision}
        row.update(share)
        epoch_skipped: list = []
        row.update(
            train_one_epoch(net, train_loader, optimizer, device, desc=f"epoch {epoch}", skipped=epoch_skipped, **step)
        )
        # Training alone, loading included, validation not: what a bigger data set scales with.
        row["train_img_per_s"] = len(train_loader.dataset) / (time.perf_counter() - t0)
        distributed.sync_buffers(model, *([ema.module] if ema is not None else []))
        epoch_skipped = distributed.gather_set(epoch_skipped)  # each process saw its own bad training images
        row.update(validate(detector, val_loader, epoch_skipped))
        row["skipped_images"] = len(set(epoch_skipped))
        skipped = sorted(set(skipped) | set(epoch_skipped))
        scheduler.step()
        row["epoch_seconds"] = time.perf_counter() - t0
        history.append(row)
        best = saver.is_best(epoch, row)
        if rank == 0:  # every process holds the same weights and metrics; rank 0 writes them
            saver.save(epoch, row, history, skipped, best)
            tqdm.write(_epoch_line(row, device))
        on_epoch(row)
    distributed.barrier()  # rank 0's last checkpoint is on disk before any process moves on
    return {
        "history": history,
        "best": saver.best,
        "skipped": skipped,
        "precision": precision,
        "device": device,
        "trainable_params": trainable,
    }


def _training_device(setting: str) -> torch.device:
    device = select_device(setting)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # process_group or claim_gpu chose it
        torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest conv kernels once
    return device


def _build(params: Params, device: torch.device) -> tuple[Params, nn.Module, int]:
    """(params with the augment sizes resolved, the model on `device`, its trainable parameter count)."""
    seed_everything(params.train.seed)  # the initial weights
    model = build_model(params.model, params.augment.image_size).to(device)
    # Sizes and normalisation left unset come from the model; the checkpoint keeps them resolved.
    params = dataclasses.replace(params, augment=resolve_augment(params.augment, model))
    if params.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return params, model, set_tuning(model, params.model.tune)


def _wrapped(model, scored, *, params: Params, device, precision: str, world: int) -> tuple[nn.Module, Detector]:
    """The network that trains (DDP, torch.compile) and the Detector that validates `scored`. `model` stays
    the plain module: checkpoints hold its state dict, loadable in one process."""
    net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) if world > 1 else model
    if params.train.compile:
        net, scored = torch.compile(net), torch.compile(scored)
    detector = Detector(
        scored, params.augment, device, precision, params.predict.tta, channels_last=params.train.channels_last
    )
    return net, detector


def _share(runtime, cpu_share: CpuShare | None, device: torch.device) -> dict[str, int]:
    """Torch threads and loader workers for this process's share of the cores now (history columns)."""
    cores = core_share(cpu_share)
    return {
        "loader_workers": resolve_workers(runtime.workers, cores, device),
        "torch_threads": resolve_threads(runtime.threads, cores, device),
    }


def _loaders(params: Params, train_manifest, val_manifest, *, workers: int, world: int, device) -> tuple:
    """Persistent workers: no new loader processes each epoch (each epoch's seed reaches them with every
    index, ffdi.data.dataset.EpochSampler). On a GPU every training batch has one shape, so that cuDNN's
    benchmark tunes its kernels once; on a CPU the last images of an epoch still count."""
    cfg, policy, shard = params.train, params.data.on_bad_image, world > 1
    train = make_loader(
        train_manifest,
        params.augment,
        cfg.batch_size,
        workers,
        True,
        on_bad_image=policy,
        shard=shard,
        seed=cfg.seed,
        persistent=True,
        drop_last=device.type == "cuda",
    )
    # Inference keeps no activations for a backward pass: twice the batch fits where training did.
    val = make_loader(
        val_manifest,
        params.augment,
        2 * cfg.batch_size,
        workers,
        False,
        on_bad_image=policy,
        shard=shard,
        persistent=True,
    )
    return train, val


def _step_options(params: Params) -> dict:
    """train_one_epoch's options that params decide."""
    return {"channels_last": params.train.channels_last, "tune": params.model.tune}


def _start_line(device: torch.device, precision: str, batch_size: int, share: dict) -> str:
    return (
        f"training on {device_label(device)}, {precision}, batch {batch_size}, {share['loader_workers']} loader "
        f"workers, {share['torch_threads']} torch threads"
    )


def _epoch_line(row: dict, device: torch.device) -> str:
    return (
        f"epoch {row['epoch']}: train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
        f"val_acc {row['val_acc']:.4f} val_auc {row['val_auc']:.4f} ({row['epoch_seconds']:.0f}s; training "
        f"{row['train_img_per_s']:.0f} img/s on {device}, {row['loader_workers']} workers, "
        f"{row['torch_threads']} threads)"
    )
