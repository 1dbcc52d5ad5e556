"""Can ffdi's main process feed a GPU and 15 loader workers? Its CPU time per image, without a GPU.

`fit`'s training pass (ffdi.engine.train.train_one_epoch, with EMA and the optimiser of params.yaml) runs
with the model on PyTorch's `meta` device: the main process does what it does on a GPU machine
(receives the workers' batches, copies them, normalises, dispatches the model's operators, steps
the optimiser and the EMA, keeps its books and the progress bar) except the GPU's own work. A real
loader with W workers decodes multiFFDI-shaped 512 px JPEGs at 256 px.

Measured with CPU clocks, not wall time (the workers and the main process share the cores here):
  - the main process's CPU time per image (getrusage, all its threads), split by phase with the
    main thread's clock: receiving a batch, the pinning copy, normalising, the model's forward, the
    optimiser, the EMA; what remains is mostly the backward pass;
  - a loader worker's CPU time per image (/proc/<pid>/stat of each worker);
  - the ceiling the main process allows: 1e6 / (µs per image) img/s, and the same for the feeding
    alone (every phase but the model's operators).
Two caveats, printed with the table:
  - without CUDA the loader pins nothing: the pinning copy a GPU machine's pin thread makes is
    stood in for by a copy of the same bytes, timed as its own phase;
  - PyTorch implements most `meta` kernels in Python (torch/_meta_registrations.py): an elementwise
    op on meta costs tens of µs of CPU, a CUDA launch a few. The model's phases here overstate a
    GPU's; `make gpu-check` measures those on the GPU (the profiler's CPU time per step).

    python -m benchmarks.headroom [--batch 32 64] [--workers 1] [--images 1280]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

FEEDING = ("receive", "pin copy", "normalise")  # the phases that do not dispatch the model
MODEL = ("forward", "backward and the rest", "optimiser", "ema")


def _cpu_seconds_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _process_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Clock:
    """The main thread's CPU seconds by phase."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.on = False

    @contextlib.contextmanager
    def phase(self, name: str):
        t0 = time.thread_time()
        try:
            yield
        finally:
            if self.on:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.thread_time() - t0


class Fed:
    """The loader as train_one_epoch iterates it, timing each batch's receipt and a stand-in for
    the pin thread's copy into page-locked memory (the same bytes copied once)."""

    def __init__(self, loader, clock: Clock):
        self.loader, self.clock, self.dataset = loader, clock, loader.dataset
        self.pinned = None

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            with self.clock.phase("receive"):
                batch = next(it, None)
            if batch is None:
                return
            with self.clock.phase("pin copy"):
                if batch.x is not None:
                    # Into a buffer kept from batch to batch, as CUDA's caching host allocator keeps
                    # its page-locked blocks: a fresh one each batch would time page faults instead.
                    if self.pinned is None or self.pinned.shape != batch.x.shape:
                        self.pinned = torch.empty_like(batch.x)
                    batch.x = self.pinned.copy_(batch.x)
            yield batch

    def workers(self) -> list[int]:
        it = self.loader._iterator
        return [w.pid for w in it._workers] if it is not None and hasattr(it, "_workers") else []


def measure(params, manifest, batch: int, workers: int) -> dict:
    """One warm-up epoch (workers started, queues filled), then one measured epoch."""
    from timm.utils import ModelEmaV3

    import ffdi.engine.train as train
    from ffdi.data.dataset import make_loader
    from ffdi.engine.sync_audit import SyncAudit, on_meta
    from ffdi.model.networks import build_model

    meta = torch.device("meta")
    torch.manual_seed(0)
    cpu_model = build_model(params.model, params.augment.image_size)
    ema = ModelEmaV3(cpu_model, decay=params.train.ema or 0.999, use_warmup=True)  # timm needs a real device here
    ema.module.to(meta)
    model = on_meta(cpu_model).to(memory_format=torch.channels_last)
    del cpu_model
    optimizer = train.build_optimizer(model, params.train)
    clock = Clock()
    model.register_forward_pre_hook(lambda *a: clock.seconds.__setitem__("_fwd", time.thread_time()))
    model.register_forward_hook(lambda *a: _add(clock, "forward", "_fwd"))
    optimizer.register_step_pre_hook(lambda *a: clock.seconds.__setitem__("_opt", time.thread_time()))
    optimizer.register_step_post_hook(lambda *a: _add(clock, "optimiser", "_opt"))
    steps = [0]

    def after_step():
        with clock.phase("ema"):
            steps[0] += 1
            ema.update(model, step=steps[0])

    normalize = train.normalize_batch

    def timed_normalize(*a, **k):
        with clock.phase("normalise"):
            return normalize(*a, **k)

    loader = make_loader(manifest, params.augment, batch, workers, True, persistent=True, drop_last=True)
    fed = Fed(loader, clock)
    train.normalize_batch = timed_normalize
    try:
        for epoch in range(2):
            loader.sampler.set_epoch(epoch, epoch + 1)
            clock.on, clock.seconds = epoch == 1, {}
            pids = fed.workers()
            worker0 = sum(_cpu_seconds_of(p) for p in pids)
            main0, wall0 = _process_cpu(), time.perf_counter()
            # The audit answers the loop's reads of meta tensors (the progress bar's, the totals').
            with SyncAudit():
                train.train_one_epoch(model, fed, optimizer, meta, desc=f"headroom b{batch}", after_step=after_step)
            main, wall = _process_cpu() - main0, time.perf_counter() - wall0
            worker = sum(_cpu_seconds_of(p) for p in fed.workers()) - worker0
    finally:
        train.normalize_batch = normalize
        loader._iterator = None
    images = len(loader) * batch
    phases = {k: v for k, v in clock.seconds.items() if not k.startswith("_")}
    phases["backward and the rest"] = max(0.0, main - sum(phases.values()))
    us = {k: 1e6 * v / images for k, v in phases.items()}
    main_us = 1e6 * main / images
    feeding_us = sum(us.get(k, 0.0) for k in FEEDING)
    return {
        "batch": batch,
        "workers": workers,
        "images": images,
        "wall_seconds": wall,
        "main_us_per_img": main_us,
        "ceiling_img_s": 1e6 / main_us,
        "feeding_us_per_img": feeding_us,
        "feeding_ceiling_img_s": 1e6 / feeding_us,
        "worker_us_per_img": 1e6 * worker / images if workers else None,
        "phases_us_per_img": {k: us.get(k, 0.0) for k in (*FEEDING, *MODEL)},
    }


def _add(clock: Clock, name: str, start: str) -> None:
    if clock.on:
        clock.seconds[name] = clock.seconds.get(name, 0.0) + time.thread_time() - clock.seconds[start]


def table(results: list[dict]) -> str:
    heads = [f"batch {r['batch']}" for r in results]
    lines = ["| main process, CPU µs per image | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(results)]
    for phase in (*FEEDING, *MODEL):
        lines.append(f"| {phase} | " + " | ".join(f"{r['phases_us_per_img'][phase]:.1f}" for r in results) + " |")
    rows = [
        ("**feeding** (receive, pin copy, normalise)", "feeding_us_per_img", "**{:.1f}**"),
        ("**main process in all**", "main_us_per_img", "**{:.1f}**"),
        ("ceiling of the feeding alone, img/s", "feeding_ceiling_img_s", "{:,.0f}"),
        ("ceiling of the main process (model on meta), img/s", "ceiling_img_s", "{:,.0f}"),
        ("a loader worker, CPU µs per image", "worker_us_per_img", "{:.0f}"),
    ]
    for label, key, fmt in rows:
        lines.append(
            f"| {label} | " + " | ".join(fmt.format(r[key]) if r[key] is not None else "-" for r in results) + " |"
        )
    return "\n".join(lines)


def summary_lines(results: list[dict]) -> list[str]:
    out = []
    for r in results:
        model = r["main_us_per_img"] - r["feeding_us_per_img"]
        out.append(
            f"main process: {r['feeding_us_per_img']:.0f} µs per image at batch {r['batch']} -> ceiling "
            f"{r['feeding_ceiling_img_s']:,.0f} img/s (receiving, pinning, normalising; the model's operators on "
            f"meta add {model:,.0f} µs, meta's Python kernels rather than a GPU's launches)"
        )
    worker = results[-1]["worker_us_per_img"]
    if worker:
        out.append(
            f"a loader worker: {worker:.0f} µs per image -> 15 workers decode at most {15 * 1e6 / worker:,.0f} img/s"
        )
    return out


def run(data: Path, batches: list[int], workers: int, threads: int) -> list[dict]:
    from benchmarks.efficiency import CONFIGS, manifests, params_for

    torch.set_num_threads(threads)
    train_m, _ = manifests(data)
    with tempfile.TemporaryDirectory(prefix="ffdi-headroom-") as tmp:
        params = params_for(CONFIGS["model-bound"], data, threads, workers, Path(tmp))
    params = replace(params, model=replace(params.model, arch="resnet18"))
    return [measure(params, train_m, b, workers) for b in batches]


def main() -> None:
    from benchmarks.tree import distinct_images, write_tree

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--workers", type=int, default=max(1, len(os.sched_getaffinity(0)) - 1))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--images", type=int, default=1280, help="train images per epoch")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "ffdi-efficiency")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/headroom.json"))
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    data = args.cache / f"tree-{args.images}-32"
    write_tree(data, {"train": args.images, "val": 32}, distinct_images(args.cache))
    results = run(data, args.batch, args.workers, args.threads)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"command": "python -m benchmarks.headroom " + " ".join(sys.argv[1:]), "results": results}, indent=2)
        + "\n"
    )
    print(table(results))
    print("\n".join(summary_lines(results)))


if __name__ == "__main__":
    main()
