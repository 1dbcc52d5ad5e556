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
from pathlib import Path
from typing import Any, Iterator, Optional

from ffdi.config import Params, TrackingConfig, flatten
from ffdi.io import write_json

# The model's runtime needs, recorded with it; passing them skips MLflow's slow inference.
MODEL_REQUIREMENTS = ("torch", "torchvision", "timm", "numpy")


class TrackingError(RuntimeError):
    pass


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


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri(cfg: TrackingConfig) -> str:
    if cfg.uri:
        return cfg.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def artifact_root() -> str:
    return (project_root() / "mlartifacts").as_uri()


def setup(cfg: TrackingConfig) -> str:
    """Point MLflow at the store; return the experiment id, creating the experiment if new."""
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    location = artifact_root() if uri.startswith("sqlite:") else None
    try:
        return client.create_experiment(cfg.experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        # Another queued experiment created it between our lookup and create.
        return client.get_experiment_by_name(cfg.experiment).experiment_id


@contextlib.contextmanager
def run(cfg: TrackingConfig, run_id: Optional[str] = None, run_name: Optional[str] = None) -> Iterator[Any]:
    """Start (or reopen, given `run_id`) a run; an exception marks it FAILED with the error."""
    import mlflow

    experiment_id = setup(cfg)
    active = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id, run_name=run_name)
    try:
        yield active
    except KeyboardInterrupt:
        mlflow.set_tag("ffdi.error", "interrupted")
        mlflow.end_run("KILLED")
        raise
    except BaseException as e:
        mlflow.set_tag("ffdi.error", f"{type(e).__name__}: {e}"[:5000])
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def run_name(params: Params) -> str:
    exp = os.environ.get("DVC_EXP_NAME")
    if exp:
        return exp
    return f"{params.model.arch}{'-se' if params.model.se else ''}-seed{params.train.seed}"


def git_info(root: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git.commit": commit or "unknown", "git.dirty": str(bool(dirty)).lower() if commit else "unknown"}


def start_tags(params: Params, data_hash: str) -> dict[str, str]:
    return {
        **git_info(Path.cwd()),
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "data.hash": data_hash,
        "data.root": params.data.root,
        "model.variant": f"{params.model.arch}{'-se' if params.model.se else ''}",
    }


def log_params(params: Params) -> None:
    import mlflow

    flat = {k: ("null" if v is None else v) for k, v in flatten(params.to_dict()).items()}
    mlflow.log_params(flat)


def log_epoch(row: dict, logged_steps: set[int]) -> None:
    """Log one epoch's metrics with step = epoch, unless that step is already there."""
    import mlflow

    epoch = int(row["epoch"])
    if epoch in logged_steps:
        return
    metrics = {k: float(v) for k, v in row.items() if k != "epoch"}
    mlflow.log_metrics(metrics, step=epoch)
    logged_steps.add(epoch)


def logged_steps(run_id: str, key: str = "val_auc") -> set[int]:
    import mlflow

    return {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, key)}


def log_model(model: Any, augment: dict) -> str:
    """Log the model as an MLflow LoggedModel; return its models:/ URI.

    Pickle format, not MLflow 3's torch.export default: users get back the timm
    module itself (SE blocks and all) and any batch size, not a traced graph.
    The preprocessing it expects travels in the model's metadata.
    """
    import mlflow
    import numpy as np
    from importlib.metadata import version

    size = int(augment["image_size"])
    example = np.zeros((2, 3, size, size), dtype=np.float32)
    info = mlflow.pytorch.log_model(
        model.cpu().eval(),
        name="model",
        input_example=example,
        pip_requirements=[f"{p}=={version(p)}" for p in MODEL_REQUIREMENTS],
        serialization_format="pickle",
        metadata={"preprocess": augment, "output": "logits (N, 2); softmax[:, 1] = probability of fake"},
    )
    return info.model_uri


def write_run_ref(path: str | Path, run_id: str, experiment: str) -> None:
    write_json(path, {"run_id": run_id, "experiment": experiment})


def read_run_ref(path: str | Path) -> str:
    path = Path(path)
    try:
        return json.loads(path.read_text())["run_id"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no MLflow run reference; run the train stage first") from None
