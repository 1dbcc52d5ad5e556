"""Training speed: ffdi's loop against a reference copy of the original FFDI baseline loop.

Generates multiFFDI-shaped data (512x512 JPEGs, quality 90, real photographs and self-blended
fakes from ffdi.sample.generate), then measures, for both loops, with the same model (ResNet-18), image
size (256) and batch size (40):
  - data loading alone: images/s out of the DataLoader (ffdi's are uint8), and images/s ready
    for the model (ffdi's normalised to float on the device); steady state, after the first
    batch, as in an epoch of 524k images where starting the workers does not count;
  - training steps (images/s end to end: loading, forward, backward, optimiser, metrics);
  - prediction (images/s, no gradients);
  - peak memory: peak RSS of the main process after training and after prediction
    (ru_maxrss; loader workers are forks that share its pages), peak CUDA memory on a GPU.
Each loop runs in its own process, so the peaks and the allocator state are its own.
`ffdi-fp32` is ffdi's loop with train.amp=off, to separate what bf16 autocast brings.
Prints a markdown table and writes benchmarks/results/train_speed.json.

    python -m benchmarks.train_speed [--data DIR] [--train-images 1200] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from ffdi.config import AugmentConfig, DataConfig, ModelConfig, SampleConfig, TrainConfig
from ffdi.data.dataset import make_loader
from ffdi.data.labels import prepare, read_manifest
from ffdi.data.transforms import IMAGENET_MEAN, IMAGENET_STD, norm_stats, normalize_batch
from ffdi.engine.train import build_optimizer, train_one_epoch
from ffdi.hardware import autocast_dtype, resolve_precision, select_device
from ffdi.inference.detector import Detector
from ffdi.model.networks import build_model
from ffdi.sample.generate import generate

IMPLS = ("reference", "ffdi-fp32", "ffdi")
RATIOS = ("loader_img_s", "load_img_s", "train_img_s", "predict_img_s")
# The original baseline's settings (README, "Use it on the real multiFFDI data").
AUG = AugmentConfig(resize=256, image_size=256, hflip=0.5, vflip=0.5)
TRAIN = TrainConfig(batch_size=40, lr=0.005)
WORKERS = 2  # loader processes, as the original baseline


# --- (a) the reference: the original baseline loop, as it was ----------------------------------


class ReferenceDataset(Dataset):
    """PIL open + RGB (a full 512 px decode), Resize 256, flips, ToTensor, Normalize: per image."""

    def __init__(self, manifest: pd.DataFrame, train: bool, size: int = 256):
        self.paths, self.targets = manifest.path.tolist(), manifest.target.tolist()
        flips = [T.RandomHorizontalFlip(), T.RandomVerticalFlip()] if train else []
        self.transform = T.Compose([T.Resize(size), *flips, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(Image.open(self.paths[i]).convert("RGB")), self.targets[i]


def reference_loader(manifest: pd.DataFrame, batch_size: int, workers: int, train: bool, size: int) -> DataLoader:
    return DataLoader(
        ReferenceDataset(manifest, train, size), batch_size=batch_size, shuffle=train, num_workers=workers
    )


def reference_train(model, loader, optimizer, device) -> dict:
    """fp32, NCHW, and a host sync per step (`.item()`), as the baseline's loop did."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return {"train_loss": loss_sum / seen, "train_acc": correct / seen}


@torch.no_grad()
def reference_predict(model, loader, device) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x.to(device)).cpu() for x, _ in loader])


# --- one implementation, in its own process ---------------------------------------------------


def measure(
    impl: str,
    *,
    data: Path,
    steps: int,
    warmup: int,
    workers: int,
    predict_batch: int,
    size: int = 256,
    batch_size: int = TRAIN.batch_size,
) -> dict:
    train_m = read_manifest(data / "prepared" / "train.csv")
    val_m = read_manifest(data / "prepared" / "val.csv")
    aug, cfg = replace(AUG, resize=size, image_size=size), replace(TRAIN, batch_size=batch_size)
    bs = cfg.batch_size
    device = select_device("auto")
    torch.manual_seed(0)
    model = build_model(ModelConfig()).to(device)
    ffdi = impl.startswith("ffdi")
    if ffdi:
        model = model.to(memory_format=torch.channels_last)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
    precision = resolve_precision("off" if impl == "ffdi-fp32" else cfg.amp, device)
    amp = autocast_dtype(precision) if ffdi else None
    optimizer = build_optimizer(model, cfg)

    def loader(manifest, train, batch=bs):
        if ffdi:
            loader = make_loader(manifest, aug, batch, workers, train)
            loader.sampler.set_epoch(0, 0 if train else None)
            return loader
        return reference_loader(manifest, batch, workers, train, size)

    # 1. Data loading alone: every training image, as the loader gives it and ready for the model.
    load = {}
    for ready in (False, True):
        n, t0 = 0, None
        for batch in loader(train_m, True):
            x = batch.x if ffdi else batch[0]
            if ready:
                x = normalize_batch(x.to(device), norm_stats(aug)) if ffdi else x.to(device)
                sync(device)
            if t0 is None:  # steady state: from the first batch on
                t0 = time.perf_counter()
            else:
                n += len(x)
        load[ready] = n / (time.perf_counter() - t0)

    # 2. Training: warm-up steps, then `steps` timed steps, loader workers included.
    head = train_m.iloc[: warmup * bs]
    timed = train_m.iloc[warmup * bs : (warmup + steps) * bs]
    for part in (head, timed):
        t0 = time.perf_counter()
        if ffdi:
            train_one_epoch(model, loader(part, True), optimizer, device, channels_last=True, amp=amp)
        else:
            reference_train(model, loader(part, True), optimizer, device)
        sync(device)
        train_s = time.perf_counter() - t0
    rss_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    # 3. Prediction over the val images, after one warm-up batch.
    pbatch = predict_batch if ffdi else bs
    for part in (val_m.iloc[:pbatch], val_m):
        t0 = time.perf_counter()
        if ffdi:
            Detector(model, aug, device, precision).score_loader(loader(part, False, pbatch))
        else:
            reference_predict(model, loader(part, False, pbatch), device)
        sync(device)
        predict_s = time.perf_counter() - t0

    return {
        "impl": impl,
        "device": str(device),
        "loader_img_s": load[False],
        "load_img_s": load[True],
        "train_img_s": len(timed) / train_s,
        "predict_img_s": len(val_m) / predict_s,
        "predict_batch": pbatch,
        "train_images_timed": len(timed),
        "amp": str(amp).replace("torch.", "") if amp else "fp32",
        "peak_rss_train_mib": rss_train,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --- data, orchestration, report -------------------------------------------------------------


def make_data(root: Path, n_train: int, n_val: int) -> dict:
    """multiFFDI-shaped JPEGs (512 px, quality 90) and their manifests, unless already there."""
    if not (root / "prepared" / "summary.json").is_file():
        t0 = time.perf_counter()
        generate(SampleConfig(n_train=n_train, n_val=n_val, n_test=0, size=512, jpeg_quality=90), root / "phase1")
        prepare(DataConfig(root=str(root / "phase1")), root / "prepared")
        print(f"generated {n_train + n_val} 512x512 JPEGs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    sizes = [p.stat().st_size for p in (root / "phase1" / "trainset").iterdir()]
    kib = np.array(sizes) / 1024
    return {"train_images": len(sizes), "mean_kib": float(kib.mean()), "median_kib": float(np.median(kib))}


def run_impl(impl: str, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.train_speed", "--only", impl, "--data", str(args.data)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--workers", str(args.workers)]
    cmd += ["--predict-batch", str(args.predict_batch), "--size", str(args.size), "--batch-size", str(args.batch_size)]
    return json.loads(run_child(cmd).strip().splitlines()[-1])


def run_child(cmd: list[str]) -> str:
    """The child's stdout; if it fails, exit with the end of its stderr (a bare exit status hid why)."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-30:])
        raise SystemExit(f"`{' '.join(cmd)}` exited {proc.returncode}; the end of its stderr:\n{tail}")
    return proc.stdout


def table(results: dict) -> str:
    ref, fp32, own = (results[k] for k in IMPLS)
    rows = [
        ("data loading, out of the loader, img/s", "loader_img_s", "{:.0f}"),
        ("data loading, ready for the model, img/s", "load_img_s", "{:.0f}"),
        ("training, img/s", "train_img_s", "{:.1f}"),
        (f"prediction (batch {ref['predict_batch']} / {own['predict_batch']}), img/s", "predict_img_s", "{:.1f}"),
        ("peak RSS after training, MiB", "peak_rss_train_mib", "{:.0f}"),
        ("peak RSS after prediction, MiB", "peak_rss_mib", "{:.0f}"),
    ]
    if own["peak_cuda_mib"] is not None:
        rows.append(("peak CUDA memory, MiB", "peak_cuda_mib", "{:.0f}"))
    lines = [
        f"| measure | reference | ffdi, fp32 | ffdi, {own['amp']} | ffdi fp32 / ref | ffdi / ref |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, key, fmt in rows:
        cells = " | ".join(fmt.format(r[key]) for r in (ref, fp32, own))
        lines.append(f"| {label} | {cells} | {fp32[key] / ref[key]:.2f}x | {own[key] / ref[key]:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="generate into (and keep) this folder, or reuse it")
    ap.add_argument("--train-images", type=int, default=1200)
    ap.add_argument("--val-images", type=int, default=400)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps (of --batch-size images)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--workers", type=int, default=WORKERS)
    ap.add_argument("--predict-batch", type=int, default=128, help="ffdi's (eval/predict batch_size)")
    ap.add_argument("--size", type=int, default=AUG.image_size, help="input size, px (the images stay 512 px)")
    ap.add_argument("--batch-size", type=int, default=TRAIN.batch_size)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/train_speed.json"))
    ap.add_argument("--only", choices=IMPLS, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.only:  # a child: one implementation, its result as the last line of stdout
        print(
            json.dumps(
                measure(
                    args.only,
                    data=args.data,
                    steps=args.steps,
                    warmup=args.warmup,
                    workers=args.workers,
                    predict_batch=args.predict_batch,
                    size=args.size,
                    batch_size=args.batch_size,
                )
            )
        )
        return

    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory(prefix="ffdi-speed-")
        args.data = Path(tmp.name)
    data = make_data(args.data, args.train_images, args.val_images)
    load_before = os.getloadavg()
    results = {impl: run_impl(impl, args) for impl in IMPLS}
    report = {
        "command": "python -m benchmarks.train_speed " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "settings": {
            "model": "resnet18",
            "image_size": args.size,
            "batch_size": args.batch_size,
            "workers": args.workers,
        },
        "data": data,
        "results": results,
        "ratio": {impl: {k: results[impl][k] / results["reference"][k] for k in RATIOS} for impl in IMPLS[1:]},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    device = results["ffdi"]["device"]
    print(f"{data['train_images']} train JPEGs of 512 px, mean {data['mean_kib']:.0f} KiB; device {device}")
    print(table(results))
    print(f"wrote {args.json}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
