"""The training loop: train_one_epoch() and validate() return metric dicts; fit() runs epochs.

Determinism: every epoch reseeds the global RNGs and the sampler/worker
generator from (seed, epoch). A run resumed at epoch k therefore sees exactly the
batches and augmentations an uninterrupted run would, with no RNG state to save.

Under torchrun (DistributedDataParallel) each process trains on its shard of the
rows; validation gathers every shard so its metrics cover the whole val set once;
only rank 0 writes checkpoints.
"""

from __future__ import annotations

import copy
import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ffdi.config import AugmentConfig, Params, TrainConfig
from ffdi.data import ImageDataset, build_uint8_transform, normalize_batch, skip_collate
from ffdi.io import atomic_path, torch_save
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


def amp_dtype(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for train.amp, or None for fp32.

    auto: bf16 on CUDA (fp16 where the GPU lacks bf16); on CPU, bf16 only where the CPU has
    bf16 matrix units (AMX), which made ResNet-18 training at 256 px 3x faster here. Without
    them bf16 is emulated and slower, so auto stays fp32.
    """
    if mode == "off":
        return None
    if mode == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if mode == "fp16" and device.type != "cuda":
        raise RuntimeError(f"train.amp is 'fp16' but the device is {device.type}; use bf16 or off")
    return torch.bfloat16 if mode == "bf16" else torch.float16


def cpu_has_native_bf16() -> bool:
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(capabilities.get("amx_bf16"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    # Rank 0 keeps the single-process seed; other ranks get their own augmentation stream.
    return seed * 1000 + epoch + 1_000_003 * rank


def make_loader(
    manifest: pd.DataFrame,
    aug: AugmentConfig,
    batch_size: int,
    workers: int,
    train: bool,
    generator: Optional[torch.Generator] = None,
    on_bad_image: str = "error",
    shard: bool = False,
    seed: int = 0,
) -> DataLoader:
    """Batches of uint8 NHWC images; train_one_epoch/predict_logits normalise them on the device.

    shard: in a DDP group, each process reads only its 1/world of the rows (a DistributedSampler,
    shuffled from `seed` and the epoch set by `set_epoch`). Workers are not persistent: a fresh
    set per epoch is what reseeds their RNG from (seed, epoch), and starting them costs well
    under a second against an epoch of minutes.
    """
    dataset = ImageDataset(
        manifest,
        build_uint8_transform(aug, train=train),
        draft_size=aug.resize,
        on_bad_image=on_bad_image,
        normalize=aug.normalize,
    )
    sampler = DistributedSampler(dataset, shuffle=train, seed=seed, drop_last=False) if shard else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
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


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool, normalize: Optional[str]) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:  # from make_loader: normalised here, once per batch
        return normalize_batch(x, normalize, channels_last)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    channels_last: bool = True,
    desc: str = "train",
    skipped: Optional[list] = None,
    amp: Optional[torch.dtype] = None,
    scaler: Optional[torch.amp.GradScaler] = None,
) -> dict[str, float]:
    """One pass over `loader`. Unreadable images (under on_bad_image=skip) are appended to `skipped`.

    amp: autocast dtype (None = fp32); scaler: for fp16. In a DDP group the metrics are
    summed over every process.
    """
    model.train()
    device = torch.device(device)
    normalize = getattr(loader.dataset, "normalize", None)
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
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
            x = _to_device(batch.x, device, channels_last, normalize)
            y = batch.y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}")
    totals = torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), device=device).double()])
    if is_distributed():
        dist.all_reduce(totals)
    loss_total, correct_total, seen = totals.tolist()
    if seen == 0:
        raise RuntimeError("the training loader yielded no usable images")
    return {"train_loss": loss_total / seen, "train_acc": correct_total / seen}


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
    amp: Optional[torch.dtype] = None,
) -> Inference:
    """Logits for every readable image of `loader`. With TTA, averaged with the mirror image's."""
    model.eval()
    device = torch.device(device)
    normalize = getattr(loader.dataset, "normalize", None)
    out, targets, index, skipped = [], [], [], []
    with tqdm(total=len(loader.dataset), desc=desc, unit="img", mininterval=1.0, leave=False) as bar:
        for batch in loader:
            bar.update(len(batch.y) + len(batch.skipped))
            _note_skipped(loader, batch, skipped)
            if batch.x is None:
                continue
            x = _to_device(batch.x, device, channels_last, normalize)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model(x).float()
                if tta_hflip:
                    logits = (logits + model(torch.flip(x, dims=[3])).float()) / 2
            out.append(logits.float().cpu())
            targets.append(batch.y)
            index.append(batch.index)
    if not out:
        raise RuntimeError(f"{desc}: no readable images")
    return Inference(torch.cat(out), torch.cat(targets), torch.cat(index).numpy(), skipped)


def fake_probability(logits: torch.Tensor) -> np.ndarray:
    return logits.softmax(1)[:, 1].numpy().astype(np.float64)


def validate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    channels_last: bool = True,
    skipped: Optional[list] = None,
    amp: Optional[torch.dtype] = None,
) -> dict[str, float]:
    """Val metrics; in a DDP group, over every process's shard, each image counted once."""
    res = gather_inference(predict_logits(model, loader, device, channels_last, desc="val", amp=amp))
    if skipped is not None:
        skipped.extend(res.skipped)
    logits, y = res.logits, res.targets
    return {
        "val_loss": F.cross_entropy(logits, y).item(),
        "val_acc": (logits.argmax(1) == y).float().mean().item(),
        "val_auc": roc_auc(y.numpy(), fake_probability(logits)),
        "val_images": len(y),
    }


# --- DistributedDataParallel (torchrun) -------------------------------------------------------


def use_distributed(cfg: TrainConfig) -> bool:
    world = os.environ.get("WORLD_SIZE")
    if cfg.distributed == "on" and world is None:
        raise RuntimeError("train.distributed is 'on' but WORLD_SIZE is not set: launch with torchrun")
    return cfg.distributed == "on" or (cfg.distributed == "auto" and int(world or 1) > 1)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


@contextmanager
def process_group(cfg: TrainConfig):
    """Join torchrun's processes into one group for the duration; a no-op otherwise.

    gloo on CPU, nccl on CUDA with one GPU per process (LOCAL_RANK).
    """
    if not use_distributed(cfg) or is_distributed():
        yield
        return
    cuda = select_device(cfg.device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def gather_inference(res: Inference) -> Inference:
    """Every process's predictions, on every process, one row per dataset index, in index order.

    DistributedSampler pads the last shards with repeats of the first rows; those are dropped.
    """
    if not is_distributed():
        return res
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (res.logits, res.targets, res.index, res.skipped))
    index = np.concatenate([p[2] for p in parts])
    index, first = np.unique(index, return_index=True)
    logits = torch.cat([p[0] for p in parts])[first]
    targets = torch.cat([p[1] for p in parts])[first]
    skipped = sorted({tuple(s) for p in parts for s in p[3]})
    return Inference(logits, targets, index, skipped)


def sync_buffers(model: nn.Module) -> None:
    """Give every process rank 0's BatchNorm statistics, which are the ones it checkpoints.

    DDP syncs buffers before each forward, so after the last training step each process
    holds the statistics of its own last batch.
    """
    if is_distributed():
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


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
    rank, world = rank_and_world()
    device = select_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())  # process_group set it per rank
        torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest conv kernels once
    amp = amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
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
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        history, best = list(state["history"]), dict(state["best"])
        skipped = [tuple(s) for s in state.get("skipped", [])]
        tqdm.write(f"resuming from {last_path} after epoch {state['epoch']}")
        on_resume(history)

    # `model` stays the plain module: checkpoints hold its state dict, loadable in one process.
    net = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    eval_net = torch.compile(model) if cfg.compile else model

    generator = torch.Generator()
    policy = params.data.on_bad_image
    shard = world > 1
    train_loader = make_loader(
        train_manifest, params.augment, cfg.batch_size, cfg.workers, True, generator, policy, shard, cfg.seed
    )
    # Inference keeps no activations for a backward pass: twice the batch fits where training did.
    val_loader = make_loader(val_manifest, params.augment, 2 * cfg.batch_size, cfg.workers, False, None, policy, shard)
    key, maximise = cfg.best_metric, MAXIMISE[cfg.best_metric]

    for epoch in range(len(history), cfg.epochs):
        seed_everything(epoch_seed(cfg.seed, epoch, rank))
        generator.manual_seed(epoch_seed(cfg.seed, epoch, rank))
        if shard:
            train_loader.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        epoch_skipped: list = []
        row.update(
            train_one_epoch(
                net, train_loader, optimizer, device, cfg.channels_last, f"epoch {epoch}", epoch_skipped, amp, scaler
            )
        )
        sync_buffers(model)
        row.update(validate(eval_net, val_loader, device, cfg.channels_last, epoch_skipped, amp))
        if shard:  # each process saw its own unreadable training images
            parts: list = [None] * world
            dist.all_gather_object(parts, epoch_skipped)
            epoch_skipped = sorted({tuple(s) for p in parts for s in p})
        row["skipped_images"] = len(epoch_skipped)
        skipped = sorted(set(skipped) | set(epoch_skipped))
        scheduler.step()
        row["epoch_seconds"] = time.perf_counter() - t0
        history.append(row)

        value = row[key]
        improved = not best or (value > best["value"] if maximise else value < best["value"])
        if improved:
            best = {"metric": key, "value": value, "epoch": epoch}
        if rank == 0:  # every process holds the same weights and metrics; rank 0 writes them
            if improved:
                torch_save(best_path, checkpoint(model, params, epoch, row))
            state = resume_state(model, optimizer, scheduler, scaler, params, epoch, history, best, skipped)
            torch_save(last_path, state)
            tqdm.write(
                f"epoch {epoch}: train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
                f"val_acc {row['val_acc']:.4f} val_auc {row['val_auc']:.4f} ({row['epoch_seconds']:.0f}s)"
            )
        on_epoch(row)
    if world > 1:
        dist.barrier()  # rank 0's last checkpoint is on disk before any process moves on
    return {"history": history, "best": best, "skipped": skipped}


def resume_state(model, optimizer, scheduler, scaler, params: Params, epoch: int, history, best, skipped) -> dict:
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


def checkpoint(model: nn.Module, params: Params, epoch: int, metrics: dict) -> dict:
    return {
        "model": copy.deepcopy(model.state_dict()),
        "config": model_config(params),
        "epoch": epoch,
        "metrics": metrics,
    }


def finish(state_dir: Path, out: Path) -> None:
    """Move the best checkpoint to its output and drop the resume state."""
    with atomic_path(out) as tmp:
        shutil.copyfile(state_dir / "best.pt", tmp)
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
