"""Stage `evaluate`: score val with the Detector that predict uses; metrics.json, reports/ and MLflow.

What metrics.json holds: ffdi.evaluation. The served model is logged here, not in train, because
it carries eval.threshold and predict.tta: changing those must not retrain.
"""

import time

from ffdi import evaluation, hardware, serving, tracking
from ffdi.cli import stage_main
from ffdi.detector import Detector, Ensemble
from ffdi.io import project_root, write_json
from ffdi.labels import read_manifest


def main(params, prepared, model, run_ref, reports, metrics):
    cfg = params.eval
    tracking.check_reachable(params.tracking)
    _, share = hardware.claim_hardware(params.runtime.device, params.runtime.threads, project_root() / ".ffdi")
    detector = Detector.load(model, params.runtime.device, tta=params.predict.tta)
    workers = hardware.resolve_workers(params.runtime.workers, share.threads(), detector.device)
    val = read_manifest(prepared / "val.csv")
    # Checked before the val scoring, so a wrong path fails in seconds.
    extra = {name: evaluation.labelled_folder(name, root, params.data) for name, root in cfg.extra_sets.items()}
    ensemble = None
    if params.predict.ensemble:  # the submission's scorer: this model averaged with those
        tracking.setup(params.tracking)  # where models:/ and runs:/ URIs are found
        ensemble = Ensemble.extend(detector, params.predict.ensemble, params.runtime.device)

    ev = evaluation.evaluate(detector, val, cfg, params.data.holdout, extra, ensemble, workers,
                             params.data.on_bad_image)
    evaluation.write_reports(ev, detector, reports, cfg, params.data.holdout)
    write_json(metrics, ev.report)

    t0 = time.perf_counter()
    with tracking.run(params.tracking, run_id=tracking.read_run_ref(run_ref)):
        tracking.log_evaluation(ev, reports, metrics, dict(cfg.extra_sets))
        if params.tracking.log_model:
            serving.log_pyfunc(model, list(params.predict.tta), cfg.threshold, cfg.video_frames, cfg.video_aggregate)
    ev.seconds["mlflow"] = time.perf_counter() - t0
    print("\n".join(evaluation.summary_lines(ev)))


if __name__ == "__main__":
    stage_main(main, "prepared", "model", "run_ref", "reports", "metrics")
