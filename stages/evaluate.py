"""Stage `evaluate`: score val with the same Detector settings as predict; metrics.json and plots.

metrics.json holds:
- `val`: the overall val metrics; `val_no_tta`: the same without test-time views;
- `groups`: per manipulation, its fakes against all real images (`group_mean_auc`, `group_worst_auc`);
- `heldout` / `seen`: the held-out manipulations' fakes (data.holdout), and the others', against all real;
- `extra_sets.<name>`: each labelled folder of eval.extra_sets, scored by the same Detector;
- `robustness.<kind>.<severity>`: val under each degradation of eval.degradations (`robustness.clean`
  is the same images undegraded);
- `ensemble`: with predict.ensemble, the val metrics of that ensemble (this model and those), which
  then writes the submission; every other figure is this run's model alone.
"""

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ffdi import degrade, explain, hardware, metrics, report, serving, tracking
from ffdi.cli import stage_main
from ffdi.data import build_manifest, read_labels, read_manifest
from ffdi.detector import Detector, Ensemble
from ffdi.errors import DataError
from ffdi.io import project_root, write_csv, write_json
from stages import METRICS, MODEL, PREPARED, REPORTS, RUN_REF

ROBUSTNESS_DIR = REPORTS / "robustness"  # one CSV per kind of degradation: DVC draws one plot each


def labelled_folder(name: str, root: str, data) -> tuple[pd.DataFrame, str]:
    """An extra set's manifest (val layout: data.val_dir + data.val_labels under `root`) and a
    fingerprint of its names, labels and file sizes.

    DVC cannot list the folders of a params mapping as deps of one stage, so the fingerprint goes
    into metrics.json and MLflow instead: a number is always traceable to the data it came from.
    """
    key = f"eval.extra_sets.{name}"
    folder = Path(root)
    if not folder.is_dir():
        raise DataError(f"{key}: folder {root!r} not found")
    labels_path = folder / data.val_labels
    labels = read_labels(labels_path, require_target=True, group_column=data.group_column)
    if set(labels.target) != {0, 1}:
        raise DataError(f"{labels_path} ({key}): both real (0) and fake (1) images are needed for ROC-AUC, "
                        f"got only target {sorted(set(labels.target))}")
    manifest = build_manifest(folder, data.val_dir, labels, labels_path)
    digest = hashlib.sha256(manifest[["img_name", "target", "group"]].to_csv(index=False).encode())
    for path in manifest.path:
        digest.update(f"{os.path.getsize(path)}\n".encode())
    return manifest, digest.hexdigest()[:16]


def scored_metrics(frame: pd.DataFrame, prob: np.ndarray, cfg) -> dict:
    """The binary metrics of scored rows, per manipulation too where the labels name them."""
    y = frame.target.to_numpy()
    out = metrics.binary_metrics(y, prob, cfg.threshold, cfg.target_fpr, cfg.fprs)
    per_group = metrics.group_metrics(y, prob, frame.group, cfg.fprs)
    if per_group:
        out["groups"] = per_group
        out.update(metrics.summarise_groups(per_group))
    return out


def group_table(kept: pd.DataFrame, prob: np.ndarray, per_group: dict, fprs, heldout) -> tuple[dict, pd.DataFrame]:
    """Rows of reports/groups.csv; without manipulation names, one row for all fakes together."""
    if not per_group:
        per_group = {"all fakes": metrics.ranking_metrics(kept.target.to_numpy(), prob, fprs)}
    fakes = kept.group[kept.target == 1]
    rows = [{"group": g, "fakes": int((fakes == g).sum()) if g != "all fakes" else len(fakes),
             "heldout": g in heldout, **m} for g, m in per_group.items()]
    return per_group, pd.DataFrame(rows)


def main(params):
    cfg = params.eval
    tracking.check_reachable(params.tracking)
    degradations = degrade.parse_all(cfg.degradations)
    share = hardware.CpuShare(project_root() / ".ffdi" / "cpu")
    hardware.apply_threads(hardware.resolve_threads(params.train.threads, share))
    detector = Detector.load(MODEL, params.train.device, tta=params.predict.tta)
    workers = hardware.resolve_workers(params.train.workers, share.threads(), detector.device)
    val = read_manifest(PREPARED / "val.csv")
    # Checked before the val scoring, so a wrong path fails in seconds.
    extra = {name: labelled_folder(name, root, params.data) for name, root in cfg.extra_sets.items()}
    t0 = time.perf_counter()
    res = detector.score_manifest(val, cfg.batch_size, workers, params.data.on_bad_image, "evaluate")
    seconds = {"val": time.perf_counter() - t0}
    kept = val.iloc[res.index].reset_index(drop=True)
    y, prob = kept.target.to_numpy(), res.prob
    scores = metrics.binary_metrics(y, prob, cfg.threshold, cfg.target_fpr, cfg.fprs)
    heldout = list(params.data.holdout)
    per_group = metrics.group_metrics(y, prob, kept.group, cfg.fprs)
    report_ = {
        "val": scores,
        "val_no_tta": {"roc_auc": metrics.roc_auc(y, res.prob_single_view)},
        "tta": list(params.predict.tta),
        "precision": detector.precision,
        "target_fpr": cfg.target_fpr,
        "threshold": cfg.threshold,
        "images": int(len(kept)),
        "skipped_images": len(res.skipped),
    }
    if per_group:
        report_["groups"] = per_group
        report_.update(metrics.summarise_groups(per_group))
    if heldout:
        report_.update(metrics.heldout_metrics(y, prob, kept.group, heldout, cfg.fprs))

    if params.predict.ensemble:
        # The submission's scorer when predict.ensemble is set: this model averaged with those.
        tracking.setup(params.tracking)
        ensemble = Ensemble.extend(detector, params.predict.ensemble, params.train.device)
        r = ensemble.score_manifest(val, cfg.batch_size, workers, params.data.on_bad_image, "ensemble")
        frame = val.iloc[r.index].reset_index(drop=True)
        report_["ensemble"] = {**scored_metrics(frame, r.prob, cfg), "models": [m.source for m in ensemble.members]}

    # Other data sets, scored by the same Detector (same views, same precision).
    extra_scores = {}
    for name, (manifest, data_hash) in extra.items():
        t0 = time.perf_counter()
        r = detector.score_manifest(manifest, cfg.batch_size, workers, params.data.on_bad_image, f"extra {name}")
        frame = manifest.iloc[r.index].reset_index(drop=True)
        extra_scores[name] = (frame, r)
        report_.setdefault("extra_sets", {})[name] = {
            **scored_metrics(frame, r.prob, cfg),
            "images": int(len(frame)), "skipped_images": len(r.skipped), "data_hash": data_hash,
        }
        seconds[f"extra_{name}"] = time.perf_counter() - t0

    # Robustness: the same images degraded, real and fake alike, before the Detector's preprocessing.
    t0 = time.perf_counter()
    rows = degrade.subset(kept, cfg.robustness_images)
    clean = prob[rows.index.to_numpy()]
    robust = degrade.robustness(detector, rows, clean, degradations, cfg.threshold, cfg.fprs, cfg.batch_size,
                                workers)
    clean_auc = metrics.roc_auc(rows.target.to_numpy(), clean)
    if degradations:
        report_["robustness"] = {"clean": {"roc_auc": clean_auc, "images": int(len(rows))}, **degrade.nested(robust)}
        seconds["robustness"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    predictions = pd.DataFrame({"img_name": kept.img_name, "target": y, "group": kept.group, "y_pred": prob,
                                "predicted": (prob >= cfg.threshold).astype(int)})
    write_csv(REPORTS / "val_predictions.csv", predictions)
    roc = metrics.roc_points(y, prob)
    write_csv(REPORTS / "roc.csv", pd.DataFrame(roc))
    cm = metrics.confusion(y, prob, cfg.threshold)
    report_["confusion"] = {"tn": int(cm[0, 0]), "fp": int(cm[0, 1]), "fn": int(cm[1, 0]), "tp": int(cm[1, 1])}
    report.plot_roc(roc, scores["roc_auc"], REPORTS / "roc.png")
    report.plot_confusion(cm, REPORTS / "confusion.png")
    explain.gallery(detector, kept.assign(y_pred=prob), REPORTS / "explain.png", n=4, threshold=cfg.threshold)
    bars, groups_csv = group_table(kept, prob, per_group, cfg.fprs, heldout)
    write_csv(REPORTS / "groups.csv", groups_csv)
    report.plot_groups(bars, REPORTS / "groups.png", tuple(heldout),
                       "AUC per manipulation, val" if per_group else "AUC, val (the labels name no manipulation)")
    robust_table = degrade.table(robust)
    ROBUSTNESS_DIR.mkdir(parents=True, exist_ok=True)
    for stale in ROBUSTNESS_DIR.glob("*.csv"):  # kinds no longer listed
        stale.unlink()
    for kind, frame in (robust_table.groupby("kind", sort=False) if len(robust_table) else ()):
        write_csv(ROBUSTNESS_DIR / f"{kind}.csv",
                  frame.drop(columns=["kind"]).assign(clean_roc_auc=clean_auc))
    report.plot_robustness(robust_table, clean_auc, REPORTS / "robustness.png")
    seconds["reports"] = time.perf_counter() - t0
    write_json(METRICS, report_)

    t0 = time.perf_counter()
    with tracking.run(params.tracking, run_id=tracking.read_run_ref(RUN_REF)):
        import mlflow

        mlflow.log_metrics({f"eval_{k}": v for k, v in scores.items()})
        mlflow.log_metrics({f"eval_seconds_{k}": v for k, v in seconds.items()})
        mlflow.log_metric("eval_roc_auc_no_tta", report_["val_no_tta"]["roc_auc"])
        mlflow.log_metrics({f"eval_auc_{g}": m["roc_auc"] for g, m in per_group.items()})
        for key in ("group_mean_auc", "group_worst_auc"):
            if key in report_:
                mlflow.log_metric(f"eval_{key}", report_[key])
        if "ensemble" in report_:
            mlflow.log_metrics({f"ensemble_{k}": v for k, v in report_["ensemble"].items()
                                if isinstance(v, (int, float))})
            mlflow.set_tag("predict.ensemble", " + ".join(report_["ensemble"]["models"]))
        for key in ("heldout", "seen"):
            mlflow.log_metrics({f"{key}_{k}": v for k, v in report_.get(key, {}).items()})
        for name, m in report_.get("extra_sets", {}).items():
            mlflow.log_metrics({f"extra_{name}_{k}": v for k, v in m.items() if isinstance(v, (int, float))})
            mlflow.log_metrics({f"extra_{name}_auc_{g}": gm["roc_auc"] for g, gm in m.get("groups", {}).items()})
            mlflow.set_tags({f"extra.{name}.data_hash": m["data_hash"], f"extra.{name}.path": cfg.extra_sets[name]})
            frame, r = extra_scores[name]
            mlflow.log_text(frame[["img_name", "target", "group"]].assign(y_pred=r.prob).to_csv(index=False),
                            f"evaluate/extra_sets/{name}_predictions.csv")
            tracking.log_skipped(r.skipped, f"extra_{name}")
        for d, m in robust.items():
            mlflow.log_metrics({f"robust_{d.kind}_{d.key}_auc": m["roc_auc"],
                                f"robust_{d.kind}_{d.key}_accuracy": m["accuracy"]})
        tracking.log_skipped(res.skipped, "evaluate")
        for name in ("roc.png", "confusion.png", "roc.csv", "val_predictions.csv", "groups.png", "groups.csv",
                     "robustness.png", "explain.png"):
            mlflow.log_artifact(str(REPORTS / name), artifact_path="evaluate")
        if degradations:
            mlflow.log_artifacts(str(ROBUSTNESS_DIR), artifact_path="evaluate/robustness")
        mlflow.log_artifact(str(METRICS), artifact_path="evaluate")
        if params.tracking.log_model:
            # The served model sits next to the torch model in the same run. It is logged here, not in
            # train, because it carries eval.threshold and predict.tta: changing those must not retrain.
            serving.log_pyfunc(MODEL, list(params.predict.tta), cfg.threshold)
    seconds["mlflow"] = time.perf_counter() - t0
    print(", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    if "ensemble" in report_:
        print(f"ensemble of {len(report_['ensemble']['models'])} (the submission's scorer): "
              f"roc_auc {report_['ensemble']['roc_auc']:.4f}")
    for name, m in report_.get("extra_sets", {}).items():
        print(f"extra set {name}: roc_auc {m['roc_auc']:.4f} on {m['images']} images")
    if degradations:
        print("robustness (AUC): clean {:.4f}; ".format(clean_auc)
              + ", ".join(f"{d.label} {m['roc_auc']:.4f}" for d, m in robust.items()))
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))


if __name__ == "__main__":
    stage_main(main)
