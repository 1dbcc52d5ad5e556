"""Stage `evaluate`: score val with the same Detector settings as predict; metrics.json and plots.

metrics.json: the overall val metrics, the same without test-time views, per manipulation
(its fakes against all real images), and the held-out manipulations on their own.
"""

import time

import pandas as pd

from ffdi import hardware, metrics, report, tracking
from ffdi.cli import stage_main
from ffdi.data import read_manifest
from ffdi.detector import Detector
from ffdi.io import project_root, write_csv, write_json
from stages import METRICS, MODEL, PREPARED, REPORTS, RUN_REF


def main(params):
    cfg = params.eval
    tracking.check_reachable(params.tracking)
    share = hardware.CpuShare(project_root() / ".ffdi" / "cpu")
    hardware.apply_threads(hardware.resolve_threads(params.train.threads, share))
    detector = Detector.load(MODEL, params.train.device, tta=params.predict.tta)
    workers = hardware.resolve_workers(params.train.workers, share.threads(), detector.device)
    val = read_manifest(PREPARED / "val.csv")
    t0 = time.perf_counter()
    res = detector.score_manifest(val, cfg.batch_size, workers, params.data.on_bad_image, "evaluate")
    seconds = {"val": time.perf_counter() - t0}
    kept = val.iloc[res.index]
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
        # The held-out manipulations' fakes against every real image: fakes the model never saw.
        rows = (kept.target == 0) | kept.group.isin(heldout)
        report_["heldout"] = metrics.ranking_metrics(y[rows.to_numpy()], prob[rows.to_numpy()], cfg.fprs)

    predictions = pd.DataFrame({"img_name": kept.img_name, "target": y, "group": kept.group, "y_pred": prob,
                                "predicted": (prob >= cfg.threshold).astype(int)})
    write_csv(REPORTS / "val_predictions.csv", predictions)
    roc = metrics.roc_points(y, prob)
    write_csv(REPORTS / "roc.csv", pd.DataFrame(roc))
    cm = metrics.confusion(y, prob, cfg.threshold)
    report_["confusion"] = {"tn": int(cm[0, 0]), "fp": int(cm[0, 1]), "fn": int(cm[1, 0]), "tp": int(cm[1, 1])}
    report.plot_roc(roc, scores["roc_auc"], REPORTS / "roc.png")
    report.plot_confusion(cm, REPORTS / "confusion.png")
    write_json(METRICS, report_)

    with tracking.run(params.tracking, run_id=tracking.read_run_ref(RUN_REF)):
        import mlflow

        mlflow.log_metrics({f"eval_{k}": v for k, v in scores.items()})
        mlflow.log_metrics({f"eval_seconds_{k}": v for k, v in seconds.items()})
        mlflow.log_metric("eval_roc_auc_no_tta", report_["val_no_tta"]["roc_auc"])
        mlflow.log_metrics({f"eval_auc_{g}": m["roc_auc"] for g, m in per_group.items()})
        for key in ("group_mean_auc", "group_worst_auc"):
            if key in report_:
                mlflow.log_metric(f"eval_{key}", report_[key])
        if heldout:
            mlflow.log_metrics({f"heldout_{k}": v for k, v in report_["heldout"].items()})
        tracking.log_skipped(res.skipped, "evaluate")
        for name in ("roc.png", "confusion.png", "roc.csv", "val_predictions.csv"):
            mlflow.log_artifact(str(REPORTS / name), artifact_path="evaluate")
        mlflow.log_artifact(str(METRICS), artifact_path="evaluate")
    print(", ".join(f"{k} {v:.4f}" for k, v in scores.items()))


if __name__ == "__main__":
    stage_main(main)
