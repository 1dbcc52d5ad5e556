"""Stage `predict`: write the submission CSV img_name,y_pred (probability of fake); for a test set of videos
(the frames stage's crops), one row per video, video_name,y_pred, its frames' eval.video_aggregate."""

import json

import numpy as np
import pandas as pd

from ffdi import hardware
from ffdi.data.labels import read_manifest
from ffdi.data.video import per_video_scores
from ffdi.files import project_root, write_csv
from ffdi.inference.detector import Detector, Ensemble
from ffdi.schema import PREDICT_IMAGES
from ffdi.stage import stage_main
from ffdi.tracking import mlflow_run

# What an unreadable test image scores under on_bad_image=skip: a submission needs every row,
# and 0.5 claims nothing either way.
UNREADABLE_SCORE = 0.5


def main(params, prepared, model, run_ref):
    cfg = params.predict
    mlflow_run.check_reachable(params.tracking)
    _, share = hardware.claim_hardware(params.runtime.device, params.runtime.threads, project_root() / ".ffdi")
    split = json.loads((prepared / "summary.json").read_text())["predict_split"]
    manifest = read_manifest(prepared / f"{split}.csv")
    detector = Detector.load(model, params.runtime.device, tta=cfg.tta)
    if cfg.ensemble:
        mlflow_run.setup(params.tracking)  # where models:/ and runs:/ URIs are found
        detector = Ensemble.extend(detector, cfg.ensemble, params.runtime.device)
    workers = hardware.resolve_workers(params.runtime.workers, share.threads(), detector.device)
    res = detector.score_manifest(manifest, cfg.batch_size, workers, params.data.on_bad_image, f"predict {split}")
    prob = np.full(len(manifest), UNREADABLE_SCORE)
    prob[res.index] = res.prob
    if "video" in manifest:
        # Only the frames scored count: an unreadable one claims nothing rather than pulling its video to
        # 0.5; a video with none scored, or one the frames stage left out (no usable frame), still gets a row.
        left_out = json.loads((prepared / "summary.json").read_text()).get("videos", {}).get(split, {})
        videos = per_video_scores(
            manifest.video.iloc[res.index],
            res.prob,
            params.eval.video_aggregate,
            [*manifest.video, *left_out.get("videos_left_out", [])],
            UNREADABLE_SCORE,
        )
        submission = pd.DataFrame({"video_name": list(videos), "y_pred": list(videos.values())})
    else:
        submission = pd.DataFrame({"img_name": manifest.img_name, "y_pred": prob})
    write_csv(cfg.out, submission)

    with mlflow_run.stage_run(params, run_ref, PREDICT_IMAGES):
        import mlflow

        mlflow.set_tags({"predict.split": split, "predict.models": detector.source})
        mlflow.log_metric(PREDICT_IMAGES, len(submission))
        mlflow_run.log_skipped(res.skipped, "predict")
        mlflow.log_artifact(cfg.out, artifact_path="predict")
    print(f"{len(submission)} predictions -> {cfg.out}")


if __name__ == "__main__":
    stage_main(main, "prepared", "model", "run_ref")
