"""An evaluation in MLflow: the metric names of what metrics.json holds (`evaluation_metrics`), read
back by compare, generalisation and the benchmarks, and `log_evaluation`, which the evaluate stage
logs into the pipeline's run.
"""

from __future__ import annotations

from pathlib import Path

from ffdi.schema import (
    AUC,
    ENSEMBLE,
    EVAL,
    EVAL_GROUP_AUC,
    EVAL_VIDEO,
    EVALUATE_ARTIFACTS,
    EVALUATION_DETAILS,
    EXTRA,
    GROUP_AUC,
    HELDOUT,
    ROBUST,
    ROBUSTNESS_DIR,
    ROBUSTNESS_PREDICTIONS,
    SEEN,
    VAL_PREDICTIONS,
    VAL_VIDEO,
    VAL_VIDEO_PREDICTIONS,
    VIDEO,
)
from ffdi.tracking.mlflow_run import log_skipped


def evaluation_metrics(report: dict, seconds: dict | None = None) -> dict[str, float]:
    """The MLflow metrics of an evaluation report (what details.json holds), by name. Everything that
    reads runs back (compare, generalisation, the benchmarks without MLflow) uses these names."""
    m = {f"{EVAL}{k}": v for k, v in report["val"].items()}
    m[f"{EVAL}roc_auc_no_tta"] = report["val_no_tta"]["roc_auc"]
    m.update({f"{EVAL_GROUP_AUC}{g}": gm["roc_auc"] for g, gm in report.get("groups", {}).items()})
    m.update(
        {
            f"{EVAL}{k}": report[k]
            for k in ("group_mean_auc", "group_worst_auc", "degraded_mean_auc", "degraded_worst_auc")
            if k in report
        }
    )
    video = report.get(VAL_VIDEO, {})
    m.update({f"{EVAL_VIDEO}{k}": v for k, v in video.items() if _number(v)})
    m.update({f"{EVAL_VIDEO}{AUC}{g}": gm["roc_auc"] for g, gm in video.get("groups", {}).items()})
    for prefix, key in ((HELDOUT, "heldout"), (SEEN, "seen")):
        m.update({f"{prefix}{k}": v for k, v in report.get(key, {}).items()})
    m.update({f"{ENSEMBLE}{k}": v for k, v in report.get("ensemble", {}).items() if _number(v)})
    for name, e in report.get("extra_sets", {}).items():
        m.update({f"{EXTRA}{name}/{k}": v for k, v in e.items() if _number(v)})
        m.update({f"{EXTRA}{name}/{AUC}{g}": gm["roc_auc"] for g, gm in e.get("groups", {}).items()})
        if "video" in e:  # a folder of frames: its video-level AUC
            m[f"{EXTRA}{name}/{VIDEO}roc_auc"] = e["video"]["roc_auc"]
    for kind, severities in report.get("robustness", {}).items():
        if kind != "clean":
            for key, r in severities.items():
                section = f"{ROBUST}{kind}/{key}/"
                m.update({f"{section}auc": r["roc_auc"], f"{section}accuracy": r["accuracy"]})
                # + manipulation: robust/jpeg/70/auc/splice, beside eval/auc/splice
                m.update(
                    {f"{section}{AUC}{k.removeprefix(GROUP_AUC)}": v for k, v in r.items() if k.startswith(GROUP_AUC)}
                )
    m.update({f"{EVAL}seconds/{k}": v for k, v in (seconds or {}).items()})
    return m


def group_aucs(metrics: dict[str, float]) -> dict[str, float]:
    """A run's per-manipulation AUCs, from its metrics: {manipulation: AUC}."""
    return {k.removeprefix(EVAL_GROUP_AUC): v for k, v in metrics.items() if k.startswith(EVAL_GROUP_AUC)}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def log_evaluation(ev, reports: Path, metrics_file: Path, extra_paths: dict[str, str]) -> None:
    """Log an ffdi.evaluation.evaluate.Evaluation into the active run: its metrics, the files that
    write_reports wrote under `reports` (details.json among them), metrics.json, each extra set's
    predictions and path."""
    import mlflow

    mlflow.log_metrics(evaluation_metrics(ev.report, ev.seconds))
    if "ensemble" in ev.report:
        mlflow.set_tag("predict.ensemble", " + ".join(ev.report["ensemble"]["models"]))
    for name, e in ev.report.get("extra_sets", {}).items():
        mlflow.set_tags({f"extra.{name}.data_hash": e["data_hash"], f"extra.{name}.path": extra_paths[name]})
        mlflow.log_text(ev.extra[name].to_csv(index=False), f"{EVALUATE_ARTIFACTS}/extra_sets/{name}_predictions.csv")
    for stage, skipped in ev.skipped.items():
        log_skipped(skipped, stage)
    for name in (
        "roc.png",
        "confusion.png",
        "roc.csv",
        VAL_PREDICTIONS,
        "groups.png",
        "groups.csv",
        "robustness.png",
        "explain.png",
        "history.png",
        EVALUATION_DETAILS,
    ):
        mlflow.log_artifact(str(reports / name), artifact_path=EVALUATE_ARTIFACTS)
    if VAL_VIDEO in ev.report:
        mlflow.log_artifact(str(reports / VAL_VIDEO_PREDICTIONS), artifact_path=EVALUATE_ARTIFACTS)
    if "robustness" in ev.report:
        mlflow.log_artifacts(str(reports / ROBUSTNESS_DIR), artifact_path=f"{EVALUATE_ARTIFACTS}/{ROBUSTNESS_DIR}")
        mlflow.log_artifact(str(reports / ROBUSTNESS_PREDICTIONS), artifact_path=EVALUATE_ARTIFACTS)
    mlflow.log_artifact(str(metrics_file), artifact_path=EVALUATE_ARTIFACTS)
