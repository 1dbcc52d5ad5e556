"""MLflow tracking: one MLflow run per pipeline run, shared by train, evaluate and predict.

The train stage opens the run and writes its id to a small JSON file (a DVC
output); evaluate and predict reopen that run by id. The store is SQLite at the
project root, anchored on DVC_ROOT: `dvc exp run --temp/--queue` run stages in
temporary copies of the repo, and a cwd-relative store would vanish with them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ffdi.config import Params, TrackingConfig, flatten
from ffdi.errors import TrackingError
from ffdi.files import project_root, write_json
from ffdi.schema import (
    DATA_HASH_TAG,
    EPOCH_TRAIN,
    EPOCH_VAL,
    EPOCH_VAL_AUC,
    HW,
    MODELS_TAG,
    REEVALUATION,
    RUN_KIND_TAG,
    SKIPPED_IMAGES,
    TRAIN_RUN_TAG,
)

# MLflow 3's UI opens experiments without this tag as GenAI (traces, prompts);
# this one makes it show the runs table and metric charts of model training.
KIND_TAG = "mlflow.experimentKind"
# The experiment's description in the UI (its Description tab): how to read a run.
DESCRIPTION_TAG = "mlflow.note.content"
DESCRIPTION = """One run per pipeline run (`dvc repro`, `dvc exp run`), named after its DVC experiment, or after
the variant (`se-resnet18-seed0`). A DVC experiment that reuses a cached training (`dvc exp run -S
'+eval.extra_sets.x=DIR'`) gets a run of its own, nested under the training run (tag `ffdi.train_run`).

- **Charts, in sections**: `epoch/train` and `epoch/val` are the training curves, step = epoch
  (`loss`, `acc`, `auc`, the epoch's `img_per_s`); the same columns in the run's `reports/history.csv`, drawn
  in `evaluate/history.png`. Then the final metrics (evaluate, step 0): `eval` on val (`eval/roc_auc` is the
  challenge's metric), `eval/auc` per manipulation, `heldout` for held-out manipulations,
  `robust/<kind>/<severity>` under degradations, `extra/<set>` for other labelled sets; `hw` and `train`
  (best epoch) last.
- **How it computed**: the `hw.*` tags (device, precision, threads, GPU); params are `params.yaml`'s; the
  Dataset column: the train and val manifests (digest, rows).
- **Artifacts**: `evaluate/` (ROC, confusion, per manipulation, robustness, explanations; `details.json`, the
  whole report, and `metrics.json`, its headline), `predict/` (the submission), `reproduce/` (params,
  packages, git state), and one logged model, `detector`: the checkpoint, loaded by `ffdi score --model`,
  served by `ffdi serve`.
"""
EXPERIMENT_TAGS = {KIND_TAG: "custom_model_development", DESCRIPTION_TAG: DESCRIPTION}


def check_reachable(cfg: TrackingConfig, timeout: float = 5.0) -> None:
    """Fail in seconds, before any training, if a remote tracking server does not answer.

    MLflow's own client retries with backoff for minutes; a typo in tracking.uri
    should not cost an epoch of compute before it shows.
    """
    import urllib.error
    import urllib.request

    uri = tracking_uri(cfg)
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
            r.read()
    except urllib.error.HTTPError:
        return  # it answered; auth or routing is MLflow's business
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(
            f"tracking.uri {uri}: server unreachable ({reason}). Start it, or set tracking.uri: null "
            "to use the local SQLite store"
        ) from None


def tracking_uri(cfg: TrackingConfig) -> str:
    if cfg.uri:
        return cfg.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def artifact_root() -> str:
    return (project_root() / "mlartifacts").as_uri()


@contextlib.contextmanager
def store_lock(timeout: float = 120.0) -> Iterator[None]:
    """Serialise the few heavy writes to a local SQLite store across processes.

    `dvc queue start -j N` runs N pipelines at once against one mlflow.db. The
    first ones race to create the tables and the experiment ("table already
    exists", "database is locked"); run starts and ends are short transactions
    that we also serialise. Per-metric writes rely on SQLite's busy timeout.
    """
    from filelock import FileLock

    path = project_root() / ".ffdi" / "mlflow.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=timeout):
        yield


def setup(cfg: TrackingConfig) -> str:
    """Point MLflow at the store; return the experiment id, creating the experiment if new."""
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    with store_lock():
        client = mlflow.MlflowClient()  # creates or migrates the tables on first use
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            location = artifact_root() if uri.startswith("sqlite:") else None
            return client.create_experiment(cfg.experiment, artifact_location=location, tags=EXPERIMENT_TAGS)
        for key, value in EXPERIMENT_TAGS.items():  # an experiment made by an older ffdi, or by hand
            # An older ffdi's description names metrics that are no longer logged; a person's own stays.
            stale = key == DESCRIPTION_TAG and exp.tags.get(key, "").startswith(DESCRIPTION.split(",")[0])
            if exp.tags.get(key) is None or (stale and exp.tags[key] != value):
                client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id


@contextlib.contextmanager
def run(
    cfg: TrackingConfig, run_id: str | None = None, run_name: str | None = None, parent_run_id: str | None = None
) -> Iterator[Any]:
    """Start (or reopen, given `run_id`) a run, nested under `parent_run_id` if given; an exception marks
    it FAILED with the error."""
    import mlflow

    experiment_id = setup(cfg)
    with store_lock():
        active = mlflow.start_run(
            run_id=run_id,
            experiment_id=None if run_id else experiment_id,
            run_name=run_name,
            parent_run_id=parent_run_id,
        )
    try:
        yield active
    except KeyboardInterrupt:
        _end("KILLED", "interrupted")
        raise
    except BaseException as e:
        _end("FAILED", f"{type(e).__name__}: {e}"[:5000])
        raise
    else:
        _end("FINISHED")


PARENT_TAG = "mlflow.parentRunId"


@contextlib.contextmanager
def stage_run(params: Params, run_ref: str | Path, marker: str) -> Iterator[Any]:
    """The run that evaluate or predict logs into: the training run of `run_ref`, unless that run
    already holds `marker` (the stage's own metric, eval/roc_auc or predict/images) from an earlier
    pipeline. Then DVC reused a cached training for another experiment (`dvc exp run -S
    '+eval.extra_sets.x=DIR'`), and the stage logs into a run of its own, nested under the training run
    and named after the DVC experiment, so that a finished run's metrics never change. Evaluate and
    predict of one DVC experiment share that run."""
    import mlflow

    cfg = params.tracking
    train_id = read_run_ref(run_ref)
    experiment_id = setup(cfg)
    client = mlflow.MlflowClient()
    train = client.get_run(train_id)
    if marker not in train.data.metrics:
        with run(cfg, run_id=train_id) as active:
            yield active
        return
    exp_name = os.environ.get("DVC_EXP_NAME", "")
    reuse = None
    if exp_name:  # the other stage of this DVC experiment may have opened it already
        siblings = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{train_id}' and tags.`dvc.exp_name` = '{exp_name}'",
            order_by=["attributes.start_time DESC"],
        )
        reuse = next((r.info.run_id for r in siblings if marker not in r.data.metrics), None)
    name = exp_name or f"{train.info.run_name}-{marker.split('/')[0]}"
    with run(cfg, run_id=reuse, run_name=None if reuse else name, parent_run_id=None if reuse else train_id) as active:
        if reuse is None:
            log_params(params)
            inherited = {k: v for k, v in train.data.tags.items() if k.startswith(("hw.", "dvc.", "data.", "git."))}
            mlflow.set_tags(
                {
                    **inherited,
                    **git_info(Path.cwd()),
                    RUN_KIND_TAG: REEVALUATION,
                    TRAIN_RUN_TAG: train_id,
                    "dvc.exp_name": exp_name,
                }
            )
        yield active


def link_models(train_id: str) -> None:
    """Point the active run to the models its training run logged (tag ffdi.models: name=models:/<id>),
    instead of logging them again."""
    import mlflow

    active = mlflow.active_run()
    found = mlflow.search_logged_models(
        experiment_ids=[active.info.experiment_id],
        filter_string=f"source_run_id = '{train_id}'",
        output_format="list",
    )
    mlflow.set_tag(MODELS_TAG, ", ".join(sorted(f"{m.name}=models:/{m.model_id}" for m in found)))


def _end(status: str, error: str | None = None) -> None:
    import mlflow

    with store_lock():
        if error:
            mlflow.set_tag("ffdi.error", error)
        mlflow.end_run(status)


def run_name(params: Params) -> str:
    exp = os.environ.get("DVC_EXP_NAME")
    if exp:
        return exp
    return f"{'se-' if params.model.se else ''}{params.model.arch}-seed{params.train.seed}"


CODE_PATHS = ("ffdi", "stages", "dvc.yaml", "requirements.txt")


def git_info(root: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    # Dirty means the *code* differs from the commit. Outputs that the pipeline rewrites and
    # params.yaml (which `dvc exp run -S` edits, and which is logged in full) don't count.
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    return {"git.commit": commit or "unknown", "git.dirty": str(bool(dirty)).lower() if commit else "unknown"}


def start_tags(params: Params, data_hash: str) -> dict[str, str]:
    return {
        RUN_KIND_TAG: "pipeline",
        **git_info(Path.cwd()),
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        DATA_HASH_TAG: data_hash,
        "data.root": params.data.root,
        "model.variant": f"{params.model.arch}{'-se' if params.model.se else ''}",
        **dvc_lock_hashes(),
    }


def dvc_lock_hashes(lock: Path = Path("dvc.lock")) -> dict[str, str]:
    """The md5s DVC recorded for the data and the prepared manifests of this run.

    The stage runs in the experiment's own copy under `--temp/--queue`, whose
    dvc.lock DVC updates stage by stage, so cwd's dvc.lock is this run's.
    """
    import yaml

    try:
        prepare = yaml.safe_load(lock.read_text())["stages"]["prepare"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return {}
    tags = {}
    for dep in prepare.get("deps", []):
        if not dep["path"].endswith(".py"):
            tags["dvc.data_md5"] = dep.get("md5", "")
    for out in prepare.get("outs", []):
        tags["dvc.prepared_md5"] = out.get("md5", "")
    return tags


def environment_report() -> str:
    """Python, platform and every installed distribution with its version."""
    import platform
    from importlib.metadata import distributions

    import torch

    lines = [
        f"# python {platform.python_version()} on {platform.platform()}",
        f"# torch {torch.__version__}, cuda available: {torch.cuda.is_available()}, threads: {torch.get_num_threads()}",
    ]
    pkgs = sorted({f"{d.metadata['Name']}=={d.version}" for d in distributions() if d.metadata["Name"]}, key=str.lower)
    return "\n".join(lines + pkgs) + "\n"


def log_params(params: Params) -> None:
    """All params, flattened, plus the resolved params file and the package versions as artifacts."""
    import mlflow
    import yaml

    flat = {k: ("null" if v is None else v) for k, v in flatten(params.to_dict()).items()}
    mlflow.log_params(flat)
    mlflow.log_text(yaml.safe_dump(params.to_dict(), sort_keys=False), "reproduce/params.yaml")
    mlflow.log_text(environment_report(), "reproduce/packages.txt")


def epoch_metric_name(column: str) -> str:
    """The MLflow name of a history.csv column: val_auc -> epoch/val/auc, lr -> epoch/train/lr,
    epoch_seconds -> hw/epoch_seconds."""
    if column.startswith("val_"):
        return EPOCH_VAL + column.removeprefix("val_")
    if column.startswith("train_"):
        return EPOCH_TRAIN + column.removeprefix("train_")
    if column in ("lr", "skipped_images"):
        return EPOCH_TRAIN + column
    return HW + column


def log_epoch(row: dict, logged_steps: set[int]) -> None:
    """Log one epoch's metrics with step = epoch, unless that step is already there."""
    import mlflow

    epoch = int(row["epoch"])
    if epoch in logged_steps:
        return
    # Strings (the device, the precision) are the run's tags already.
    metrics = {epoch_metric_name(k): float(v) for k, v in row.items() if k != "epoch" and not isinstance(v, str)}
    mlflow.log_metrics(metrics, step=epoch)
    logged_steps.add(epoch)


def logged_steps(run_id: str, key: str = EPOCH_VAL_AUC) -> set[int]:
    import mlflow

    return {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, key)}


def log_skipped(skipped: list, stage: str) -> None:
    """Under data.on_bad_image=skip: list the skipped files in an artifact, count them in MLflow."""
    import mlflow
    import pandas as pd

    mlflow.log_metric(f"{SKIPPED_IMAGES}{stage}", len(skipped))
    if skipped:
        print(f"warning: {len(skipped)} unreadable images skipped in {stage}; see skipped_images.csv in MLflow")
        frame = pd.DataFrame(sorted(set(skipped)), columns=["path", "reason"])
        mlflow.log_text(frame.to_csv(index=False), f"{stage}/skipped_images.csv")


def log_datasets(prepared: Path, sets: dict[str, Any]) -> None:
    """Record each manifest a run trained or validated on as an MLflow dataset input (the runs table's
    Dataset column): its name, a digest of its rows (names, targets, manipulations) and its size.
    sets: context ("training", "validation") -> (name, manifest rows)."""
    import hashlib

    import mlflow

    for context, (name, rows) in sets.items():
        table = rows[["img_name", "target", "group"]].reset_index(drop=True)
        digest = hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()[:16]
        source = str((Path(prepared) / f"{name}.csv").resolve())
        mlflow.log_input(mlflow.data.from_pandas(table, source=source, name=name, digest=digest), context=context)


def write_run_ref(path: str | Path, run_id: str, experiment: str) -> None:
    write_json(path, {"run_id": run_id, "experiment": experiment})


def read_run_ref(path: str | Path) -> str:
    path = Path(path)
    try:
        return json.loads(path.read_text())["run_id"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no MLflow run reference; run the train stage first") from None
