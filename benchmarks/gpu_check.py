"""A five-minute check of ffdi on a lent GPU machine: the speed of each part, of fit, and what a step costs.

One process, seven steps, each cut at its own deadline so that the whole stays under five minutes on
16 cores; then DIR/gpu_check.json (flat) and a markdown table on stdout:
  1. environment: GPU, driver, torch, CUDA, cores. A GPU that torch cannot use stops the check here;
  2. tree: a multiFFDI-shaped tree of 512 px JPEGs (benchmarks.tree: hard links to generated ones);
  3. loader: ffdi's training loader alone (512 px JPEGs for 256 px input, batch 64, cores - 1 persistent
     workers). After one untimed pass, each pass is timed only once the batches its workers prefetched
     are out, so that no queue filled before the clock started counts;
  4. model: ffdi's training step alone (train_one_epoch) on batches already on the device: ResNet-18
     at 256 px, channels_last, train.amp's precision, batch 32 and 64, EMA off and on, torch.compile
     off and on;
  5. fit: ffdi.engine.train.fit end to end (params.yaml at 256 px, batch 64, 2 epochs): each epoch's training
     and validation img/s, and the efficiency as benchmarks.efficiency defines it: the training pass
     over min(loader, step at batch 64 with fit's EMA setting); the whole fit as the parts' time for
     its work (validation at step 7's img/s) over fit's time;
  6. syncs: host-device syncs per training step (torch.cuda.set_sync_debug_mode) over 2 and over 20
     steps, and a 20-step torch.profiler summary: CPU and CUDA time per step;
  7. detector: Detector.score_manifest over the val images (fit's checkpoint, batch 128, cores - 1 workers).
A step that raises leaves its error under `<step>_error`, the next step runs, and the exit code is 1.
A step still running at its deadline is cut (`<step>_cut`) and keeps what it had measured.

Without any GPU it runs a REHEARSAL: every step on the CPU, tiny (64 px JPEGs at 32 px, batch 8, one
epoch, no compile, no sync count), to check the script itself; its first line says so.

The GPU machines have Python 3.12 and torch but no pydantic (ffdi.config needs it), MLflow or DVC,
and no network. Here: `make gpu-wheels` (pydantic's wheels into .whl/, to carry with the working
tree); there:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
        PYTHONPATH=/tmp/site python3 -m benchmarks.gpu_check --out DIR

Elsewhere: `make gpu-check ARGS="--out DIR"`. Options: --work DIR (generated images, kept between
runs), --rehearsal (the CPU rehearsal even where a GPU works). Nothing here imports MLflow or DVC.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

# Progress bars from fit and the Detector would bury the step lines; tqdm reads this at import.
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("environment", "tree", "loader", "model", "fit", "syncs", "detector")
ENVIRONMENT_DEADLINE = 15
INSTALL = (
    "python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && "
    "PYTHONPATH=/tmp/site python3 -m benchmarks.gpu_check --out DIR"
)


@dataclass(frozen=True)
class Plan:
    distinct: int  # generated JPEGs the tree links to
    jpeg_px: int
    train: int  # multiples of the batch sizes: no last, partial batch with kernels of its own to pick
    val: int
    size: int  # the model's input: augment.resize = augment.image_size
    batch: int  # the loader's and fit's, and the model step's larger cell
    cells: tuple[int, ...]  # the model step's batch sizes
    epochs: int
    loader_s: float  # seconds the loader is timed
    cell_s: float  # seconds each model cell is timed
    warmup: int  # steps before each model cell is timed
    deadlines: dict  # seconds per step after the environment; with ENVIRONMENT_DEADLINE, the run's bound


# 290 s in all. The model step's share is mostly torch.compile's two compilations (one per batch size).
# The rehearsal's bounds leave room for a CPU shared with other jobs; unshared it takes a fraction.
GPU = Plan(
    distinct=400, jpeg_px=512, train=8192, val=1024, size=256, batch=64, cells=(32, 64), epochs=2,
    loader_s=15, cell_s=4, warmup=3,
    deadlines={"tree": 30, "loader": 30, "model": 125, "fit": 45, "syncs": 20, "detector": 25},
)  # fmt: skip
REHEARSAL = Plan(
    distinct=32, jpeg_px=64, train=64, val=24, size=32, batch=8, cells=(4, 8), epochs=1,
    loader_s=2, cell_s=1, warmup=1,
    deadlines={"tree": 20, "loader": 15, "model": 30, "fit": 45, "syncs": 5, "detector": 15},
)  # fmt: skip


class Cut(BaseException):
    """A step's deadline passed. A BaseException, so that no `except Exception` in ffdi swallows it."""


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise Cut in the main thread once `seconds` have passed. A signal rather than a check in a loop:
    it also ends a call that cannot time itself (a compilation, a loader's first batch). Loader workers
    are forked without the timer."""

    def alarm(signum, frame):
        raise Cut()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- 1. environment --------------------------------------------------------------------------------


def nvidia_smi(*args: str) -> list[str]:
    """nvidia-smi's output lines; none where it is missing or fails (no driver)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        return subprocess.run([smi, *args], capture_output=True, text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []


def cpu_quota() -> str | None:
    """The cgroup's CPU quota: a lent machine's 16 cores may come with a smaller share of their time."""
    for path in (Path("/sys/fs/cgroup/cpu.max"), Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")):
        with contextlib.suppress(OSError):
            return f"{path}: {path.read_text().strip()}"
    return None


def environment(force_rehearsal: bool = False) -> dict:
    """What this run computes on. SystemExit where it cannot run at all: a GPU that torch cannot use
    (a rehearsal there would spend GPU minutes on CPU figures), or no pydantic."""
    from ffdi.hardware import cuda_refusal, nvidia_gpus  # torch and the standard library only: no pydantic yet

    gpus, usable = nvidia_gpus(), torch.cuda.is_available()
    driver = next(iter(nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader")), "").strip() or None
    if gpus and not usable and not force_rehearsal:
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        built = torch.version.cuda or "none: a CPU build"
        raise SystemExit(
            f"gpu_check: this machine has an NVIDIA GPU ({'; '.join(gpus)}) but torch {torch.__version__} cannot "
            f"use it: {cuda_refusal()} (torch built for CUDA {built}"
            f"{f', CUDA_VISIBLE_DEVICES={hidden!r}' if hidden is not None else ''}, driver {driver or 'unknown'}). "
            "Fix that first; no CPU rehearsal is run on a GPU machine."
        )
    try:
        import pydantic  # noqa: F401  ffdi.config's, which every later step needs
    except ImportError:
        raise SystemExit(
            f"gpu_check: ffdi.config needs pydantic, which this Python lacks. For a GPU machine: "
            f"`make gpu-wheels` here, carry .whl, and run there: {INSTALL}"
        ) from None
    from ffdi.hardware import cpu_name

    rehearsal = force_rehearsal or not usable
    return {
        "rehearsal": rehearsal,
        "rehearsal_why": ("--rehearsal" if force_rehearsal else "no CUDA") if rehearsal else None,
        "device": "cpu" if rehearsal else "cuda",
        "gpu": None if rehearsal else torch.cuda.get_device_name(0),
        "gpus_present": len(gpus),
        "driver": driver,
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": usable,
        "cores": len(os.sched_getaffinity(0)),
        "cpu_quota": cpu_quota(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


# --- the other steps, each a method of Check writing its figures into self.r as it goes -------------


class Feed:
    """Batches already in memory, iterated as train_one_epoch iterates a loader: `steps` of them,
    or as many as start before the perf_counter() time `until`. `images` counts what it gave."""

    class Data(list):  # what train_one_epoch reads of a loader's dataset: a length, the normalisation
        paths: list = []

    def __init__(self, batches, normalize, steps: int | None = None, until: float | None = None):
        self.batches, self.steps, self.until, self.images = batches, steps, until, 0
        self.dataset = Feed.Data()
        self.dataset.normalize = normalize

    def __iter__(self):
        for k in itertools.count():
            if (k >= self.steps) if self.until is None else time.perf_counter() >= self.until:
                return
            batch = self.batches[k % len(self.batches)]
            self.images += len(batch.y)
            yield batch


class Check:
    """The steps after the environment, and what they measured (r, flat, as the JSON holds it)."""

    def __init__(self, env: dict, plan: Plan, work: Path):
        from ffdi.hardware import resolve_precision

        self.r, self.plan, self.work = dict(env), plan, work
        self.device = torch.device(env["device"])
        self.workers = max(1, env["cores"] - 1)
        self.params = self._params(None)
        self.precision = self.r["precision"] = resolve_precision(self.params.train.amp, self.device)
        self.manifests = self.checkpoint = None

    def _params(self, root):
        from ffdi.config import load_params

        p = load_params(ROOT / "params.yaml")
        return replace(
            p,
            data=replace(p.data, root=str(root or p.data.root)),
            augment=replace(p.augment, resize=self.plan.size, image_size=self.plan.size),
            train=replace(p.train, epochs=self.plan.epochs, batch_size=self.plan.batch),
            runtime=replace(p.runtime, device=self.device.type),
        )

    def _manifests(self):
        if self.manifests is None:
            raise RuntimeError("no data: the tree step did not finish")
        return self.manifests

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _model(self):
        from ffdi.engine.train import build_optimizer
        from ffdi.model.networks import build_model

        model = build_model(self.params.model, self.plan.size).to(self.device).to(memory_format=torch.channels_last)
        return model, build_optimizer(model, self.params.train)

    def _trainer(self, model, net, optimizer, ema: bool):
        """(batches, steps or until) -> images: ffdi's training epoch over them, with the EMA update
        after each step as fit makes it."""
        from ffdi.data.transforms import norm_stats
        from ffdi.engine.checkpoint_saver import WeightAverage
        from ffdi.engine.train import train_one_epoch
        from ffdi.hardware import autocast_dtype

        average = WeightAverage(model, self.params.train.ema or 0.999) if ema else None

        def epoch(batches, steps=None, until=None) -> int:
            feed = Feed(batches, norm_stats(self.params.augment), steps, until)
            train_one_epoch(
                net,
                feed,
                optimizer,
                self.device,
                channels_last=self.params.train.channels_last,
                amp=autocast_dtype(self.precision),
                after_step=average,
            )
            return feed.images

        return epoch

    def tree(self):
        from benchmarks.tree import distinct_images, write_tree
        from ffdi.config import DataConfig
        from ffdi.data.labels import prepare, read_manifest

        p = self.plan
        root = self.work / f"tree-{p.train}-{p.val}-{p.jpeg_px}px"
        write_tree(
            root, {"train": p.train, "val": p.val}, distinct_images(self.work, p.distinct, p.jpeg_px, self.r["cores"])
        )
        prepared = self.work / (root.name + "-prepared")
        prepare(DataConfig(root=str(root), test_dir=""), prepared)
        self.manifests = read_manifest(prepared / "train.csv"), read_manifest(prepared / "val.csv")
        self.params = self._params(root)
        self.r.update(
            tree_train_images=len(self.manifests[0]), tree_val_images=len(self.manifests[1]), tree_jpeg_px=p.jpeg_px
        )

    def loader(self):
        from ffdi.data.dataset import make_loader

        train_m = self._manifests()[0]
        loader = make_loader(train_m, self.params.augment, self.plan.batch, self.workers, True, persistent=True)
        skip = self.workers * (loader.prefetch_factor or 0)
        self.r.update(
            loader_train_workers=self.workers, loader_train_batch=self.plan.batch, loader_train_prefetched_batches=skip
        )
        images, seconds, passes = 0, 0.0, []
        try:
            loader.sampler.set_epoch(0, 1)
            for _ in loader:  # workers started, files in the page cache
                pass
            end = time.perf_counter() + self.plan.loader_s
            for epoch in itertools.count(1):
                loader.sampler.set_epoch(epoch, epoch + 1)
                start = mark = last = time.perf_counter()
                for k, batch in enumerate(loader):
                    last = time.perf_counter()
                    if k < skip:  # made while the clock was not running: counted, they would overstate
                        mark = last
                        continue
                    images += len(batch.y)
                    if last >= end:
                        break
                else:
                    passes.append(len(train_m) / (last - start))
                seconds += last - mark
                if last >= end:
                    break
        finally:
            del loader
            gc.collect()  # the persistent workers end with their iterator
        if not images:
            raise RuntimeError(
                f"loader: a pass of {len(train_m)} images is no longer than the {skip} batches "
                "its workers prefetch, so nothing was timed: the tree needs more images"
            )
        self.r["loader_train_img_s"] = images / seconds
        if passes:  # each pass from its start, workers idle: what fit's epochs see at this data size
            self.r["loader_train_pass_img_s"] = sum(passes) / len(passes)

    def model(self):
        from ffdi.data.dataset import Batch

        s, cuda = self.plan.size, self.device.type == "cuda"
        torch.backends.cudnn.benchmark = True  # as fit sets it
        self.r["model_arch"] = self.params.model.arch
        if not cuda:
            self.r["model_compile"] = "skipped: torch.compile only on CUDA (CPU rehearsal)"
        torch.manual_seed(0)
        big = max(self.plan.cells)
        x = torch.randint(0, 256, (4, big, s, s, 3), dtype=torch.uint8, device=self.device)
        y = torch.randint(0, 2, (4, big), device=self.device)
        order = [(False, bs) for bs in self.plan.cells]
        if cuda:  # the larger batch first: fit's efficiency is measured against it
            order += [(True, bs) for bs in sorted(self.plan.cells, reverse=True)]
        for compiled, bs in order:
            batches = [Batch(x[k, :bs], y[k, :bs], torch.arange(bs), []) for k in range(len(x))]
            model, optimizer = self._model()
            net = torch.compile(model, dynamic=False) if compiled else model  # one compilation per size
            for ema in (False, True):
                epoch = self._trainer(model, net, optimizer, ema)
                try:
                    epoch(batches, steps=self.plan.warmup)
                except Exception as e:
                    if not compiled:
                        raise
                    # It fails alike at every size (no C compiler, no Triton): said once, the step goes on.
                    self.r["model_compile_error"] = f"{type(e).__name__}: {e}"[:2000]
                    return
                self._sync()
                t0 = time.perf_counter()
                images = epoch(batches, until=t0 + self.plan.cell_s)
                self._sync()
                key = f"model_b{bs}_ema_{'on' if ema else 'off'}_compile_{'on' if compiled else 'off'}_img_s"
                self.r[key] = images / (time.perf_counter() - t0)

    def fit(self):
        from ffdi.engine.train import fit

        train_m, val_m = self._manifests()
        state = self.work / "fit-state"
        shutil.rmtree(state, ignore_errors=True)  # a last.pt left there would make fit resume, not train
        rows = []
        t0 = time.perf_counter()
        try:
            result = fit(self.params, train_m, val_m, state, on_epoch=rows.append)
            self.r.update(fit_run_seconds=time.perf_counter() - t0, fit_precision=result["precision"])
        finally:  # a cut in the second epoch keeps the first
            self.checkpoint = state / "best.pt"
            for key in ("loader_workers", "torch_threads"):  # fit's own choice (step 3 uses cores - 1)
                if rows and key in rows[0]:
                    self.r[f"fit_{key}"] = rows[0][key]
            for k, row in enumerate(rows, 1):
                train_s = len(train_m) / row["train_img_per_s"]
                self.r[f"fit_epoch{k}_train_img_s"] = row["train_img_per_s"]
                # epoch_seconds is training then validation (and the scheduler's step), no checkpoints.
                self.r[f"fit_epoch{k}_val_img_s"] = len(val_m) / (row["epoch_seconds"] - train_s)
                self.r[f"fit_epoch{k}_val_auc"] = row["val_auc"]

    def syncs(self):
        if self.device.type != "cuda":
            self.r["syncs"] = "not available on CPU"
            return
        from torch.profiler import ProfilerActivity, profile

        from ffdi.data.dataset import Batch

        bs, s = self.plan.batch, self.plan.size
        model, optimizer = self._model()
        epoch = self._trainer(model, model, optimizer, ema=self.params.train.ema is not None)
        # In pinned host memory, as the loader hands them over: copying them to the device is no sync.
        batches = [
            Batch(
                torch.randint(0, 256, (bs, s, s, 3), dtype=torch.uint8),
                torch.randint(0, 2, (bs,)),
                torch.arange(bs),
                [],
            ).pin_memory()
            for _ in range(4)
        ]
        epoch(batches, steps=self.plan.warmup)
        self._sync()
        count = {}
        for steps in (2, 20):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # every sync, not only the first from each line of code
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    epoch(batches, steps=steps)
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            found = [w for w in caught if "synchroniz" in str(w.message).lower()]
            count[steps] = len(found)
            where = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in found)
            self.r[f"syncs_per_step_{steps}_steps"] = len(found) / steps
            self.r[f"syncs_where_{steps}_steps"] = ", ".join(f"{k} x{n}" for k, n in where.most_common(4))
        # The epoch's own (its totals read back at the end) cancel out: what each further step adds.
        self.r["syncs_per_extra_step"] = (count[20] - count[2]) / 18
        self._sync()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            epoch(batches, steps=20)
            self._sync()
            wall = time.perf_counter() - t0
        events = prof.key_averages()
        cuda_us = sum(e.self_device_time_total for e in events)  # kernels and copies; CPU ops add 0
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:3]
        self.r.update(
            profile_wall_ms_per_step=wall * 1e3 / 20,
            profile_cpu_ms_per_step=sum(e.self_cpu_time_total for e in events) / 1e3 / 20,
            profile_cuda_ms_per_step=cuda_us / 1e3 / 20,
            profile_top_cpu_ops=", ".join(f"{e.key} {e.self_cpu_time_total / 20e3:.2f} ms" for e in top),
        )

    def detector(self):
        from ffdi.inference.detector import Detector

        val_m, tta = self._manifests()[1], self.params.predict.tta
        if self.checkpoint is not None and self.checkpoint.is_file():
            det = Detector.load(self.checkpoint, self.device.type, tta=tta)
            self.r["detector_model"] = "fit's best.pt"
        else:
            det = Detector(self._model()[0], self.params.augment, self.device, self.precision, tta)
            self.r["detector_model"] = "fresh (fit left no checkpoint)"
        det.score_manifest(val_m.iloc[:8], batch_size=128, workers=self.workers)  # kernels picked, untimed
        t0 = time.perf_counter()
        scores = det.score_manifest(val_m, batch_size=128, workers=self.workers)
        # Its workers' start is inside the time, as in every call of score_manifest.
        self.r.update(
            detector_img_s=len(scores.targets) / (time.perf_counter() - t0),
            detector_workers=self.workers,
            detector_views=len(det.views),
        )

    def run_step(self, name: str) -> None:
        """One step under its deadline; its error, or its cut, recorded rather than raised."""
        limit = self.r[f"{name}_deadline_s"] = self.plan.deadlines[name]
        t0 = time.perf_counter()
        try:
            with deadline(limit):
                getattr(self, name)()
        except Cut:
            self.r[f"{name}_cut"] = True
        except Exception as e:
            self.r[f"{name}_error"] = f"{type(e).__name__}: {e}"[:2000]
            traceback.print_exc()
        seconds = self.r[f"{name}_seconds"] = time.perf_counter() - t0
        outcome = "cut at its deadline" if f"{name}_cut" in self.r else "error" if f"{name}_error" in self.r else "done"
        print(f"gpu_check: {name}: {outcome} in {seconds:.1f} s (deadline {limit} s)", file=sys.stderr, flush=True)


def efficiency(r: dict, epochs: int, batch: int) -> None:
    """fit against its slower part, as benchmarks.efficiency defines it (into r)."""
    ema = "off" if r["fit_ema"] is None else "on"
    step, loader = r.get(f"model_b{batch}_ema_{ema}_compile_off_img_s"), r.get("loader_train_img_s")
    if step is None or loader is None:
        return
    bound = min(step, loader)
    r["fit_slower_part"] = "loader" if loader < step else f"model (batch {batch}, EMA {ema}, no compile)"
    for k in range(1, epochs + 1):
        if f"fit_epoch{k}_train_img_s" in r:
            r[f"fit_epoch{k}_train_efficiency"] = r[f"fit_epoch{k}_train_img_s"] / bound
    if "fit_run_seconds" in r and "detector_img_s" in r:
        need = epochs * (r["tree_train_images"] / bound + r["tree_val_images"] / r["detector_img_s"])
        r["fit_efficiency"] = need / r["fit_run_seconds"]


HEADER = {
    "rehearsal",
    "rehearsal_why",
    "device",
    "gpu",
    "gpus_present",
    "driver",
    "cpu",
    "torch",
    "cuda",
    "cuda_available",
    "cores",
    "cpu_quota",
    "python",
    "date",
    "precision",
    "fit_ema",
    "total_seconds",
}


def header(r: dict) -> str:
    where = r["cpu"] if r["rehearsal"] else f"{r['gpu']} (driver {r['driver']})"
    line = (
        f"{where}, {r['precision']}, {r['cores']} cores, torch {r['torch']} (CUDA {r['cuda']}), "
        f"python {r['python']}, {r['date']}"
    )
    if r["rehearsal"]:
        return f"REHEARSAL on CPU: {r['rehearsal_why']}; figures are not GPU figures. {line}"
    return f"gpu_check: {line}"


def table(r: dict) -> str:
    """One row per figure, by step; each step's time against its deadline last."""
    lines = ["| step | figure | value |", "|---|---|---:|"]
    for step in STEPS:
        mine = (step + "_", "profile_") if step == "syncs" else (step + "_",)
        timing = (f"{step}_seconds", f"{step}_deadline_s")
        for k, v in r.items():
            if (k == step or k.startswith(mine)) and k not in HEADER and k not in timing:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    text = str(v).replace("|", "/").replace("\n", " ")[:200]
                else:
                    text = f"{v:,.0f}" if k.endswith("img_s") else f"{v:.2f}" if isinstance(v, float) else str(v)
                lines.append(f"| {step} | {k} | {text} |")
        if timing[0] in r:
            lines.append(f"| {step} | seconds (deadline) | {r[timing[0]]:.1f} ({r[timing[1]]}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="writes DIR/gpu_check.json")
    ap.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "ffdi-gpu-check",
        help="generated images, the tree and fit's checkpoints (kept between runs)",
    )
    ap.add_argument("--rehearsal", action="store_true", help="the tiny CPU rehearsal even where a GPU works")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    try:  # nothing else can run without it: it stops the check rather than recording an error
        with deadline(ENVIRONMENT_DEADLINE):
            env = environment(args.rehearsal)
            plan = REHEARSAL if env["rehearsal"] else GPU
            args.work.mkdir(parents=True, exist_ok=True)
            check = Check(env, plan, args.work)
    except Cut:
        raise SystemExit(
            f"gpu_check: the environment step took over {ENVIRONMENT_DEADLINE} s (nvidia-smi or CUDA's start hanging?)"
        ) from None
    r = check.r
    r.update(
        fit_ema=check.params.train.ema,
        environment_deadline_s=ENVIRONMENT_DEADLINE,
        environment_seconds=time.perf_counter() - started,
    )
    print(header(r), flush=True)
    for name in STEPS[1:]:
        check.run_step(name)
    efficiency(r, plan.epochs, plan.batch)
    r["total_seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(r, indent=1) + "\n")
    print(f"\n{header(r)}\n{table(r)}\ntotal {r['total_seconds']:.0f} s; wrote {args.out / 'gpu_check.json'}")
    errors = [k for k in r if k.endswith("_error")]
    if errors:
        print(f"gpu_check: errors in {', '.join(errors)} (the JSON has their text; tracebacks above)", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
