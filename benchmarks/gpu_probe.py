"""Where a GPU training step's time goes: ffdi's loader alone vs the model alone.

    python -m benchmarks.gpu_probe [--out DIR]

1. the CPU the process may use (cgroup quota, cores);
2. ffdi's training loader alone (make_loader, train=True) over generated JPEGs: 512 px decoded
   for 256 px input with N workers, and 64 px with 1 worker (one job of the knob grid);
3. the model alone: training steps on batches already on the device (ResNet-18 and ConvNeXt-T at
   256 px in bf16, ResNet-18 at 64 px in fp32), after warm-up.
The slower of 2 and 3 bounds training img/s. Writes DIR/probe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F


def cpu_quota() -> str:
    for path in ("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"):
        if os.path.exists(path):
            return f"{path}: {open(path).read().strip()}"
    return "unknown"


def loader_img_s(root: Path, size: int, workers: int, batch: int) -> float:
    from ffdi.config import AugmentConfig
    from ffdi.data import make_loader

    paths = sorted(str(p) for p in (root / "trainset").glob("*.jpg"))
    manifest = pd.DataFrame({"path": paths, "target": 0, "img_name": [Path(p).name for p in paths], "group": "real"})
    loader = make_loader(manifest, AugmentConfig(resize=size, image_size=size), batch, workers, True)
    loader.sampler.set_epoch(0, 1)
    it = iter(loader)
    next(it)  # workers started
    t0, n = time.perf_counter(), 0
    for b in it:
        n += len(b.y)
    return n / (time.perf_counter() - t0)


def model_img_s(arch: str, size: int, batch: int, precision: str, steps: int = 20) -> float:
    from ffdi.config import ModelConfig
    from ffdi.models import build_model
    from ffdi.transforms import normalize_batch

    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    model = build_model(ModelConfig(arch=arch), size).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x8 = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=dev)
    y = torch.randint(0, 2, (batch,), device=dev)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step():
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(normalize_batch(x8, "imagenet")), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    from ffdi import sample
    from ffdi.config import SampleConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--work", type=Path, default=Path("/tmp/ffdi_probe"))
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--workers", type=int, default=(os.cpu_count() or 2) - 2)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    result = {"cores": cores, "quota": cpu_quota(), "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(result, flush=True)
    for size in (512, 64):
        root = args.work / f"s{size}"
        t0 = time.perf_counter()
        # n_val=1: a SampleConfig, validated like params.yaml's, needs a val image; it goes unused.
        sample.generate(SampleConfig(size=size, n_train=args.images, n_val=1, n_test=0), root, workers=cores)
        result[f"generate_{size}px_img_s"] = args.images / (time.perf_counter() - t0)
        print(f"generate {size} px: {result[f'generate_{size}px_img_s']:.0f} img/s with {cores} processes", flush=True)
    for label, root, size, workers, batch in (("loader_512to256_img_s", "s512", 256, args.workers, 64),
                                              ("loader_512to256_1worker_img_s", "s512", 256, 1, 64),
                                              ("loader_64_1worker_img_s", "s64", 64, 1, 32)):
        result[label] = loader_img_s(args.work / root, size, workers, batch)
        result[label.replace("img_s", "workers")] = workers
        print(f"{label}: {result[label]:.0f} img/s ({workers} workers)", flush=True)
    if torch.cuda.is_available():
        for arch, size, batch, precision in (("resnet18", 256, 64, "bf16"), ("convnext_tiny", 256, 64, "bf16"),
                                             ("resnet18", 64, 32, "fp32")):
            key = f"model_{arch}_{size}px_{precision}_img_s"
            result[key] = model_img_s(arch, size, batch, precision)
            print(f"{key}: {result[key]:.0f} img/s (batch {batch})", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "probe.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
