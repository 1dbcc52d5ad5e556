"""Leave-one-manipulation-out experiments without DVC or MLflow, for a machine that has neither.

The lent GPU machine has torch and timm but no DVC, no MLflow and no network, so `ffdi
generalisation` cannot run there. This runs the same experiments from the pipeline's own pieces:
ffdi.sample.generate -> ffdi.data.labels.prepare -> ffdi.engine.train.fit (the held-out fakes dropped from train
and val, as stages/train.py does) -> the best checkpoint evaluated on all of val by
ffdi.evaluation.evaluate.evaluate, as the evaluate stage does, with the metric names it logs to MLflow.
Several experiments run at once, one process each.

    python -m benchmarks.studies.generalisation_grid run --out DIR [--work DIR] --variant baseline \\
        --variant ema:train.ema=0.999 \\
        [--holdouts self_blend resample ...] [--seeds 0 1 2] [--jobs 6] [--set train.amp=off] \\
        [--sample sample.size=512 ...] [--deadline-min 6]
    python -m benchmarks.studies.generalisation_grid render --out DIR [--reference baseline]

`run` writes DIR/<variant>__<holdout>__seed<k>.{json,csv} (results, val predictions) as each
experiment finishes (flat: the device tool returns no deeper files) (nothing is lost if the machine goes away)
and DIR/environment.json.
`render` builds ffdi generalisation's report from them in DIR/report (report.md with each variant's
held-out AUC against the reference variant and its paired bootstrap CI, heatmaps, CSVs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ffdi.schema import EVAL_ROC_AUC, HELDOUT_ROC_AUC

ROOT = Path(__file__).resolve().parents[1]


def parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise SystemExit(f"override {text!r}: expected group.key=value")
    parsed = yaml.safe_load(value)
    if isinstance(parsed, bool) and value.lower() not in ("true", "false"):
        parsed = value  # YAML 1.1 reads off/on/no/yes as booleans; train.amp=off means "off"
    return key, parsed


def parse_variant(text: str) -> tuple[str, dict]:
    """'name' or 'name:group.key=value,group.key=[a,b]': commas inside brackets belong to the value."""
    name, _, rest = text.partition(":")
    parts, depth, current = [], 0, ""
    for ch in rest:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return name, dict(parse_override(p) for p in parts if p)


def params_with(overrides: dict):
    from ffdi.config import Params, load_params

    raw = load_params(ROOT / "params.yaml").to_dict()
    for key, value in overrides.items():
        group, name = key.split(".", 1)
        raw.setdefault(group, {})[name] = value
    return Params(**raw)  # validated again, overrides included


def make_data(work: Path, sample_overrides: dict, workers: int) -> dict:
    from ffdi.data import labels
    from ffdi.sample.generate import generate

    root, prepared = work / "data", work / "prepared"
    params = params_with({**sample_overrides, "data.root": str(root)})
    if not (prepared / "summary.json").is_file():
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        counts = generate(params.sample, root, workers=workers)
        seconds = time.perf_counter() - t0
        summary = labels.prepare(params.data, prepared)
        summary["generate_seconds"] = seconds
        summary["sample"] = params.sample.__dict__
        (prepared / "summary.json").write_text(json.dumps(summary, indent=1))
        print(f"generated {counts} in {seconds:.0f} s with {workers} processes", flush=True)
    return json.loads((prepared / "summary.json").read_text())


def run_one(out: str, work: str, name: str, overrides: dict, holdout: str, seed: int, deadline: float) -> dict:
    """One experiment in this process: train without `holdout`'s fakes, score all of val."""
    if time.time() > deadline:
        return {"name": name, "status": "skipped (deadline)"}
    from ffdi.data.labels import drop_groups, read_manifest
    from ffdi.engine.train import fit
    from ffdi.evaluation.evaluate import evaluate
    from ffdi.hardware import available_cores, resolve_workers
    from ffdi.inference.detector import Detector
    from ffdi.tracking.evaluation import evaluation_metrics

    out_dir, work_dir = Path(out), Path(work)
    result_path = out_dir / f"{name}.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    params = params_with({**overrides, "data.holdout": [holdout], "train.seed": seed})
    train = read_manifest(work_dir / "prepared" / "train.csv")
    val = read_manifest(work_dir / "prepared" / "val.csv")
    state = work_dir / "state" / name
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    t0 = time.perf_counter()
    result = fit(params, drop_groups(train, [holdout]), drop_groups(val, [holdout]), state)
    train_seconds = time.perf_counter() - t0
    # Scored and measured as the evaluate stage does, with the metric names it logs to MLflow.
    detector = Detector.load(state / "best.pt", params.runtime.device, tta=params.predict.tta)
    workers = resolve_workers(params.runtime.workers, available_cores(), detector.device)
    ev = evaluate(detector, val, params.eval, holdout=[holdout], workers=workers)
    m = evaluation_metrics(ev.report, ev.seconds)
    history = result["history"]
    ev.predictions[["img_name", "target", "group", "y_pred"]].to_csv(out_dir / f"{name}.csv", index=False)
    flat = {
        "model.arch": params.model.arch,
        "model.input": params.model.input,
        "model.tune": params.model.tune,
        "augment.self_blend": params.augment.self_blend,
        "train.ema": params.train.ema,
        "predict.tta": list(params.predict.tta),
        "data.holdout": [holdout],
        "train.seed": seed,
    }
    record = {
        "name": name,
        "status": "done",
        "variant": name.split("__")[0],
        "holdout": holdout,
        "seed": seed,
        "overrides": overrides,
        "params": {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in flat.items()},
        "metrics": {k: float(v) for k, v in m.items()},
        "best_epoch": result["best"]["epoch"],
        "precision": result["precision"],
        "device": str(result["device"]),
        "trainable_params": result["trainable_params"],
        "train_seconds": train_seconds,
        "train_img_per_s": [h["train_img_per_s"] for h in history],
        "history": history,
        "train_images": int(len(drop_groups(train, [holdout]))),
    }
    result_path.write_text(json.dumps(record, indent=1, default=str))
    shutil.rmtree(state, ignore_errors=True)
    return record


def environment() -> dict:
    import torch

    from ffdi.hardware import cpu_name

    env = {"python": platform.python_version(), "torch": torch.__version__, "cpu": cpu_name(), "cores": os.cpu_count()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    try:
        import timm

        env["timm"] = timm.__version__
    except ImportError:
        pass
    return env


def cmd_run(args) -> int:
    out, work = args.out, args.work or args.out
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.deadline_min * 60
    (out / "environment.json").write_text(json.dumps(environment(), indent=1))
    sample_overrides = dict(parse_override(s) for s in args.sample)
    summary = make_data(work, sample_overrides, args.generate_workers)
    (out / "data_summary.json").write_text(json.dumps(summary, indent=1))
    groups = args.holdouts or sorted(summary["splits"]["train"]["fake_groups"])
    common = dict(parse_override(s) for s in args.set)
    common["data.root"] = str(work / "data")
    jobs = []
    variants = [parse_variant(v) for v in args.variant]
    for seed in args.seeds:  # seed by seed: a deadline leaves whole seeds of every variant
        for vname, overrides in variants:
            for holdout in groups:
                if overrides.get("augment.self_blend") and holdout == "self_blend":
                    continue  # refused by the pipeline: self-blends made in training are not held out
                jobs.append((f"{vname}__{holdout}__seed{seed}", {**common, **overrides}, holdout, seed))
    print(f"{len(jobs)} experiments, {args.jobs} at a time", flush=True)
    failed = 0
    t0 = time.perf_counter()
    import multiprocessing

    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_one, str(out), str(work), name, ov, h, s, deadline): name for name, ov, h, s in jobs}
        for i, fut in enumerate(as_completed(futures), 1):
            name = futures[fut]
            try:
                r = fut.result()
            except Exception:
                failed += 1
                (out / "errors").mkdir(exist_ok=True)
                (out / "errors" / f"{name}.txt").write_text(traceback.format_exc())
                print(f"[{time.perf_counter() - t0:5.0f} s] {i}/{len(jobs)} {name}: FAILED", flush=True)
                continue
            if r.get("status") != "done":
                print(f"[{time.perf_counter() - t0:5.0f} s] {i}/{len(jobs)} {name}: {r.get('status')}", flush=True)
                continue
            print(
                f"[{time.perf_counter() - t0:5.0f} s] {i}/{len(jobs)} {name}: held-out AUC "
                f"{r['metrics'][HELDOUT_ROC_AUC]:.4f}, val AUC {r['metrics'][EVAL_ROC_AUC]:.4f}, "
                f"{np.mean(r['train_img_per_s']):.0f} train img/s, {r['train_seconds']:.0f} s",
                flush=True,
            )
    print(f"done in {time.perf_counter() - t0:.0f} s, {failed} failed", flush=True)
    return 1 if failed else 0


# --- render ----------------------------------------------------------------------------------------


def load_runs(out: Path):
    """The finished experiments as ffdi.analysis.runs Runs (artifact_uri: the predictions file)."""
    from ffdi.analysis.runs import Run

    runs = []
    for path in sorted(out.glob("*__seed*.json")):
        r = json.loads(path.read_text())
        params = {**r["params"], "variant": r["variant"]}
        runs.append(Run(r["name"], r["name"], params, r["metrics"], str(path.with_suffix(".csv")), {"git.commit": ""}))
    return runs


def cmd_render(args) -> int:
    from ffdi.analysis import generalisation_report

    runs = load_runs(args.out)
    if not runs:
        print(f"no finished runs under {args.out}", file=sys.stderr)
        return 1
    result = generalisation_report.render(
        runs,
        args.out / "report",
        reference=args.reference,
        n_boot=args.boot,
        load=lambda r: pd.read_csv(Path(r.artifact_uri), dtype={"img_name": str}),
    )
    env_path = args.out / "environment.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    records = [json.loads(p.read_text()) for p in sorted(args.out.glob("*__seed*.json"))]
    speed = pd.DataFrame(
        [
            {
                "variant": r["variant"],
                "train img/s": float(np.mean(r["train_img_per_s"])),
                "trainable params": r["trainable_params"],
            }
            for r in records
        ]
    )
    print(result["markdown"])
    print(speed.groupby("variant").mean().to_string())
    print("machine: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, required=True, help="results (small)")
    r.add_argument("--work", type=Path, help="generated images and checkpoints (default: --out)")
    r.add_argument("--variant", action="append", default=[], help="name or name:key=value,key=value")
    r.add_argument("--holdouts", nargs="+", help="default: every manipulation in the train labels")
    r.add_argument("--seeds", type=int, nargs="+", default=[0])
    r.add_argument("--jobs", type=int, default=1)
    r.add_argument("--set", action="append", default=[], help="key=value for every experiment")
    r.add_argument("--sample", action="append", default=[], help="sample.key=value for the generated data")
    r.add_argument("--generate-workers", type=int, default=os.cpu_count() or 1)
    r.add_argument("--deadline-min", type=float, default=1e9, help="start no experiment after this many minutes")
    g = sub.add_parser("render")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--reference", default="variant=baseline")
    g.add_argument("--boot", type=int, default=1000)
    args = ap.parse_args(argv)
    if args.cmd == "run":
        if not args.variant:
            args.variant = ["baseline"]
        return cmd_run(args)
    return cmd_render(args)


if __name__ == "__main__":
    sys.exit(main())
