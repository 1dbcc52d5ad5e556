"""Are queued experiments run side by side ever slower than one after the other?

Copies this project (tracked files) to a temp folder, queues the same N experiments twice
(`-S train.seed=1,2` by default) and runs them once with `dvc queue start -j 1` and once with
`-j J`, from a clean MLflow store and DVC cache each time. Prints wall-clock times and whether
the two batches gave the same metrics, and writes a JSON to benchmarks/results/.

    python -m benchmarks.studies.parallel_queue [--seeds 1 2] [--jobs 2] [-S key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ffdi.schema import EVAL_ROC_AUC

ROOT = Path(__file__).resolve().parents[1]


def sh(cwd: Path, *cmd: str) -> str:
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "TQDM_DISABLE": "1",
        # dvc, and the stages' python, from this interpreter's environment
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def fresh_copy(dst: Path) -> None:
    files = sh(ROOT, "git", "ls-files").split()
    for rel in files:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst / rel)
    sh(dst, "git", "init", "-q", "-b", "main")
    sh(dst, "git", "-c", "user.name=b", "-c", "user.email=b@e", "add", "-A")
    sh(dst, "git", "-c", "user.name=b", "-c", "user.email=b@e", "commit", "-qm", "bench")


def run_batch(repo: Path, seeds: list[int], jobs: int, overrides: list[str]) -> dict:
    for stale in ("mlflow.db", "mlartifacts", ".ffdi"):
        shutil.rmtree(repo / stale, ignore_errors=True) if (repo / stale).is_dir() else (repo / stale).unlink(
            missing_ok=True
        )
    # -f: run every stage, even where DVC's run cache holds the first batch's identical results.
    args = ["dvc", "exp", "run", "--queue", "-f", "-S", f"train.seed={','.join(map(str, seeds))}"]
    for o in overrides:
        args += ["-S", o]
    sh(repo, *args)
    t0 = time.perf_counter()
    sh(repo, "dvc", "queue", "start", "-j", str(jobs))
    while True:
        status = sh(repo, "dvc", "queue", "status")
        if not any(s in status for s in ("Queued", "Running")):
            break
        time.sleep(1)
    seconds = time.perf_counter() - t0
    if "Failed" in status:
        raise SystemExit(f"an experiment failed:\n{status}")
    sys.path.insert(0, str(ROOT))
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("ffdi")
    runs = client.search_runs([exp.experiment_id])
    metrics = {r.data.params["train.seed"]: r.data.metrics[EVAL_ROC_AUC] for r in runs}
    threads = {r.data.params["train.seed"]: r.data.tags.get("hw.cpu_threads") for r in runs}
    return {"jobs": jobs, "seconds": seconds, "val_auc_by_seed": metrics, "threads_at_start": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="extra dvc exp run -S overrides")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ffdi-queue-") as tmp:
        repo = Path(tmp) / "repo"
        fresh_copy(repo)
        sh(repo, "dvc", "repro", "prepare")  # shared by both batches: only training onwards is timed
        results = [run_batch(repo, args.seeds, 1, args.overrides)]
        results.append(run_batch(repo, args.seeds, args.jobs, args.overrides))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    out = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "seeds": args.seeds,
        "overrides": args.overrides,
        "batches": results,
    }
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "parallel_queue.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"{len(args.seeds)} queued experiments on {out['cores']} cores ({cpu}):")
    print("| jobs | wall-clock s | val AUC by seed |\n|---:|---:|---|")
    for r in results:
        aucs = ", ".join(f"seed {k}: {v:.4f}" for k, v in sorted(r["val_auc_by_seed"].items()))
        print(f"| {r['jobs']} | {r['seconds']:.0f} | {aucs} |")
    same = results[0]["val_auc_by_seed"] == results[1]["val_auc_by_seed"]
    print(f"identical metrics with -j 1 and -j {args.jobs}: {same}")


if __name__ == "__main__":
    main()
