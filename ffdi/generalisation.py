"""Leave one manipulation out, as one command: how a detector does on fakes it never saw.

    ffdi generalisation [-S model.se=true] [--seeds 0 1 2] [--jobs 1] [--no-run] [--reference TEXT]
                        [--out reports/generalisation]

1. Reads the manipulations named in the train labels (prepared/summary.json, else the label file).
2. Queues DVC experiments (`dvc exp run --queue`), for each seed and each `-S` override given:
   - leave one out: one per manipulation M, with data.holdout=[M] (trained on all the others);
   - train on one: one per manipulation M, with data.holdout = all the others (trained on M alone).
   With two manipulations the two kinds are the same experiments, queued once.
3. Runs them (`dvc queue start -j N`) and waits, polling `dvc queue status`, at most --timeout minutes.
4. Collects the finished runs from MLflow (those with data.holdout set), groups them by the params
   that differ other than data.holdout and the seed (e.g. model.se), and writes to --out:
   - report.md: per group, (a) held-out manipulation x metric (held-out AUC, AP, TPR at FPR 1e-3,
     the AUC of the seen manipulations and the overall val AUC), and (b) train on one -> test on each
     (the AUC of each manipulation's fakes against all real images); mean ± sd over seeds;
   - heldout.png, train_on_one.png (heatmaps), heldout.csv, train_on_one.csv, runs.csv;
   - with several variants, each one's held-out AUC against the reference variant's (--reference;
     default: the one run with params.yaml's values), per manipulation and averaged, with the paired
     bootstrap CI of `ffdi compare` (report.md, differences.csv, differences.png: a forest plot);
   and logs them to an MLflow run tagged ffdi.kind=generalisation.
--no-run skips 1-3 and renders from the runs already in MLflow.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ffdi import report, tracking
from ffdi.compare import (CompareError, Run, aligned_frames, bootstrap_auc_difference, finished_pipeline_runs, mean_auc,
                          paired_bootstrap, val_predictions, varying_keys)
from ffdi.config import Params, TrackingConfig, flatten, load_params
from ffdi.data import read_labels
from ffdi.errors import FfdiError
from ffdi.hardware import available_cores
from ffdi.io import write_csv, write_text
from ffdi.metrics import fpr_key, roc_auc

HOLDOUT = "data.holdout"
# Table (a): MLflow metric -> column.
HELDOUT_COLUMNS = {
    "heldout_roc_auc": "held-out AUC",
    "heldout_average_precision": "held-out AP",
    f"heldout_{fpr_key(1e-3)}": "held-out TPR@FPR 1e-3",
    "seen_roc_auc": "seen AUC",
    "eval_roc_auc": "val AUC (all)",
}
GROUP_AUC_PREFIX = "eval_auc_"  # evaluate logs eval_auc_<manipulation>
STATUSES = ("Queued", "Running", "Success", "Failed")


class GeneralisationError(FfdiError):
    pass


# --- what to run ---------------------------------------------------------------------------------


def manipulations(params: Params, summary: Path = Path("prepared/summary.json")) -> list[str]:
    """The manipulations named among the train fakes: from prepare's summary when it describes
    data.root, else read from the train label file."""
    groups = None
    if summary.is_file():
        s = json.loads(summary.read_text())
        if s.get("root") == params.data.root:
            groups = sorted(s["splits"]["train"].get("fake_groups", {}))
    if groups is None:
        labels = read_labels(Path(params.data.root) / params.data.train_labels, True, params.data.group_column)
        groups = sorted({g for g, t in zip(labels.group, labels.target) if t == 1 and g})
    if len(groups) < 2:
        raise GeneralisationError(
            f"leave-one-out needs at least two manipulations named in column {params.data.group_column!r} of "
            f"{Path(params.data.root) / params.data.train_labels}; found {groups or 'none'}")
    return groups


def holdout_sets(groups: Sequence[str], leave_one_out: bool = True, train_on_one: bool = True) -> list[tuple]:
    """The data.holdout of each experiment, without repeats (with two manipulations, leaving one
    out is training on the other)."""
    sets = []
    if leave_one_out:
        sets += [(g,) for g in groups]
    if train_on_one:
        sets += [tuple(o for o in groups if o != g) for g in groups]
    return list(dict.fromkeys(tuple(sorted(s)) for s in sets))


def exp_run_args(holdout: Sequence[str], seeds: Sequence[int], overrides: Sequence[str]) -> list[str]:
    """`dvc exp run --queue` arguments. The holdout is a JSON list: a YAML list to DVC, not a sweep."""
    args = ["exp", "run", "--queue", "-S", f"{HOLDOUT}={json.dumps(list(holdout))}"]
    if seeds:
        args += ["-S", "train.seed=" + ",".join(str(s) for s in seeds)]
    for o in overrides:
        args += ["-S", o]
    return args


# --- running DVC's queue ---------------------------------------------------------------------------


def dvc_env() -> dict:
    """This interpreter's bin first on PATH: DVC's queue workers and the stages run `dvc`/`python` from it."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


def dvc(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True, env=dvc_env(),
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise GeneralisationError(f"dvc {' '.join(args)} exited {proc.returncode}: "
                                  f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def parse_queue_status(text: str) -> tuple[dict[str, str], Optional[int]]:
    """`dvc queue status` -> ({experiment name: status}, active workers or None)."""
    tasks, active = {}, None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[-1] in STATUSES and parts[0] != "Task":
            tasks[parts[1]] = parts[-1]
        m = re.search(r"Worker status: (\d+) active", line)
        if m:
            active = int(m.group(1))
    return tasks, active


def start_workers(jobs: int, command: Optional[Sequence[str]] = None, timeout: float = 120, **run) -> None:
    """`dvc queue start -j N`, returning once the workers are started; `run`: more subprocess.run
    arguments (cwd, env, preexec_fn), for the tests' throwaway projects.

    The workers are daemons that inherit this command's stdout and stderr: with pipes there, as
    subprocess.run(capture_output=True) makes, waiting for the command waits for the workers to
    exit, i.e. for the whole queue. A file holds nobody up.
    """
    command = list(command or [sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)])
    run.setdefault("env", dvc_env())
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              timeout=timeout, **run)
        log.seek(0)
        if proc.returncode != 0:
            raise GeneralisationError(f"{' '.join(command[1:])} exited {proc.returncode}: {log.read().strip()[-2000:]}")


def queue_status() -> tuple[dict[str, str], Optional[int]]:
    return parse_queue_status(dvc("queue", "status").stdout)


def untracked_code() -> list[str]:
    """Files `dvc exp run --queue` would leave out: queued experiments see git-tracked files only."""
    try:
        out = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--", "ffdi", "stages",
                              "dvc.yaml", "params.yaml", "requirements.txt"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [f for f in out.splitlines() if f.endswith((".py", ".yaml", ".txt"))]


def queue_experiments(holdouts: Sequence[tuple], seeds: Sequence[int], overrides: Sequence[str]) -> list[str]:
    names = []
    for holdout in holdouts:
        out = dvc(*exp_run_args(holdout, seeds, overrides)).stdout
        queued = re.findall(r"Queued experiment '([^']+)'", out)
        if not queued:
            raise GeneralisationError(f"dvc exp run --queue queued nothing for {HOLDOUT}={list(holdout)}:\n{out}")
        print(f"queued {', '.join(queued)}: {HOLDOUT}={list(holdout)}", flush=True)
        names += queued
    return names


def wait_for(names: Sequence[str], timeout_s: float, poll_s: float = 10.0, stall_s: float = 120.0,
             restart=None, restarts: int = 3) -> dict[str, str]:
    """Poll until each named experiment has succeeded or failed, or `timeout_s` passed.

    DVC's queue workers may exit while experiments are still queued (here they often stopped after
    one experiment each). When experiments wait with no worker active for two polls, `restart()`
    starts workers again. Only `restarts` restarts in a row that bring no progress are allowed;
    after those, experiments still waiting with no worker for `stall_s` end the wait (a worker
    that cannot start, e.g. without `dvc` on PATH). Returns the last status of each name.
    """
    start, last, idle_since, fruitless = time.monotonic(), None, None, 0
    while True:
        tasks, active = queue_status()
        status = {n: tasks.get(n, "unknown") for n in names}
        counts = {s: sum(v == s for v in status.values()) for s in (*STATUSES, "unknown")}
        line = ", ".join(f"{k.lower()} {v}" for k, v in counts.items() if v)
        if line != last:
            print(f"[{time.monotonic() - start:6.0f} s] {line}", flush=True)
            if last is not None:
                fruitless = 0  # an experiment started or ended: the workers do work
            last = line
        if not counts["Queued"] and not counts["Running"]:
            return status
        if counts["Queued"] and not counts["Running"] and not active:
            idle_since = idle_since or time.monotonic()
            waited = time.monotonic() - idle_since
            if restart is not None and fruitless < restarts and waited >= min(stall_s, 2 * poll_s):
                fruitless += 1
                print(f"[{time.monotonic() - start:6.0f} s] experiments queued and no queue worker active: "
                      "starting workers again", flush=True)
                restart()
                idle_since = None
            elif waited > stall_s:
                print(f"error: experiments stay queued and no queue worker is active after {stall_s:.0f} s; "
                      "see `dvc queue status` and `dvc queue start`", file=sys.stderr)
                return status
        else:
            idle_since = None
        if time.monotonic() - start > timeout_s:
            print(f"error: timed out after {timeout_s / 60:.0f} min with {counts['Queued']} queued and "
                  f"{counts['Running']} running; they go on in the background. Watch `dvc queue status`, then "
                  "render with `ffdi generalisation --no-run`", file=sys.stderr)
            return status
        time.sleep(poll_s)


def report_failures(status: dict[str, str]) -> list[str]:
    failed = [n for n, s in status.items() if s == "Failed"]
    for name in failed:
        logs = dvc("queue", "logs", name, check=False)
        tail = "\n".join((logs.stdout + logs.stderr).strip().splitlines()[-15:])
        print(f"\nexperiment {name} failed; the end of `dvc queue logs {name}`:\n{tail}", file=sys.stderr)
    return failed


def run_experiments(groups: Sequence[str], seeds: Sequence[int], overrides: Sequence[str], jobs: int,
                    timeout_s: float, leave_one_out: bool = True, train_on_one: bool = True,
                    poll_s: float = 10.0) -> dict[str, str]:
    missing = untracked_code()
    if missing:
        print("warning: queued experiments see only git-tracked files, and these are untracked: "
              f"{', '.join(missing)}. `git add` them first, or the experiments may fail.", file=sys.stderr)
    before, _ = queue_status()
    busy = [n for n, s in before.items() if s in ("Queued", "Running")]
    if busy:
        print(f"note: the DVC queue already holds {', '.join(busy)}; they will run as well", file=sys.stderr)
    names = queue_experiments(holdout_sets(groups, leave_one_out, train_on_one), seeds, overrides)
    print(f"running {len(names)} experiments, {jobs} at a time (dvc queue start -j {jobs})", flush=True)
    start_workers(jobs)
    try:
        status = wait_for(names, timeout_s, poll_s, restart=lambda: start_workers(jobs))
    finally:
        tasks, _ = queue_status()
        if not any(s in ("Queued", "Running") for s in tasks.values()):
            dvc("queue", "stop", check=False)  # the idle worker would otherwise linger
    return status


# --- collecting and rendering ---------------------------------------------------------------------


def holdout_of(run: Run) -> tuple:
    raw = run.params.get(HOLDOUT, "[]")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return ()
    return tuple(sorted(value)) if isinstance(value, (list, tuple)) else ()


def holdout_runs(runs: Sequence[Run]) -> list[Run]:
    return [r for r in runs if holdout_of(r)]


def group_by_variant(runs: Sequence[Run]) -> tuple[list[str], dict[str, list[Run]]]:
    """Runs grouped by the params that differ between them, data.holdout and the seed excepted."""
    keys = [k for k in varying_keys(list(runs)) if k != HOLDOUT] if runs else []
    variants: dict[str, list[Run]] = {}
    for r in runs:
        label = ", ".join(f"{k}={r.params.get(k)}" for k in keys) or "all runs"
        variants.setdefault(label, []).append(r)
    return keys, dict(sorted(variants.items()))


def manipulations_of(runs: Sequence[Run]) -> list[str]:
    names = {k[len(GROUP_AUC_PREFIX):] for r in runs for k in r.metrics if k.startswith(GROUP_AUC_PREFIX)}
    return sorted(names | {g for r in runs for g in holdout_of(r)})


def _stats(values: list[float]) -> tuple[float, float, int]:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return float("nan"), float("nan"), 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"), len(values)


def variant_tables(runs: Sequence[Run]) -> dict[str, pd.DataFrame]:
    """For one variant's runs: long tables of mean, sd and run count.

    heldout: one row per (held-out manipulation, metric), from the runs that held out only it.
    train_on_one: one row per (trained on, tested on), from the runs that held out all but one.
    """
    groups = manipulations_of(runs)
    heldout_rows, cross_rows = [], []
    for g in groups:
        loo = [r for r in runs if holdout_of(r) == (g,)]
        for key, column in HELDOUT_COLUMNS.items():
            mean, sd, n = _stats([r.metrics.get(key) for r in loo])
            heldout_rows.append({"heldout": g, "metric": column, "mean": mean, "sd": sd, "runs": n})
        trained = [r for r in runs if set(holdout_of(r)) == set(groups) - {g}]
        for tested in groups:
            mean, sd, n = _stats([r.metrics.get(f"{GROUP_AUC_PREFIX}{tested}") for r in trained])
            cross_rows.append({"trained_on": g, "tested_on": tested, "mean": mean, "sd": sd, "runs": n})
    return {"heldout": pd.DataFrame(heldout_rows, columns=["heldout", "metric", "mean", "sd", "runs"]),
            "train_on_one": pd.DataFrame(cross_rows, columns=["trained_on", "tested_on", "mean", "sd", "runs"])}


def tables(runs: Sequence[Run]) -> tuple[list[str], dict[str, dict[str, pd.DataFrame]]]:
    keys, variants = group_by_variant(holdout_runs(runs))
    return keys, {label: variant_tables(rs) for label, rs in variants.items()}


def logged(value) -> str:
    """A param value as MLflow holds it (tracking.log_params)."""
    return "null" if value is None else str(value)


def reference_variant(keys: list[str], variants: dict[str, list[Run]], params: Optional[Params],
                      reference: Optional[str] = None) -> Optional[str]:
    """The variant the others are compared with: the one whose label contains `reference`, else the
    one run with params.yaml's values of the params that differ (the defaults)."""
    if reference:
        found = [label for label in variants if label == reference] or [label for label in variants
                                                                           if reference in label]
        if len(found) != 1:
            raise GeneralisationError(f"--reference {reference!r} matches {len(found)} variants; variants: "
                                      + "; ".join(variants))
        return found[0]
    if params is None:
        return None
    defaults = flatten(params.to_dict())
    # Keys that are not params.yaml's (a stage's own record of what it did) do not decide.
    found = [label for label, rs in variants.items()
             if all(rs[0].params.get(k) == logged(defaults[k]) for k in keys if k in defaults)]
    return found[0] if found else None


def _heldout_probs(runs: Sequence[Run], group: str, frames: dict, names: list) -> Optional[np.ndarray]:
    chosen = [r for r in runs if holdout_of(r) == (group,)]
    return np.stack([frames[r.run_id].loc[names, "y_pred"].to_numpy() for r in chosen]) if chosen else None


def mean_difference(y: np.ndarray, image_groups: np.ndarray, pairs: dict[str, tuple[np.ndarray, np.ndarray]],
                    n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """The held-out AUC difference (b - a) averaged over manipulations, with a paired bootstrap CI:
    each replicate resamples the val images once, for every manipulation and both variants alike."""
    def stat(idx: np.ndarray) -> float:
        diffs = []
        for group, (a, b) in pairs.items():
            rows = idx[(y[idx] == 0) | (image_groups[idx] == group)]
            diffs.append(mean_auc(y[rows], b[:, rows]) - mean_auc(y[rows], a[:, rows]))
        return float(np.mean(diffs))

    d = paired_bootstrap(stat, len(y), n_boot, seed=seed)
    return {k: d[k] for k in ("difference", "ci_low", "ci_high")}


def reference_differences(variants: dict[str, list[Run]], reference: str, load=val_predictions,
                          n_boot: int = 1000) -> pd.DataFrame:
    """Per variant and held-out manipulation: held-out AUC (mean, sd over seeds) and its difference
    from the reference variant's, with ffdi compare's paired bootstrap CI over the same val images;
    a row `mean` per variant averages the difference over the manipulations both held out."""
    names, frames = aligned_frames([r for rs in variants.values() for r in rs], load)

    def short(label: str) -> str:
        """The params where a variant differs from the reference (params.yaml's dotted keys first:
        a stage's own record, like the served model's `tta`, repeats one of them)."""
        mine, ref = variants[label][0].params, variants[reference][0].params
        # A param one of them lacks (logged by another ffdi version) differs in nothing: as in varying_keys.
        differ = [k for k in sorted(set(mine) & set(ref)) if k not in (HOLDOUT, "train.seed") and mine[k] != ref[k]]
        differ = [k for k in differ if "." in k] or differ
        return ", ".join(f"{k}={mine[k]}" for k in differ) or label

    first = next(iter(frames.values())).loc[names]
    y, image_groups = first.target.to_numpy(), first.group.fillna("").astype(str).to_numpy()
    groups = manipulations_of([r for rs in variants.values() for r in rs])
    reference_probs = {g: _heldout_probs(variants[reference], g, frames, names) for g in groups}
    rows = []
    for label in [reference, *(v for v in variants if v != reference)]:
        runs, pairs = variants[label], {}
        for g in groups:
            probs, ref = _heldout_probs(runs, g, frames, names), reference_probs[g]
            if probs is None:
                continue
            keep = (y == 0) | (image_groups == g)
            aucs = [roc_auc(y[keep], p[keep]) for p in probs]
            row = {"variant": label, "differs": short(label) if label != reference else "(reference)",
                   "heldout": g, "runs": len(aucs), "heldout_auc": float(np.mean(aucs)),
                   "sd": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else float("nan")}
            if label != reference and ref is not None:
                d = bootstrap_auc_difference(y[keep], ref[:, keep], probs[:, keep], n_boot=n_boot)
                row.update(difference=d["difference"], ci_low=d["ci_low"], ci_high=d["ci_high"])
                pairs[g] = (ref, probs)
            rows.append(row)
        if pairs:
            rows.append({"variant": label, "differs": short(label), "heldout": "mean", "runs": float("nan"),
                         "heldout_auc": float("nan"),
                         "sd": float("nan"), **mean_difference(y, image_groups, pairs, n_boot)})
    return pd.DataFrame(rows, columns=["variant", "differs", "heldout", "runs", "heldout_auc", "sd", "difference",
                                       "ci_low", "ci_high"])


def differences_markdown(table: pd.DataFrame, reference: str) -> list[str]:
    lines = [f"## Against the reference: {reference}", "",
             "Held-out AUC: mean ± sd over seeds. Difference: from the reference's held-out AUC on the same "
             "manipulation, with the paired bootstrap 95% CI of `ffdi compare` (the val images resampled, the same "
             "resample for both). `mean`: the difference averaged over the manipulations, one resample for all. "
             "The CI covers which val images were drawn, not the seed: with one run per variant, a seed's spread "
             "can exceed it.", "",
             "| variant (what differs from the reference) | held out | runs | held-out AUC | difference | 95% CI | verdict |",
             "|---|---|---:|---:|---:|---|---|"]
    for _, r in table.iterrows():
        auc = "" if pd.isna(r["heldout_auc"]) else f"{r['heldout_auc']:.4f}" + (
            "" if pd.isna(r["sd"]) else f" ± {r['sd']:.4f}")
        if pd.isna(r["difference"]):
            diff = ci = verdict = ""
        else:
            diff, ci = f"{r['difference']:+.4f}", f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
            verdict = "better" if r["ci_low"] > 0 else "worse" if r["ci_high"] < 0 else "not distinguishable"
        runs = "" if pd.isna(r["runs"]) else str(int(r["runs"]))
        lines.append(f"| {r['differs']} | {r['heldout']} | {runs} | {auc} | {diff} | {ci} | {verdict} |")
    return lines + [""]


def matrix(long: pd.DataFrame, rows: str, cols: str, value: str = "mean") -> pd.DataFrame:
    """A long table as rows x cols, in the order the long table lists them."""
    m = long.pivot(index=rows, columns=cols, values=value)
    return m.reindex(index=list(dict.fromkeys(long[rows])), columns=list(dict.fromkeys(long[cols])))


def _cell(row) -> str:
    if row["runs"] == 0:
        return "n/a"
    if row["runs"] == 1:
        return f"{row['mean']:.4f}"
    return f"{row['mean']:.4f} ± {row['sd']:.4f}"


def _markdown_table(long: pd.DataFrame, rows: str, cols: str, corner: str) -> list[str]:
    cells = long.assign(cell=long.apply(_cell, axis=1))
    m = matrix(cells, rows, cols, "cell")
    lines = [f"| {corner} | " + " | ".join(map(str, m.columns)) + " |", "|---|" + "---:|" * len(m.columns)]
    for name, row in m.iterrows():
        lines.append(f"| {name} | " + " | ".join(row.tolist()) + " |")
    return lines


def render_markdown(keys: list[str], result: dict[str, dict[str, pd.DataFrame]], runs: Sequence[Run],
                    differences: Optional[pd.DataFrame] = None, reference: Optional[str] = None) -> str:
    lines = ["# Generalisation to unseen manipulations", "",
             f"{len(runs)} finished runs with `{HOLDOUT}` set, grouped by {', '.join(keys) or '(nothing differs)'}. "
             "Each cell is the mean ± sd over runs (seeds); a cell with one run shows its value alone.", "",
             "- **Held out** (a): trained without one manipulation's fakes (nor did they choose the best epoch). "
             "*held-out AUC/AP/TPR*: that manipulation's val fakes against all real val images; "
             "*seen AUC*: the other manipulations' fakes against the same real images; "
             "*val AUC (all)*: every val image.",
             "- **Train on one** (b): trained on one manipulation's fakes alone (and all real images); each column "
             "is the AUC of one manipulation's val fakes against all real val images. The diagonal was seen in "
             "training; the rest were not.", ""]
    for label, t in result.items():
        counts = t["heldout"].groupby("heldout")["runs"].max()
        lines += [f"## {label}", "", "### (a) Held-out manipulation", ""]
        lines += _markdown_table(t["heldout"], "heldout", "metric", "held out")
        lines += ["", "Runs per row: " + ", ".join(f"{g} {n}" for g, n in counts.items()), "",
                  "### (b) Train on one, test on each (AUC)", ""]
        if t["train_on_one"]["runs"].any():
            lines += _markdown_table(t["train_on_one"], "trained_on", "tested_on", "trained on \\ tested on")
        else:
            lines += ["No train-on-one runs (`--only leave-one-out`)."]
        lines += [""]
    if differences is not None and len(differences):
        lines += differences_markdown(differences, reference) + ["![differences](differences.png)", ""]
    commits = sorted({r.tags.get("git.commit", "unknown")[:10] for r in runs})
    if len(commits) > 1:
        lines += [f"Note: these runs come from {len(commits)} commits ({', '.join(commits)}).", ""]
    lines += ["![held out](heldout.png)", "", "![train on one](train_on_one.png)", ""]
    return "\n".join(lines)


def runs_table(runs: Sequence[Run], keys: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": r.run_id, "name": r.name, "holdout": ",".join(holdout_of(r)),
                          "seed": r.params.get("train.seed"), **{k: r.params.get(k) for k in keys},
                          "git_commit": r.tags.get("git.commit", "")} for r in runs])


def render(runs: Sequence[Run], out: Path, params: Optional[Params] = None, reference: Optional[str] = None,
           load=val_predictions, n_boot: int = 1000) -> dict:
    """Write report.md, the heatmaps and CSVs for these runs to `out`; return what was written.

    With several variants, each is also compared with the reference variant (see reference_variant)
    on held-out AUC, with paired bootstrap CIs (differences.csv); `load` reads a run's val predictions.
    """
    keys, result = tables(runs)
    chosen = holdout_runs(runs)
    if not result:
        raise GeneralisationError(f"no finished, evaluated run has {HOLDOUT} set: run `ffdi generalisation` "
                                  "without --no-run first")
    out.mkdir(parents=True, exist_ok=True)
    long = {name: pd.concat([t[name].assign(variant=label) for label, t in result.items()], ignore_index=True)
            for name in ("heldout", "train_on_one")}
    for name, frame in long.items():
        write_csv(out / f"{name}.csv", frame[["variant", *frame.columns[:-1]]])
    write_csv(out / "runs.csv", runs_table(chosen, keys))
    heldout = {label: matrix(t["heldout"], "heldout", "metric").rename_axis(index="held out", columns="")
               for label, t in result.items()}
    cross = {label: matrix(t["train_on_one"], "trained_on", "tested_on").rename_axis(index="trained on",
                                                                                      columns="tested on")
             for label, t in result.items()}
    report.plot_heatmaps(heldout, out / "heldout.png", "held-out manipulation x metric, mean over runs", "mean",
                         vmin=0.0)
    report.plot_heatmaps(cross, out / "train_on_one.png", "trained on one manipulation, tested on each: AUC, "
                         "mean over runs", "AUC")
    differences, ref = None, None
    if len(result) > 1:
        variants = group_by_variant(chosen)[1]
        ref = reference_variant(keys, variants, params, reference)
        if ref is not None:
            differences = reference_differences(variants, ref, load, n_boot)
            write_csv(out / "differences.csv", differences)
            report.plot_differences(differences, out / "differences.png", f"against the reference: {ref}")
    markdown = render_markdown(keys, result, chosen, differences, ref)
    write_text(out / "report.md", markdown)
    return {"keys": keys, "tables": result, "markdown": markdown, "runs": chosen, "differences": differences,
            "reference": ref}


def generalisation(cfg: TrackingConfig, out: Path, log: bool = True, params: Optional[Params] = None,
                   reference: Optional[str] = None) -> dict:
    import mlflow

    tracking.setup(cfg)
    try:
        result = render(finished_pipeline_runs(cfg.experiment), out, params, reference)
    except CompareError as e:  # no such experiment; runs evaluated on different val images
        raise GeneralisationError(str(e)) from None
    if log:
        with tracking.run(cfg, run_name="generalisation"):
            mlflow.set_tags({"ffdi.kind": "generalisation", "generalisation.by": ",".join(result["keys"]),
                             "generalisation.runs": str(len(result["runs"]))})
            mlflow.log_artifacts(str(out), artifact_path="generalisation")
    return result


def default_jobs() -> int:
    """Two at a time from 2 cores: each pipeline takes its share of the cores (hardware.CpuShare),
    and two queued on 2 cores finished in 0.78x the time of one after the other."""
    return 1 if available_cores() < 2 else 2


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="ffdi generalisation", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="passed on to `dvc exp run -S` (repeatable; 'model.se=false,true' sweeps both)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[], help="train.seed values (default: params.yaml's)")
    ap.add_argument("--jobs", "-j", type=int, default=default_jobs(), help="experiments at once (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=480, help="minutes to wait for the queue (default: %(default)s)")
    ap.add_argument("--poll", type=float, default=10, help="seconds between looks at the queue (default: %(default)s)")
    ap.add_argument("--only", choices=("leave-one-out", "train-on-one"), help="queue one kind of experiment only")
    ap.add_argument("--groups", nargs="+", help="the manipulations (default: those named in the train labels)")
    ap.add_argument("--no-run", action="store_true", help="only render from the runs already in MLflow")
    ap.add_argument("--out", type=Path, default=Path("reports/generalisation"))
    ap.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment in params.yaml)")
    ap.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    ap.add_argument("--reference", help="the variant the others are compared with: text its label contains "
                    "(default: the variant run with params.yaml's values)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")

    params = load_params(optional=True)
    cfg = params.tracking
    if args.experiment:
        cfg = TrackingConfig(experiment=args.experiment, uri=cfg.uri, log_model=cfg.log_model)
    failed: list[str] = []
    unfinished: list[str] = []
    if not args.no_run:
        groups = sorted(args.groups) if args.groups else manipulations(params)
        if len(groups) < 2:
            raise GeneralisationError(f"--groups: name at least two manipulations, got {groups}")
        print(f"manipulations: {', '.join(groups)}", flush=True)
        status = run_experiments(groups, args.seeds, args.overrides, args.jobs, args.timeout * 60,
                                 leave_one_out=args.only != "train-on-one", train_on_one=args.only != "leave-one-out",
                                 poll_s=args.poll)
        failed = report_failures(status)
        unfinished = [n for n, s in status.items() if s not in ("Success", "Failed")]
        print(f"{sum(s == 'Success' for s in status.values())} succeeded, {len(failed)} failed, "
              f"{len(unfinished)} unfinished", flush=True)
    result = generalisation(cfg, args.out, log=not args.no_log, params=params, reference=args.reference)
    print(result["markdown"])
    print(f"written to {args.out}/ (report.md, heldout.png, train_on_one.png, heldout.csv, train_on_one.csv, runs.csv"
          f"{', differences.csv, differences.png' if result['differences'] is not None else ''})")
    if failed or unfinished:
        print(f"error: {len(failed)} experiments failed and {len(unfinished)} did not finish; the tables "
              "leave them out", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
