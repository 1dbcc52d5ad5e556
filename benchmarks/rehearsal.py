"""A full-scale rehearsal: every stage and bookkeeping step a user meets, at N images.

For each N, a multiFFDI-shaped tree (benchmarks.tree: 78% train with 19% real, 22% val with 40% real,
md5 names, both headers; hard links to 400 generated 512 px JPEGs) and a scratch copy of this
project pointed at it (data.root), then, each step in its own process, its time and peak memory:
  dvc_first     `dvc repro prepare` the first time: DVC hashes every image (${data.root} is a dep)
  dvc_status    `dvc status` with nothing changed
  dvc_repro     `dvc repro prepare` with nothing changed
  exp_temp      `dvc exp run --temp prepare`, nothing changed: the start-up of a temp experiment
  exp_queue     `dvc exp run --queue prepare`, `dvc queue start`, until the queue is done
  prepare       the prepare stage alone (label files checked against the images, manifests)
  loader_epoch  one training epoch's data pass: the training loader alone, 2 workers
  validate      validation's scoring pass, as fit runs it (Detector, predict.tta, 2x the batch)
  evaluate      the evaluate stage with params.yaml's defaults (robustness, per-group metrics...)
  mlflow        of which evaluate's MLflow logging (metrics, artifacts, the served model)
  predict       the predict stage: a submission with a row per val image
  score         `ffdi score` over the train folder
The model is the default recipe's (ResNet-18 at 64 px), trained for one epoch on 2,000 of the
images first: what is measured is ffdi's own work per image and per run, not a model's.

    python -m benchmarks.rehearsal [--sizes 10000 100000] [--dvc-sizes 670000] [--work DIR]

--dvc-sizes: sizes at which only the tree, the DVC steps and prepare run (the others grow linearly
with N, as the smaller sizes show). Prints a markdown table (a column per N); writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.tree import distinct_images, write_tree

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SHARE = 524_429 / (524_429 + 147_363)  # multiFFDI phase 1
DVC_STEPS = ("dvc_first", "dvc_status", "dvc_repro", "exp_temp", "exp_queue", "prepare")
STEPS = DVC_STEPS + ("loader_epoch", "validate", "evaluate", "mlflow", "predict", "score")
LABELS = {
    "tree": "writing the tree (hard links; not a user step)",
    "dvc_first": "first `dvc repro prepare` (listing, then prepare)",
    "dvc_status": "`dvc status`, nothing changed",
    "dvc_repro": "`dvc repro prepare`, nothing changed",
    "exp_temp": "`dvc exp run --temp prepare`, nothing changed",
    "exp_queue": "`dvc exp run --queue prepare` + `dvc queue start`, to done",
    "prepare": "prepare stage alone",
    "loader_epoch": "one training epoch's data pass (loader, 2 workers)",
    "validate": "validation's scoring pass (ResNet-18 64 px, hflip TTA)",
    "evaluate": "evaluate stage, defaults",
    "mlflow": "of which MLflow logging",
    "predict": "predict stage (a row per val image)",
    "score": "`ffdi score` over the train folder",
}
SUBSET = 2000  # images the rehearsal's model trains on


# --- the steps that run inside the scratch project -----------------------------------------------


def step_model() -> dict:
    """Train the default recipe one epoch on SUBSET images, logged to MLflow as the train stage logs."""
    from dataclasses import replace

    import mlflow

    from ffdi.config import load_params
    from ffdi.data.labels import read_manifest
    from ffdi.engine.train import fit
    from ffdi.model import checkpoint
    from ffdi.tracking import mlflow_run

    paths = stage_paths("train")
    params = load_params()
    params = replace(params, train=replace(params.train, epochs=1))
    train = read_manifest(paths["prepared"] / "train.csv").sample(SUBSET, random_state=0)
    val = read_manifest(paths["prepared"] / "val.csv").sample(SUBSET // 4, random_state=0)
    state = Path(".ffdi/rehearsal")
    seconds = {}
    with mlflow_run.run(params.tracking, run_name="rehearsal") as run:
        t0 = time.perf_counter()
        mlflow_run.log_params(params)
        seconds["log_params"] = time.perf_counter() - t0
        steps: set = set()
        fit(params, train, val, state, on_epoch=lambda row: mlflow_run.log_epoch(row, steps))
        # No model logged here: as in the train stage, evaluate logs the run's one model.
        checkpoint.finish(state, paths["model"])
        mlflow_run.write_run_ref(paths["run_ref"], run.info.run_id, params.tracking.experiment)
        mlflow.set_tag("rehearsal", "true")
    return seconds


def step_loader() -> dict:
    import torch

    from ffdi.config import load_params
    from ffdi.data.dataset import make_loader
    from ffdi.data.labels import read_manifest

    params = load_params()
    manifest = read_manifest(stage_paths("train")["prepared"] / "train.csv")
    loader = make_loader(manifest, params.augment, params.train.batch_size, 2, True)
    loader.sampler.set_epoch(0, 0)
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch.y)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return {"images": n, "img_s": n / (time.perf_counter() - t0)}


def step_validate() -> dict:
    """fit's validation pass: the val loader with 2x the training batch, scored by the Detector."""
    from ffdi.config import load_params
    from ffdi.data.dataset import make_loader
    from ffdi.data.labels import read_manifest
    from ffdi.engine.train import validate
    from ffdi.hardware import available_cores, resolve_workers
    from ffdi.inference.detector import Detector

    params, paths = load_params(), stage_paths("evaluate")
    detector = Detector.load(paths["model"], params.runtime.device, tta=params.predict.tta)
    workers = resolve_workers(params.runtime.workers, available_cores(), detector.device)
    loader = make_loader(
        read_manifest(paths["prepared"] / "val.csv"), detector.augment, 2 * params.train.batch_size, workers, False
    )
    t0 = time.perf_counter()
    metrics = validate(detector, loader)
    return {"images": metrics["val_images"], "img_s": metrics["val_images"] / (time.perf_counter() - t0)}


def stage_paths(stage: str) -> dict[str, Path]:
    """The paths dvc.yaml's cmd gives a stage: {"prepared": Path("prepared"), ...}."""
    from ffdi.stage import _cmd_args

    args = _cmd_args(stage)
    return {k.removeprefix("--").replace("-", "_"): Path(v) for k, v in zip(args[::2], args[1::2])}


# --- the driver ---------------------------------------------------------------------------------


def measured(name: str, cmd: list[str], cwd: Path, env: dict, log) -> dict:
    """Run cmd; its wall time and the peak RSS of the largest process in its tree (wait4's rusage)."""
    print(f"    {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    log.write(f"\n### {name}: {' '.join(cmd)}\n")
    log.flush()
    t0 = time.perf_counter()
    out_path = cwd / f".rehearsal-{name}.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    stdout = out_path.read_text()
    log.write(stdout)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        log.flush()
        tail = "\n".join(Path(log.name).read_text().splitlines()[-25:])
        raise SystemExit(
            f"{name}: `{' '.join(cmd)}` in {cwd} exited {code}; the end of its output ({log.name}):\n{tail}"
        )
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "stdout": stdout}


def _cmd_args(stage: str, project: Path) -> list[str]:
    """The arguments of the stage's cmd in the project's dvc.yaml (read without importing ffdi.cli.main,
    which would pull nothing heavy, but keep the driver's imports to the standard library and yaml)."""
    import shlex

    words = shlex.split(yaml.safe_load((project / "dvc.yaml").read_text())["stages"][stage]["cmd"])
    return words[words.index(f"stages.{stage}") + 1 :]


def scratch_project(project: Path, tree: Path) -> None:
    """A copy of this project's files (as git sees them) in its own git repository, data.root = tree."""
    shutil.rmtree(project, ignore_errors=True)
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    from dataclasses import replace

    from ffdi.config import load_params

    params = load_params(project / "params.yaml")
    params = replace(params, data=replace(params.data, root=str(tree)))
    (project / "params.yaml").write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=rehearsal", "-c", "user.email=r@localhost", "commit", "-qm", "rehearsal"],
    ):
        subprocess.run(cmd, cwd=project, check=True)


def wait_for_queue(project: Path, env: dict) -> None:
    """Until `dvc queue status` lists nothing queued or running (polled: DVC offers no wait)."""
    while True:
        out = subprocess.run(["dvc", "queue", "status"], cwd=project, env=env, capture_output=True, text=True).stdout
        if not any(w in out for w in ("Queued", "Running")):
            return
        time.sleep(2)


def rehearse(n: int, *, work: Path, distinct, env: dict, log, dvc_only: bool) -> dict:
    n_train = round(n * TRAIN_SHARE)
    tree, project = work / f"tree-{n}", work / f"project-{n}"
    t0 = time.perf_counter()
    write_tree(tree, {"train": n_train, "val": n - n_train}, distinct)
    out = {"tree": {"seconds": time.perf_counter() - t0}}
    scratch_project(project, tree)
    py = [sys.executable, "-m"]
    runs = {
        "dvc_first": ["dvc", "repro", "prepare"],
        "dvc_status": ["dvc", "status"],
        "dvc_repro": ["dvc", "repro", "prepare"],
        "exp_temp": ["dvc", "exp", "run", "--temp", "prepare"],
        "prepare": py + ["stages.prepare", *_cmd_args("prepare", project)],
    }
    for name, cmd in runs.items():
        out[name] = measured(name, cmd, project, env, log)
    t0 = time.perf_counter()
    measured("exp_queue", ["dvc", "exp", "run", "--queue", "prepare"], project, env, log)
    measured("queue_start", ["dvc", "queue", "start"], project, env, log)
    wait_for_queue(project, env)
    out["exp_queue"] = {"seconds": time.perf_counter() - t0}
    if dvc_only:
        return out
    here = py + ["benchmarks.rehearsal", "--step"]
    out["model"] = measured("model", here + ["model"], project, env, log)
    for name, cmd in {
        "loader_epoch": here + ["loader"],
        "validate": here + ["validate"],
        "evaluate": py + ["stages.evaluate", *_cmd_args("evaluate", project)],
        "predict": py + ["stages.predict", *_cmd_args("predict", project)],
        "score": [
            str(Path(sys.executable).parent / "ffdi"),
            "score",
            str(tree / "trainset"),
            "--out",
            str(work / f"score-{n}.csv"),
        ],
    }.items():
        out[name] = measured(name, cmd, project, env, log)
    seconds = dict(
        part.split(" ") for part in out["evaluate"]["stdout"].split("seconds: ")[-1].strip().splitlines()[0].split(", ")
    )
    out["mlflow"] = {"seconds": float(seconds["mlflow"])}
    shutil.rmtree(project / ".dvc" / "tmp" / "exps", ignore_errors=True)
    return out


def table(report: dict, extrapolate: int | None) -> str:
    # The extrapolated size is one column: measured where it was (e.g. --dvc-sizes), else projected.
    sizes = sorted((n for n in report["sizes"] if not extrapolate or int(n) != extrapolate), key=int)
    cols = [f"{int(n):,}" for n in sizes]
    if extrapolate:
        cols.append(f"{extrapolate:,}")
    lines = ["| step | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    largest = max((n for n in sizes if "evaluate" in report["sizes"][n]), key=int, default=None)
    for step in ("tree",) + STEPS:
        cells = []
        for n in sizes:
            m = report["sizes"][n].get(step)
            cells.append("" if m is None else fmt(m))
        if extrapolate:
            m = report["sizes"].get(str(extrapolate), {}).get(step)
            if m is not None:
                cells.append(fmt(m))
            elif largest is not None and step in report["sizes"][largest]:
                s = report["sizes"][largest][step]["seconds"] * extrapolate / int(largest)
                cells.append(f"~{s:,.0f} s (x{extrapolate / int(largest):.1f})")
            else:
                cells.append("")
        lines.append(f"| {LABELS[step]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt(m: dict) -> str:
    s = f"{m['seconds']:,.1f} s" if m["seconds"] < 100 else f"{m['seconds']:,.0f} s"
    return s + (f", {m['peak_rss_mib']:,.0f} MiB" if "peak_rss_mib" in m else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--dvc-sizes", type=int, nargs="*", default=[], help="sizes for the DVC steps and prepare only")
    ap.add_argument("--extrapolate", type=int, default=670_000, help="the table's last column, if not measured")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ffdi-rehearsal"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/rehearsal.json"))
    ap.add_argument("--step", choices=("model", "loader", "validate"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:  # inside the scratch project
        print(json.dumps({"model": step_model, "loader": step_loader, "validate": step_validate}[args.step]()))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    distinct = distinct_images(args.work)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "TQDM_DISABLE": "1",
    }
    report = {"command": "python -m benchmarks.rehearsal " + " ".join(sys.argv[1:]), "machine": machine(), "sizes": {}}
    previous = json.loads(args.json.read_text()) if args.json.is_file() else {}
    with open(args.work / "rehearsal.log", "w") as log:
        for n, dvc_only in [(n, False) for n in args.sizes] + [(n, True) for n in args.dvc_sizes]:
            t0 = time.perf_counter()
            print(f"N = {n:,}{' (DVC steps and prepare)' if dvc_only else ''}", file=sys.stderr, flush=True)
            r = rehearse(n, work=args.work, distinct=distinct, env=env, log=log, dvc_only=dvc_only)
            report["sizes"][str(n)] = {k: {kk: vv for kk, vv in v.items() if kk != "stdout"} for k, v in r.items()}
            print(f"  N = {n:,}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            shutil.rmtree(args.work / f"project-{n}", ignore_errors=True)
            save(report, previous, args.json)  # after each N: an hour's measurements survive a crash
    m = report["machine"]
    print(f"{m['cpu']} ({m['cores']} cores), torch {m['torch']}, {m['date']}; seconds and peak RSS per step")
    print(table(report, args.extrapolate))
    print(f"wrote {args.json}")


def save(report: dict, previous: dict, path: Path) -> None:
    # Sizes measured in an earlier run (e.g. --dvc-sizes 670000 on its own) stay in the JSON and the table.
    for n, r in previous.get("sizes", {}).items():
        report["sizes"].setdefault(n, r)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def machine() -> dict:
    # In a child: this process stays free of torch (see benchmarks.tree.distinct_images).
    code = (
        "import json, os, platform, time, torch; from ffdi.hardware import cpu_has_native_bf16, cpu_name; "
        "print(json.dumps({'cpu': cpu_name(), 'cores': len(os.sched_getaffinity(0)), "
        "'amx_bf16': cpu_has_native_bf16(), 'python': platform.python_version(), "
        "'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d')}))"
    )
    return json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)


if __name__ == "__main__":
    main()
