"""What each DVC stage does, as functions of (params, paths). stages/*.py only call these."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ffdi import tracking
from ffdi.config import Params
from ffdi.data import read_manifest
from ffdi.io import save_figure, write_csv, write_json
from ffdi.metrics import binary_metrics, confusion, roc_points
from ffdi.train import (
    fake_probability,
    finish,
    fit,
    load_checkpoint,
    make_loader,
    model_config,
    predict_logits,
    process_group,
    rank_and_world,
    select_device,
)

PREPARED = Path("prepared")
MODEL = Path("models/model.pt")
RUN_REF = Path("reports/mlflow_run.json")
HISTORY = Path("reports/history.csv")
METRICS = Path("metrics.json")
REPORTS = Path("reports")


def resume_dir(params: Params, data_hash: str) -> Path:
    """Where a run keeps its per-epoch state until it completes.

    Outside DVC's outputs (DVC deletes those before a stage reruns) and anchored
    on the project root (temp executors are deleted too). Keyed by everything
    that shapes training, so only an identical rerun resumes.
    """
    key = json.dumps([model_config(params), data_hash, params.tracking.experiment], sort_keys=True)
    return tracking.project_root() / ".ffdi" / "resume" / hashlib.sha256(key.encode()).hexdigest()[:16]


def train(params: Params) -> dict | None:
    """Train and log one MLflow run. Under torchrun, every process trains; rank 0 alone writes
    and returns the best epoch (other ranks return None)."""
    with process_group(params.train):
        if rank_and_world()[0] != 0:
            return _train_worker(params)
        return _train(params)


def _train_worker(params: Params) -> None:
    """A rank > 0 of a DDP group: trains its shard; no files, no MLflow, nothing to report."""
    summary = json.loads((PREPARED / "summary.json").read_text())
    train_m, val_m = read_manifest(PREPARED / "train.csv"), read_manifest(PREPARED / "val.csv")
    fit(params, train_m, val_m, resume_dir(params, summary["data_hash"]))


def _train(params: Params) -> dict:
    tracking.check_reachable(params.tracking)
    summary = json.loads((PREPARED / "summary.json").read_text())
    train_m, val_m = read_manifest(PREPARED / "train.csv"), read_manifest(PREPARED / "val.csv")
    state_dir = resume_dir(params, summary["data_hash"])
    state_dir.mkdir(parents=True, exist_ok=True)
    run_file = state_dir / "run.json"
    prior_run = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else None

    with tracking.run(params.tracking, run_id=prior_run, run_name=tracking.run_name(params)) as run:
        run_id = run.info.run_id
        if prior_run is None:
            tracking.log_params(params)
            import mlflow

            mlflow.set_tags(tracking.start_tags(params, summary["data_hash"]))
            mlflow.set_tag("train.world_size", rank_and_world()[1])
            tracking.write_run_ref(run_file, run_id, params.tracking.experiment)
        steps = tracking.logged_steps(run_id)

        def on_epoch(row: dict) -> None:
            history.append(row)
            write_csv(HISTORY, pd.DataFrame(history))
            tracking.log_epoch(row, steps)

        def on_resume(rows: list[dict]) -> None:
            history.extend(rows)
            for row in rows:  # an epoch saved but killed before it was logged
                tracking.log_epoch(row, steps)

        history: list[dict] = []
        result = fit(params, train_m, val_m, state_dir, on_epoch=on_epoch, on_resume=on_resume)
        write_csv(HISTORY, pd.DataFrame(result["history"]))
        best = result["best"]
        import mlflow

        mlflow.log_metrics({"best_epoch": best["epoch"], f"best_{best['metric']}": best["value"]})
        log_skipped(result["skipped"], "train")
        if params.tracking.log_model:
            model, ckpt = load_checkpoint(state_dir / "best.pt")
            tracking.log_model(model, ckpt["config"]["augment"], step=int(ckpt["epoch"]))
        finish(state_dir, MODEL)
        tracking.write_run_ref(RUN_REF, run_id, params.tracking.experiment)
    return best


def _infer(params: Params, manifest: pd.DataFrame, batch_size: int, tta: bool, desc: str):
    device = select_device(params.train.device)
    model, ckpt = load_checkpoint(MODEL, device)
    channels_last = bool(ckpt["config"]["train"]["channels_last"])
    if channels_last:
        import torch

        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(
        manifest, ckpt["augment"], batch_size, params.train.workers, train=False, on_bad_image=params.data.on_bad_image
    )
    return predict_logits(model, loader, device, channels_last, tta_hflip=tta, desc=desc), ckpt


def log_skipped(skipped: list, stage: str) -> None:
    """Under data.on_bad_image=skip: list the skipped files in an artifact, count them in MLflow."""
    import mlflow

    mlflow.log_metric(f"skipped_images_{stage}", len(skipped))
    if skipped:
        print(f"warning: {len(skipped)} unreadable images skipped in {stage}; see skipped_images.csv in MLflow")
        frame = pd.DataFrame(sorted(set(skipped)), columns=["path", "reason"])
        mlflow.log_text(frame.to_csv(index=False), f"{stage}/skipped_images.csv")


def evaluate(params: Params) -> dict:
    cfg = params.eval
    tracking.check_reachable(params.tracking)
    val = read_manifest(PREPARED / "val.csv")
    res, ckpt = _infer(params, val, cfg.batch_size, tta=False, desc="evaluate")
    kept = val.iloc[res.index]
    prob, y = fake_probability(res.logits), kept.target.to_numpy()
    scores = binary_metrics(y, prob, cfg.threshold, cfg.target_fpr)

    predictions = pd.DataFrame(
        {"img_name": kept.img_name, "target": y, "y_pred": prob, "predicted": (prob >= cfg.threshold).astype(int)}
    )
    write_csv(REPORTS / "val_predictions.csv", predictions)
    roc = roc_points(y, prob)
    write_csv(REPORTS / "roc.csv", pd.DataFrame(roc))
    cm = confusion(y, prob, cfg.threshold)
    plot_roc(roc, scores, REPORTS / "roc.png")
    plot_confusion(cm, REPORTS / "confusion.png")

    report = {
        "val": scores,
        "target_fpr": cfg.target_fpr,
        "threshold": cfg.threshold,
        "best_epoch": int(ckpt["epoch"]),
        "images": int(len(kept)),
        "skipped_images": len(res.skipped),
        "confusion": {"tn": int(cm[0, 0]), "fp": int(cm[0, 1]), "fn": int(cm[1, 0]), "tp": int(cm[1, 1])},
    }
    write_json(METRICS, report)

    with tracking.run(params.tracking, run_id=tracking.read_run_ref(RUN_REF)):
        import mlflow

        mlflow.log_metrics({f"eval_{k}": v for k, v in scores.items()})
        log_skipped(res.skipped, "evaluate")
        for name in ("roc.png", "confusion.png", "roc.csv", "val_predictions.csv"):
            mlflow.log_artifact(str(REPORTS / name), artifact_path="evaluate")
        mlflow.log_artifact(str(METRICS), artifact_path="evaluate")
    return report


# What an unreadable test image scores under on_bad_image=skip: a submission needs every row,
# and 0.5 claims nothing either way.
UNREADABLE_SCORE = 0.5


def predict(params: Params) -> pd.DataFrame:
    cfg = params.predict
    tracking.check_reachable(params.tracking)
    split = json.loads((PREPARED / "summary.json").read_text())["predict_split"]
    manifest = read_manifest(PREPARED / f"{split}.csv")
    res, _ = _infer(params, manifest, cfg.batch_size, tta=cfg.tta_hflip, desc=f"predict {split}")
    prob = np.full(len(manifest), UNREADABLE_SCORE)
    prob[res.index] = fake_probability(res.logits)
    submission = pd.DataFrame({"img_name": manifest.img_name, "y_pred": prob})
    write_csv(cfg.out, submission)

    with tracking.run(params.tracking, run_id=tracking.read_run_ref(RUN_REF)):
        import mlflow

        mlflow.set_tags({"predict.split": split})
        mlflow.log_metric("predict_images", len(submission))
        log_skipped(res.skipped, "predict")
        mlflow.log_artifact(cfg.out, artifact_path="predict")
    return submission


def plot_roc(pts: dict[str, np.ndarray], scores: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(pts["fpr"], pts["tpr"], label=f"AUC = {scores['roc_auc']:.4f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false positive rate (real called fake)", ylabel="true positive rate", title="ROC, val")
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, out)


def plot_confusion(cm: np.ndarray, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.8, 3.4), dpi=100)
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["real", "fake"], yticklabels=["real", "fake"])
    ax.set(xlabel="predicted", ylabel="true", title="confusion, val")
    fig.tight_layout()
    save_figure(fig, out)


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def stage_main(fn) -> None:
    """Run a stage; user errors (bad params or data) print one clear line, not a traceback.

    SIGTERM (a scheduler's or `kill`'s stop) is handled like Ctrl-C: the MLflow run
    is marked KILLED and the last complete epoch stays saved for the rerun.
    """
    import signal
    import sys

    signal.signal(signal.SIGTERM, _terminate)
    from ffdi.config import ConfigError, load_params
    from ffdi.data import DataError
    from ffdi.metrics import MetricError
    from ffdi.models import WeightsError
    from ffdi.tracking import TrackingError

    try:
        fn(load_params(os.environ.get("FFDI_PARAMS", "params.yaml")))
    except (ConfigError, DataError, MetricError, WeightsError, TrackingError, FileNotFoundError) as e:
        message = str(e).strip()
        if "Original Traceback" in message:  # raised in a DataLoader worker: keep its own last line
            message = message.splitlines()[-1].split(": ", 1)[-1]
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume after the last complete epoch", file=sys.stderr)
        sys.exit(130)
