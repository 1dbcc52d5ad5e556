"""Stage `evaluate`: score val with the Detector that predict uses; metrics.json, reports/ and MLflow.

What metrics.json (the headline) and reports/evaluate/details.json (the whole report) hold:
ffdi.evaluation.evaluate. The served model, a run's only logged model, is logged here, not in train,
because it carries eval.threshold and predict.tta: changing those must not retrain. Where DVC reused a
training that an earlier experiment evaluated, everything goes to a run of its own, nested under the
training run (mlflow_run.stage_run), which points to the training run's model.
"""

import time

import pandas as pd

from ffdi import hardware
from ffdi.data.labels import read_manifest
from ffdi.evaluation.evaluate import evaluate, headline, labelled_folder, summary_lines, write_reports
from ffdi.evaluation.plots import plot_history
from ffdi.files import project_root, write_json
from ffdi.inference.detector import Detector, Ensemble
from ffdi.schema import EVAL_ROC_AUC, EVALUATION_DETAILS
from ffdi.stage import stage_main
from ffdi.tracking import mlflow_run
from ffdi.tracking.evaluation import log_evaluation
from ffdi.tracking.pyfunc_model import log_pyfunc


def main(params, *, prepared, model, run_ref, history, reports, metrics):
    cfg = params.eval
    mlflow_run.check_reachable(params.tracking)
    _, share = hardware.claim_hardware(params.runtime.device, params.runtime.threads, project_root() / ".ffdi")
    detector = Detector.load(model, params.runtime.device, tta=params.predict.tta)
    workers = hardware.resolve_workers(params.runtime.workers, share.threads(), detector.device)
    val = read_manifest(prepared / "val.csv")
    # Checked before the val scoring, so a wrong path fails in seconds.
    extra = {name: labelled_folder(name, root, params.data) for name, root in cfg.extra_sets.items()}
    ensemble = None
    if params.predict.ensemble:  # the submission's scorer: this model averaged with those
        mlflow_run.setup(params.tracking)  # where models:/ and runs:/ URIs are found
        ensemble = Ensemble.extend(detector, params.predict.ensemble, params.runtime.device)

    ev = evaluate(
        detector,
        val,
        cfg,
        holdout=params.data.holdout,
        extra=extra,
        ensemble=ensemble,
        workers=workers,
        on_bad_image=params.data.on_bad_image,
    )
    write_reports(ev, detector, reports, cfg, params.data.holdout)
    # The training curves as a picture beside the others: `dvc plots show` draws history.csv with Vega,
    # which needs a CDN. Here rather than in train, so that a plot's label never retrains.
    plot_history(pd.read_csv(history), reports / "history.png")
    write_json(reports / EVALUATION_DETAILS, ev.report)
    write_json(metrics, headline(ev.report))

    t0 = time.perf_counter()
    # The training run's, or one of its own where DVC reused a training another experiment evaluated.
    with mlflow_run.stage_run(params, run_ref, EVAL_ROC_AUC) as active:
        log_evaluation(ev, reports, metrics, dict(cfg.extra_sets))
        train_id = mlflow_run.read_run_ref(run_ref)
        if active.info.run_id != train_id:
            mlflow_run.link_models(train_id)
        elif params.tracking.log_model:
            log_pyfunc(model, list(params.predict.tta), cfg.threshold, cfg.video_frames, cfg.video_aggregate)
    ev.seconds["mlflow"] = time.perf_counter() - t0
    print("\n".join(summary_lines(ev)))


if __name__ == "__main__":
    stage_main(main, "prepared", "model", "run_ref", "history", "reports", "metrics")
