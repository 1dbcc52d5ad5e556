"""Test-time views alone: the same trained models scored with predict.tta's views and with others.

    python -m benchmarks.studies.tta_rescore [--views hflip,vflip,rot90,rot180,rot270] [--out reports/tta_rescore]

Takes the finished leave-one-out runs of one variant from MLflow (default: the runs made with
params.yaml's values apart from data.holdout and the seed), loads each run's logged model through
the Detector, and scores prepared/val.csv twice: with the views the run used, and with --views.
Training, and so the choice of the best epoch, is the same for both, so the difference is the views'
alone, paired per model. The report is `ffdi generalisation`'s, the variants being the two sets of
views (report.md with the paired bootstrap CI of the held-out AUC difference, CSVs, heatmaps).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ffdi.analysis import generalisation_report as gen_report
from ffdi.analysis.runs import Run, finished_pipeline_runs, val_predictions
from ffdi.config import flatten, load_params
from ffdi.data.labels import read_manifest
from ffdi.evaluation import metrics
from ffdi.inference.detector import Detector
from ffdi.schema import EVAL_ROC_AUC, HELDOUT_ROC_AUC, RUN_KIND_TAG
from ffdi.tracking import mlflow_run

# Params that differ between the runs of one variant, or that never change a model's scores.
IGNORED = ("data.holdout", "train.seed", "runtime.threads", "runtime.workers")


def model_uri(run: Run, experiment_id: str) -> str:
    import mlflow

    found = mlflow.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run.run_id}'", output_format="list"
    )
    if not found:
        raise SystemExit(f"run {run.run_id} ({run.name}) logged no model (tracking.log_model: false?)")
    return f"models:/{found[0].model_id}"


def scored(detector: Detector, val: pd.DataFrame) -> pd.DataFrame:
    res = detector.score_manifest(val, 128, 1)
    kept = val.iloc[res.index].reset_index(drop=True)
    return pd.DataFrame({"img_name": kept.img_name, "target": kept.target, "group": kept.group, "y_pred": res.prob})


def heldout_metrics(frame: pd.DataFrame, holdout: str) -> dict:
    y, p = frame.target.to_numpy(), frame.y_pred.to_numpy()
    out = {EVAL_ROC_AUC: metrics.roc_auc(y, p)}
    for side, values in metrics.heldout_metrics(y, p, frame.group, [holdout], (1e-3,)).items():
        out.update({f"{side}_{k}": v for k, v in values.items()})
    return out


def main(argv=None) -> int:
    import mlflow

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", default="hflip,vflip,rot90,rot180,rot270")
    ap.add_argument("--out", type=Path, default=Path("reports/tta_rescore"))
    ap.add_argument("--boot", type=int, default=1000)
    args = ap.parse_args(argv)
    params = load_params()
    mlflow_run.setup(params.tracking)
    experiment_id = mlflow.get_experiment_by_name(params.tracking.experiment).experiment_id
    defaults = {k: gen_report.logged(v) for k, v in flatten(params.to_dict()).items()}
    runs = [
        r
        for r in gen_report.holdout_runs(finished_pipeline_runs(params.tracking.experiment))
        if len(gen_report.holdout_of(r)) == 1
        and r.tags.get(RUN_KIND_TAG) == "pipeline"
        and all(r.params.get(k, defaults[k]) == defaults[k] for k in defaults if k not in IGNORED)
    ]
    if not runs:
        print(
            "no leave-one-out run with params.yaml's values: run `ffdi generalisation --only leave-one-out`",
            file=sys.stderr,
        )
        return 1
    val = read_manifest("prepared/val.csv")
    views = [v for v in args.views.split(",") if v]
    args.out.mkdir(parents=True, exist_ok=True)
    pred_dir = args.out / "predictions"
    pred_dir.mkdir(exist_ok=True)
    rescored = []
    for r in runs:
        holdout = gen_report.holdout_of(r)[0]
        uri = None
        for tta in (list(params.predict.tta), views):
            label = "+".join(["image", *tta])
            path = pred_dir / f"{r.run_id}_{len(tta)}.csv"
            # Scored before (an interrupted run): the same model and views give the same file.
            if path.is_file():
                frame = pd.read_csv(path, dtype={"img_name": str})
            else:
                uri = uri or model_uri(r, experiment_id)
                frame = scored(Detector.load(uri, "cpu", tta=tta), val)
            if tta == list(params.predict.tta):
                # The same model and views as the run's own evaluate: the same numbers, or the
                # comparison would be of something else.
                logged = val_predictions(r).set_index("img_name").loc[frame.img_name, "y_pred"].to_numpy()
                assert np.allclose(logged, frame.y_pred, atol=1e-6), f"{r.name}: rescoring differs from evaluate"
            frame.to_csv(path, index=False)
            rescored.append(
                Run(
                    f"{r.run_id}-{len(tta)}",
                    r.name,
                    {"views": label, "data.holdout": r.params["data.holdout"], "train.seed": r.params["train.seed"]},
                    heldout_metrics(frame, holdout),
                    str(path),
                    {"git.commit": r.tags.get("git.commit", "")},
                )
            )
        print(
            f"{r.name} (held out {holdout}, seed {r.params['train.seed']}): held-out AUC "
            f"{rescored[-2].metrics[HELDOUT_ROC_AUC]:.4f} -> {rescored[-1].metrics[HELDOUT_ROC_AUC]:.4f}",
            flush=True,
        )
    reference = "views=" + "+".join(["image", *params.predict.tta])  # the exact group label
    result = gen_report.render(
        rescored,
        args.out,
        reference=reference,
        n_boot=args.boot,
        load=lambda run: pd.read_csv(run.artifact_uri, dtype={"img_name": str}),
    )
    (args.out / "models.json").write_text(json.dumps({r.name: r.run_id for r in runs}, indent=1))
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
