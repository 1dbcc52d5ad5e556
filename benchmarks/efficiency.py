"""Does ffdi's training loop run at the speed of its slowest part? Measured without a GPU.

On multiFFDI-shaped data (512 px JPEGs: hard links to a few hundred generated ones), per configuration:
  - loader: ffdi's training loader (then validation's) with W persistent workers, img/s out of it;
  - model: ffdi's training step (then validation's scoring, with its test-time views) with T threads,
    on uint8 batches already in memory (more than the CPU caches hold, as fresh batches are);
    the loader and the model are timed at the same time, side by side, each on its own cores;
  - fit: ffdi.engine.train.fit with the same W and T, as the train stage runs it: every epoch with
    validation, checkpoints, MLflow logging (a temporary SQLite store) and progress bars;
  - efficiency: the time the parts need for fit's work over fit's time, where the parts need, per
    epoch, train images / min(train loader, training step) + val images / min(val loader, scoring).
    1.0: fit runs at the speed of its slowest part, validation included. The training pass
    efficiency is fit's training img/s over min(train loader, training step).
The main process's T threads are pinned to the first T cores and the W workers to the next W, so the
parts run side by side as on a GPU machine (loader on CPU cores, model on the device). Two configurations:
  - model-bound: ResNet-18 at 256 px (as on multiFFDI), slower here than one loader worker;
  - loader-bound: a model that is fast at 256 px (every 8th pixel, one small conv, a linear head), as
    ResNet-18 is on a GPU, so the loader is the wall.
This machine's speed drifts by up to 20% within minutes, so each configuration runs in rounds of
(parts, fit), and the table gives medians. Prints a markdown table; writes the JSON.

    python -m benchmarks.efficiency [--only loader-bound] [--rounds N] [--json benchmarks/results/efficiency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from timm.models import register_model
from torch import nn

from benchmarks.tree import distinct_images, write_tree

# name -> the params that differ from params.yaml's, the least data, how long each part is timed, and
# how long fit should last. fit's data is sized from the first round's parts to last `fit_seconds` at
# their speed, whatever the machine: the same images took 17.6 s in bf16 on an AMX CPU and 90 s in
# fp32 on an AMD one, and in 17.6 s an epoch's fixed costs (starting the loaders, checkpoints, MLflow)
# and a round's noise weighed enough to move the efficiency by 0.2.
CONFIGS = {
    "model-bound": {
        "arch": "resnet18",
        "train": 128,
        "val": 32,
        "epochs": 2,
        "rounds": 2,
        "seconds": {"train": 40, "val": 20},
        "fit_seconds": 80,
    },
    "loader-bound": {
        "arch": "ffdi_patch_probe",
        "train": 4000,
        "val": 1000,
        "epochs": 2,
        "rounds": 3,
        "seconds": {"train": 12, "val": 8},
        "fit_seconds": 50,
    },
}
SIZE = 256  # multiFFDI's 512 px images at the baseline's input size
IN_MEMORY_BYTES = 256 * 2**20  # the model part's batches: well beyond the CPU's caches


class PatchProbe(nn.Module):
    """A model fast at 256 px on one core: every 8th pixel, a strided 3x3 conv, mean, linear."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2)
        self.fc = nn.Linear(16, num_classes)
        self.default_cfg = {"classifier": "fc"}

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.stem(x[:, :, ::8, ::8])).mean((2, 3)))


@register_model
def ffdi_patch_probe(pretrained: bool = False, **kwargs) -> nn.Module:
    """PatchProbe as a timm model, so that fit builds it by name (model.arch) like any other."""
    return PatchProbe(kwargs.get("num_classes", 2))


# --- pinning ---------------------------------------------------------------------------------


def cores(threads: int, workers: int) -> tuple[set[int], set[int]]:
    avail = sorted(os.sched_getaffinity(0))
    if threads + workers > len(avail):
        raise SystemExit(
            f"{threads} threads + {workers} workers need {threads + workers} cores; this process may use {len(avail)}"
        )
    return set(avail[:threads]), set(avail[threads : threads + workers])


def pin_workers(loader, worker_cores: set[int]):
    """Each loader worker on the worker cores (set in the worker, after the fork)."""
    loader.worker_init_fn = lambda _: os.sched_setaffinity(0, worker_cores)
    return loader


# --- the parts and fit, each in its own process ----------------------------------------------


def params_for(cfg: dict, data: Path, threads: int, workers: int, state: Path):
    from ffdi.config import load_params

    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    return replace(
        p,
        data=replace(p.data, root=str(data)),
        augment=replace(p.augment, resize=SIZE, image_size=SIZE),
        model=replace(p.model, arch=cfg["arch"]),
        train=replace(p.train, epochs=cfg["epochs"]),
        runtime=replace(p.runtime, workers=workers, threads=threads),
        tracking=replace(p.tracking, uri=f"sqlite:///{state / 'mlflow.db'}", experiment="efficiency"),
    )


def manifests(data: Path):
    from ffdi.data.labels import prepare, read_manifest

    prepared = data.parent / (data.name + "-prepared")
    if not (prepared / "summary.json").is_file():
        from ffdi.config import DataConfig

        prepare(DataConfig(root=str(data), test_dir=""), prepared)
    return read_manifest(prepared / "train.csv"), read_manifest(prepared / "val.csv")


def wait_for_go() -> None:
    """Tell the parent this part is ready, and start when it says so (both parts at once)."""
    print("ready", flush=True)
    sys.stdin.readline()


def part_loader(params, phase: str, manifest, worker_cores, seconds: float) -> dict:
    """img/s out of the training (or validation) loader for `seconds`, from its first batch on,
    epoch after epoch through the same persistent workers, as fit uses them."""
    from ffdi.data.dataset import make_loader

    train = phase == "train"
    batch_size = params.train.batch_size * (1 if train else 2)
    loader = pin_workers(
        make_loader(manifest, params.augment, batch_size, params.runtime.workers, train, persistent=True), worker_cores
    )
    wait_for_go()
    n, first, last, epoch = 0, None, None, 0
    while last is None or last - first < seconds:
        loader.sampler.set_epoch(epoch, epoch + 1 if train else None)
        for batch in loader:
            last = time.perf_counter()
            if first is None:
                first = last
            else:
                n += len(batch.y)
            if last - first >= seconds:
                break
        epoch += 1
    return {f"loader_{phase}_img_s": n / (last - first)}


class InMemory:
    """Batches already decoded, iterated as the training loop iterates a loader: `repeat` times
    over, or until the perf_counter() deadline `until`. `images` counts what it gave."""

    def __init__(self, batches, dataset, repeat: int = 1, until: float | None = None):
        self.batches, self.dataset, self.repeat, self.until = batches, dataset, repeat, until
        self.images = 0

    def __iter__(self):
        k = 0
        while (k < self.repeat * len(self.batches)) if self.until is None else time.perf_counter() < self.until:
            batch = self.batches[k % len(self.batches)]
            self.images += len(batch.y)
            k += 1
            yield batch


def part_model(params, phase: str, manifest, seconds: float) -> dict:
    """ffdi's training step (or validation's scoring, with its test-time views) for `seconds` on
    uint8 batches already in memory (256 MiB of them, out of the caches), after one warm-up step."""
    from ffdi.data.dataset import make_loader
    from ffdi.engine.train import build_optimizer, train_one_epoch
    from ffdi.hardware import autocast_dtype, resolve_precision, select_device
    from ffdi.inference.detector import Detector
    from ffdi.model.networks import build_model

    device = select_device(params.runtime.device)
    precision = resolve_precision(params.train.amp, device)
    torch.manual_seed(0)
    model = build_model(params.model, SIZE).to(device).to(memory_format=torch.channels_last)
    train = phase == "train"
    bs = params.train.batch_size * (1 if train else 2)
    # More batches than the caches hold: in fit each batch arrives fresh from memory.
    n = -(-IN_MEMORY_BYTES // (bs * SIZE * SIZE * 3))
    loader = make_loader(manifest.iloc[: n * bs], params.augment, bs, 0, train)
    loader.sampler.set_epoch(0, 1 if train else None)
    batches = list(loader)
    if train:
        optimizer = build_optimizer(model, params.train)
        amp = autocast_dtype(precision)
        train_one_epoch(model, InMemory(batches[:1], loader.dataset), optimizer, device, amp=amp)
        wait_for_go()
        t0 = time.perf_counter()
        feed = InMemory(batches, loader.dataset, until=t0 + seconds)
        train_one_epoch(model, feed, optimizer, device, amp=amp)
        n = feed.images
    else:
        detector = Detector(model, params.augment, device, precision, params.predict.tta)
        detector.view_log_probs(batches[0].x)
        wait_for_go()
        t0, n = time.perf_counter(), 0
        for batch in InMemory(batches, loader.dataset, until=t0 + seconds):
            detector.view_log_probs(batch.x)
            n += len(batch.y)
    return {f"model_{phase}_img_s": n / (time.perf_counter() - t0), "precision": precision}


def part_fit(params, train_m, val_m, worker_cores, state: Path) -> dict:
    """ffdi.engine.train.fit as the train stage calls it, each epoch logged to MLflow as it ends (where
    MLflow is installed: the lent GPU machines have none)."""
    import contextlib
    import importlib.util

    import ffdi.engine.train
    from ffdi.tracking import mlflow_run

    make_loader = ffdi.engine.train.make_loader
    ffdi.engine.train.make_loader = lambda *a, **k: pin_workers(make_loader(*a, **k), worker_cores)
    logged = importlib.util.find_spec("mlflow") is not None
    with mlflow_run.run(params.tracking, run_name="efficiency") if logged else contextlib.nullcontext() as run:
        steps = mlflow_run.logged_steps(run.info.run_id) if logged else set()
        t0 = time.perf_counter()
        result = ffdi.engine.train.fit(
            params,
            train_m,
            val_m,
            state / "ckpt",
            on_epoch=lambda row: mlflow_run.log_epoch(row, steps) if logged else None,
        )
        seconds = time.perf_counter() - t0
    history = result["history"]
    return {
        "fit_seconds": seconds,
        "epoch_seconds": [h["epoch_seconds"] for h in history],
        "fit_train_img_s": [h["train_img_per_s"] for h in history],
        "mlflow_logging": logged,
        "val_auc": [h["val_auc"] for h in history],
        "precision": result["precision"],
    }


def child(args) -> dict:
    cfg = CONFIGS[args.config]
    main_cores, worker_cores = cores(args.threads, args.workers)
    os.sched_setaffinity(0, main_cores)
    torch.set_num_threads(args.threads)
    train_m, val_m = manifests(args.data)
    manifest = train_m if args.phase == "train" else val_m
    with tempfile.TemporaryDirectory(prefix="ffdi-eff-") as tmp:
        params = params_for(cfg, args.data, args.threads, args.workers, Path(tmp))
        if args.part == "loader":
            return part_loader(params, args.phase, manifest, worker_cores, cfg["seconds"][args.phase])
        if args.part == "model":
            return part_model(params, args.phase, manifest, cfg["seconds"][args.phase])
        return part_fit(params, train_m, val_m, worker_cores, Path(tmp))


# --- orchestration ---------------------------------------------------------------------------


def start_part(part: str, config: str, *, data: Path, args, log, phase: str = "") -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.efficiency",
        "--part",
        part,
        "--config",
        config,
        "--data",
        str(data),
        "--threads",
        str(args.threads),
        "--workers",
        str(args.workers),
    ] + (["--phase", phase] if phase else [])
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)


def result_of(proc: subprocess.Popen, log) -> dict:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        log.flush()
        tail = Path(log.name).read_text().splitlines()[-30:]
        raise SystemExit(
            f"{' '.join(proc.args)} exited {proc.returncode}; the end of its stderr ({log.name}):\n" + "\n".join(tail)
        )
    return json.loads(out.strip().splitlines()[-1])


def parts_side_by_side(config: str, data: Path, args, log, phase: str) -> dict:
    """The loader alone and the model alone at the same time, each on its own cores."""
    procs = [start_part(part, config, data=data, args=args, log=log, phase=phase) for part in ("loader", "model")]
    for p in procs:
        while (line := p.stdout.readline()) and line.strip() != "ready":
            pass
        if not line:
            return result_of(p, log)  # it ended before it was ready: raises with its stderr
    for p in procs:  # both at once
        p.stdin.write("go\n")
        p.stdin.flush()
    out = {}
    for p in procs:
        out.update(result_of(p, log))
    return out


def sized(cfg: dict, parts: dict) -> dict:
    """cfg with train and val images for fit to last about cfg['fit_seconds'] at the parts' speed (val
    kept in proportion; whole batches; never below cfg's own sizes)."""
    train_bound = min(parts["loader_train_img_s"], parts["model_train_img_s"])
    val_bound = min(parts["loader_val_img_s"], parts["model_val_img_s"])
    ratio = cfg["val"] / cfg["train"]
    train = cfg["fit_seconds"] / cfg["epochs"] / (1 / train_bound + ratio / val_bound)
    batch = 32
    train = max(cfg["train"], int(train // batch) * batch)
    return {**cfg, "train": train, "val": max(cfg["val"], int(train * ratio // batch) * batch)}


def summarise(cfg: dict, r: dict) -> dict:
    """One round's bound and efficiency from its parts and its fit."""
    train_bound = min(r["loader_train_img_s"], r["model_train_img_s"])
    val_bound = min(r["loader_val_img_s"], r["model_val_img_s"])
    bound_s = cfg["epochs"] * (cfg["train"] / train_bound + cfg["val"] / val_bound)
    return {
        "slower_part": "loader" if r["loader_train_img_s"] < r["model_train_img_s"] else "model",
        "bound_seconds": bound_s,
        "fit_train_pass_img_s": statistics.mean(r["fit_train_img_s"]),
        "fit_img_s": cfg["epochs"] * cfg["train"] / r["fit_seconds"],
        "efficiency": bound_s / r["fit_seconds"],
        "train_pass_efficiency": statistics.mean(r["fit_train_img_s"]) / train_bound,
    }


def median_of(rounds: list[dict]) -> dict:
    """The median of every number over the rounds (this machine's speed drifts by 20% within minutes)."""
    return {k: statistics.median(r[k] for r in rounds) for k, v in rounds[0].items() if isinstance(v, (int, float))}


ROWS = [
    ("loader alone, train, img/s", "loader_train_img_s", "{:.0f}"),
    ("training step alone, img/s", "model_train_img_s", "{:.1f}"),
    ("loader alone, val, img/s", "loader_val_img_s", "{:.0f}"),
    ("scoring alone (validation, with TTA), img/s", "model_val_img_s", "{:.1f}"),
    ("fit, training pass, img/s", "fit_train_pass_img_s", "{:.1f}"),
    ("fit, whole run (validation included), train img/s", "fit_img_s", "{:.1f}"),
    ("fit, seconds", "fit_seconds", "{:.1f}"),
    ("the parts' bound for fit's work, seconds", "bound_seconds", "{:.1f}"),
    ("**efficiency** (bound / fit), median", "efficiency", "**{:.2f}**"),
    ("efficiency, each round", "rounds", "{}"),
    ("training pass efficiency", "train_pass_efficiency", "{:.2f}"),
]


def table(report: dict) -> str:
    names = list(report["configs"])
    lines = ["| measure (median over rounds) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, key, fmt in ROWS:
        cells = []
        for n in names:
            c = report["configs"][n]
            value = " ".join(f"{r['efficiency']:.2f}" for r in c["rounds"]) if key == "rounds" else c["median"][key]
            cells.append(fmt.format(value))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=list(CONFIGS), action="append")
    ap.add_argument("--rounds", type=int, help="rounds of (parts, fit) per configuration (default: its own)")
    ap.add_argument(
        "--fixed-size",
        action="store_true",
        help="fit on each configuration's least data instead of sizing it to last fit_seconds",
    )
    ap.add_argument("--no-headroom", action="store_true", help="leave out the main process's headroom")
    ap.add_argument("--threads", type=int, default=1, help="the model's torch threads (T)")
    ap.add_argument("--workers", type=int, default=1, help="loader workers (W)")
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "ffdi-efficiency",
        help="generated images and trees, kept between runs",
    )
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/efficiency.json"))
    ap.add_argument("--part", choices=("loader", "model", "fit"), help=argparse.SUPPRESS)
    ap.add_argument("--config", choices=list(CONFIGS), help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--phase", choices=("train", "val"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:  # a child: one part, its result as the last line of stdout
        print(json.dumps(child(args)))
        return

    cores(args.threads, args.workers)  # fail early when there are too few
    distinct = distinct_images(args.cache)
    report = {
        "command": "python -m benchmarks.efficiency " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "threads": args.threads,
        "workers": args.workers,
        "image_size": SIZE,
        "configs": {},
    }
    args.cache.mkdir(parents=True, exist_ok=True)
    with open(args.cache / "children.log", "w") as log:
        for name in args.only or CONFIGS:
            cfg = CONFIGS[name]
            data = args.cache / f"tree-{cfg['train']}-{cfg['val']}"
            write_tree(data, {"train": cfg["train"], "val": cfg["val"]}, distinct)
            rounds = []
            for k in range(args.rounds or cfg["rounds"]):
                t0 = time.perf_counter()
                r = {}
                for phase in ("train", "val"):
                    r.update(parts_side_by_side(name, data, args, log, phase))
                if k == 0:  # fit's data, from the first round's parts (the parts run for fixed seconds)
                    cfg = sized(CONFIGS[name], r) if not args.fixed_size else cfg
                    data = args.cache / f"tree-{cfg['train']}-{cfg['val']}"
                    write_tree(data, {"train": cfg["train"], "val": cfg["val"]}, distinct)
                t1 = time.perf_counter()
                r.update(result_of(start_part("fit", name, data=data, args=args, log=log), log))
                r.update(summarise(cfg, r))
                rounds.append(r)
                print(
                    f"  {name}, round {k + 1}: parts {t1 - t0:.0f} s, fit {time.perf_counter() - t1:.0f} s, "
                    f"efficiency {r['efficiency']:.2f}",
                    file=sys.stderr,
                )
            report["configs"][name] = {
                "arch": cfg["arch"],
                "train_images": cfg["train"],
                "val_images": cfg["val"],
                "epochs": cfg["epochs"],
                "precision": rounds[0]["precision"],
                "slower_part": rounds[0]["slower_part"],
                "median": median_of(rounds),
                "rounds": rounds,
            }
        if not args.no_headroom:
            report["headroom"] = headroom_of(args, log)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    precision = ", ".join(sorted({c["precision"] for c in report["configs"].values()}))
    print(
        f"{m['cpu']} ({m['cores']} cores), torch {m['torch']}, {precision}, {m['date']}; {args.threads} thread(s) "
        f"+ {args.workers} loader worker(s), each pinned to its own core; 512 px JPEGs at {SIZE} px"
    )
    print(table(report))
    if "headroom" in report:
        from benchmarks import headroom

        h = report["headroom"]
        print(
            f"\nThe main process with the model on meta and {h['results'][0]['workers']} loader worker(s) "
            "(benchmarks.headroom; the model's phases are meta's Python kernels, not a GPU's launches):"
        )
        print(headroom.table(h["results"]))
        print("\n".join(headroom.summary_lines(h["results"])))
    print(f"wrote {args.json}")


def headroom_of(args, log) -> dict:
    """benchmarks.headroom in its own process (it patches ffdi.engine.train), on the cores the parts used."""
    out = args.cache / "headroom.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.headroom",
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
        "--cache",
        str(args.cache),
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=log)
    if proc.returncode != 0:
        log.flush()
        raise SystemExit(
            f"{' '.join(cmd)} exited {proc.returncode}; the end of its stderr ({log.name}):\n"
            + "\n".join(Path(log.name).read_text().splitlines()[-30:])
        )
    return json.loads(out.read_text())


def machine() -> dict:
    from ffdi.hardware import cpu_has_native_bf16, cpu_name

    return {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "amx_bf16": cpu_has_native_bf16(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


if __name__ == "__main__":
    main()
