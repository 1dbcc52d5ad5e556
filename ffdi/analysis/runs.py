"""The finished pipeline runs of an MLflow experiment as plain records (`Run`), and what they logged:
their val predictions, aligned image by image across runs, and their per-epoch histories.
Read by `ffdi compare` and `ffdi generalisation`.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ffdi.errors import FfdiError
from ffdi.schema import (
    DATA_HASH_TAG,
    EPOCH_VAL_AUC,
    EPOCH_VAL_LOSS,
    EVAL_ROC_AUC,
    EVALUATE_ARTIFACTS,
    REEVALUATION,
    RUN_KIND_TAG,
    VAL_PREDICTIONS,
)


class CompareError(FfdiError):
    """Runs that cannot be compared: no such experiment, no evaluated run, different val images."""


@dataclass
class Run:
    run_id: str
    name: str
    params: dict
    metrics: dict
    artifact_uri: str
    tags: dict = field(default_factory=dict)


def finished_pipeline_runs(experiment: str) -> list[Run]:
    import mlflow

    exp = mlflow.MlflowClient().get_experiment_by_name(experiment)
    if exp is None:
        raise CompareError(f"no MLflow experiment named {experiment!r} in {mlflow.get_tracking_uri()}")
    found = mlflow.MlflowClient().search_runs(
        [exp.experiment_id], filter_string="attributes.status = 'FINISHED'", order_by=["attributes.start_time ASC"]
    )
    runs = [
        Run(
            r.info.run_id,
            r.info.run_name,
            dict(r.data.params),
            dict(r.data.metrics),
            r.info.artifact_uri,
            dict(r.data.tags),
        )
        for r in found
        # Not compare's own runs, nor re-evaluations: their training run stands for them, once.
        if r.data.tags.get(RUN_KIND_TAG) not in ("compare", REEVALUATION) and EVAL_ROC_AUC in r.data.metrics
    ]
    if not runs:
        raise CompareError(f"experiment {experiment!r} has no finished, evaluated runs to compare")
    return runs


def data_sets(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs by the data set they ran on (their data.hash tag), the latest run's data set first."""
    out: dict[str, list[Run]] = {}
    for r in reversed(runs):  # runs come oldest first
        out.setdefault(r.tags.get(DATA_HASH_TAG, "unknown"), []).insert(0, r)
    return out


def one_data_set(runs: list[Run], experiment: str, data: str | None = None) -> tuple[list[Run], list[str]]:
    """The runs of one data set (`data`: a data.hash or its prefix; default the latest run's), and a
    note on the others. Runs on different images cannot be compared image by image."""
    sets = data_sets(runs)
    if data is None:
        chosen = next(iter(sets))
    else:
        matches = [h for h in sets if h.startswith(data)]
        if len(matches) != 1:
            raise CompareError(
                f"--data {data!r} matches {len(matches)} of the data sets in experiment {experiment!r}: "
                + _describe(sets)
            )
        chosen = matches[0]
    notes = []
    if len(sets) > 1:
        notes = [
            f"experiment {experiment!r} holds runs on {len(sets)} data sets ({_describe(sets)}); comparing the "
            f"{len(sets[chosen])} on {chosen}. Another: --data <hash>. To keep data sets apart, give each its "
            "own experiment: dvc exp run -S tracking.experiment=<name> ..."
        ]
    return sets[chosen], notes


def _describe(sets: dict[str, list[Run]]) -> str:
    return "; ".join(
        f"{h}: {len(rs)} run{'s' * (len(rs) > 1)} on {rs[-1].tags.get('data.root', '?')}" for h, rs in sets.items()
    )


def predictions_csv(run: Run, path: str) -> pd.DataFrame:
    """A per-image CSV the evaluate stage logged to `run` (path under its artefacts)."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # not a bar per run
    text = mlflow.artifacts.load_text(f"{run.artifact_uri}/{path}")
    return pd.read_csv(io.StringIO(text), dtype={"img_name": str})


def val_predictions(run: Run) -> pd.DataFrame:
    return predictions_csv(run, f"{EVALUATE_ARTIFACTS}/{VAL_PREDICTIONS}")


def aligned_frames(runs: list[Run], load=val_predictions) -> tuple[list[str], dict[str, pd.DataFrame]]:
    """Each run's val predictions indexed by image name, and the image names, checked to be the
    same for every run. `load` reads one run's predictions (MLflow's artefact by default)."""
    frames = {r.run_id: load(r).set_index("img_name") for r in runs}
    names = sorted(set.intersection(*(set(f.index) for f in frames.values())))
    if not names or any(len(f) != len(names) for f in frames.values()):
        raise CompareError("runs were evaluated on different val images; compare runs of the same data only")
    return names, frames


def aligned_predictions(groups: dict[str, list[Run]]) -> tuple[np.ndarray, dict[str, np.ndarray], pd.Series]:
    """Targets, per group an (n_runs, n_images) matrix of P(fake) over the same val images, and
    each image's manipulation ('' where the predictions don't say)."""
    names, frames = aligned_frames([r for runs in groups.values() for r in runs])
    y = frames[next(iter(frames))].loc[names, "target"].to_numpy()
    probs = {
        label: np.stack([frames[r.run_id].loc[names, "y_pred"].to_numpy() for r in runs])
        for label, runs in groups.items()
    }
    first = frames[next(iter(frames))]
    image_groups = (
        first.loc[names, "group"].fillna("").astype(str) if "group" in first else pd.Series([""] * len(names))
    )
    return y, probs, image_groups.reset_index(drop=True)


def run_histories(groups: dict[str, list[Run]]) -> dict[str, list[dict[str, list]]]:
    import mlflow

    client = mlflow.MlflowClient()
    out: dict[str, list[dict[str, list]]] = {}
    for label, runs in groups.items():
        for r in runs:
            h: dict[str, list] = {}
            # Under their history.csv names, which plots.plot_run_curves draws.
            for key, name in (("val_auc", EPOCH_VAL_AUC), ("val_loss", EPOCH_VAL_LOSS)):
                hist = sorted(client.get_metric_history(r.run_id, name), key=lambda m: m.step)
                h["step"], h[key] = [m.step for m in hist], [m.value for m in hist]
            out.setdefault(label, []).append(h)
    return out
