"""The knob table of `ffdi generalisation`: each variant against the reference on three columns,
the numbers a default recipe is chosen by.

- clean: val AUC of the runs trained on every manipulation (data.holdout empty);
- degraded: the mean AUC over eval.degradations of the same runs (degraded_mean_auc);
- held-out: the mean held-out AUC of the leave-one-manipulation-out runs.

Each cell is the variant's mean ± sd over seeds, and its difference from the reference with the
paired bootstrap 95% CI of `ffdi compare`: one resample of the images per replicate, the same for
both variants and for every degradation (or held-out manipulation), AUCs averaged over each
variant's runs. `choose` applies the rule the default recipe is chosen by (see RULE).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ffdi.analysis.compare import bootstrap_auc_difference, paired_bootstrap
from ffdi.analysis.runs import Run, aligned_frames, predictions_csv, val_predictions
from ffdi.evaluation.metrics import rank_aucs
from ffdi.schema import (
    EVAL_DEGRADED_MEAN_AUC,
    EVAL_ROC_AUC,
    EVALUATE_ARTIFACTS,
    HELDOUT_ROC_AUC,
    ROBUSTNESS_PREDICTIONS,
)

METRIC_OF_COLUMN = {"clean": EVAL_ROC_AUC, "degraded": EVAL_DEGRADED_MEAN_AUC, "heldout": HELDOUT_ROC_AUC}
TITLES = {
    "clean": "clean val AUC",
    "degraded": "mean AUC over the default degradations",
    "heldout": "mean held-out AUC (leave one manipulation out)",
}
CLEAN_TOLERANCE = 0.01
RULE = (
    f"maximise the mean AUC under the default degradations, subject to clean val AUC within "
    f"{CLEAN_TOLERANCE} of the reference's and mean held-out AUC not worse beyond its CI (the CI's upper "
    f"end at or above 0)"
)


def robustness_predictions(run: Run) -> pd.DataFrame:
    return predictions_csv(run, f"{EVALUATE_ARTIFACTS}/{ROBUSTNESS_PREDICTIONS}")


def latest_per_seed(runs: Sequence[Run]) -> list[Run]:
    """One run per seed, the last one listed (finished_pipeline_runs lists the newest first, so
    keep the first seen): a default pipeline repeated by hand is not two seeds."""
    seen: dict[str, Run] = {}
    for r in runs:
        seen.setdefault(r.params.get("train.seed", r.run_id), r)
    return list(seen.values())


def _seeds(runs: Sequence[Run], metric: str) -> tuple[float, float, int]:
    values = [r.metrics[metric] for r in runs if metric in r.metrics]
    if not values:
        return float("nan"), float("nan"), 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"), len(values)


def degraded_difference(ref: list[pd.DataFrame], mine: list[pd.DataFrame], n_boot: int = 1000) -> dict[str, float]:
    """Mean over degradations of AUC(mine) - AUC(ref), each AUC averaged over a variant's runs; paired
    bootstrap over the images, one resample for every degradation and both variants. The frames are
    robustness_predictions.csv aligned on the same images (runs.aligned_frames)."""
    frames = ref + mine
    columns = [c for c in ref[0].columns if c not in ("target", "group", "clean")]
    missing = [c for f in frames for c in columns if c not in f]
    if missing:
        raise ValueError(f"runs were evaluated under different eval.degradations (one lacks {missing[0]})")
    y = frames[0].target.to_numpy()
    # Rows: (degradation, run); the mean AUC over rows is the mean over degradations of the mean over runs.
    a = np.vstack([f[c].to_numpy() for c in columns for f in frames[: len(ref)]])
    b = np.vstack([f[c].to_numpy() for c in columns for f in frames[len(ref) :]])
    d = paired_bootstrap(
        lambda idx: float(rank_aucs(y[idx], b[:, idx]).mean() - rank_aucs(y[idx], a[:, idx]).mean()), len(y), n_boot
    )
    return {k: d[k] for k in ("difference", "ci_low", "ci_high")}


def table(
    trained_on_all: dict[str, list[Run]],
    *,
    reference: str,
    heldout: pd.DataFrame | None = None,
    differs: Callable[[str], str] | None = None,
    load_val=val_predictions,
    load_degraded=robustness_predictions,
    n_boot: int = 1000,
) -> pd.DataFrame:
    """One row per variant and column (clean, degraded, heldout): runs, mean, sd, difference, ci_low, ci_high.

    trained_on_all: variant label -> its runs without a holdout; heldout: reference_differences' table
    of the leave-one-out runs (its `mean` rows hold the averaged difference and CI).
    """
    differs = differs or (lambda label: label)
    variants = {label: latest_per_seed(rs) for label, rs in trained_on_all.items() if rs}
    rows = []
    names, frames = aligned_frames([r for rs in variants.values() for r in rs], load_val) if variants else ([], {})
    robust = {label: rs for label, rs in variants.items() if all(METRIC_OF_COLUMN["degraded"] in r.metrics for r in rs)}
    robust_names, robust_frames = (
        aligned_frames([r for rs in robust.values() for r in rs], load_degraded) if robust else ([], {})
    )
    degraded = {label: [robust_frames[r.run_id].loc[robust_names] for r in rs] for label, rs in robust.items()}
    y = frames[next(iter(frames))].loc[names, "target"].to_numpy() if frames else None

    def probs(label):
        return np.stack([frames[r.run_id].loc[names, "y_pred"].to_numpy() for r in variants[label]])

    order = [reference] + [v for v in dict.fromkeys([*variants, *_heldout_variants(heldout)]) if v != reference]
    for label in order:
        base = {"variant": label, "differs": "(reference)" if label == reference else differs(label)}
        runs = variants.get(label, [])
        for column in ("clean", "degraded"):
            mean, sd, n = _seeds(runs, METRIC_OF_COLUMN[column])
            row = {**base, "column": column, "runs": n, "mean": mean, "sd": sd}
            if label != reference and n and reference in variants:
                if column == "clean":
                    d = bootstrap_auc_difference(y, probs(reference), probs(label), n_boot=n_boot)
                    row.update({k: d[k] for k in ("difference", "ci_low", "ci_high")})
                elif label in degraded and reference in degraded:
                    row.update(degraded_difference(degraded[reference], degraded[label], n_boot))
            rows.append(row)
        rows.append({**base, "column": "heldout", **_heldout_row(heldout, label)})
    return pd.DataFrame(
        rows,
        columns=["variant", "differs", "column", "runs", "mean", "sd", "difference", "ci_low", "ci_high", "held_out"],
    )


def _heldout_variants(heldout: pd.DataFrame | None) -> list[str]:
    return [] if heldout is None or heldout.empty else list(dict.fromkeys(heldout.variant))


def _heldout_row(heldout: pd.DataFrame | None, label: str) -> dict:
    """The variant's held-out AUC averaged over the manipulations it held out (runs: per manipulation),
    and its `mean` difference from the reference."""
    if heldout is None or heldout.empty or label not in set(heldout.variant):
        return {"runs": 0, "mean": float("nan"), "sd": float("nan")}
    mine = heldout[heldout.variant == label]
    per = mine[mine.heldout != "mean"]
    out = {
        "runs": int(per.runs.min()),
        "mean": float(per.heldout_auc.mean()),
        "sd": float("nan"),
        "held_out": ",".join(per.heldout),
    }
    mean = mine[mine.heldout == "mean"]
    if len(mean):
        out.update({k: float(mean.iloc[0][k]) for k in ("difference", "ci_low", "ci_high")})
    return out


def choose(knobs: pd.DataFrame) -> str | None:
    """The variant RULE picks (the reference where no other passes): the highest degraded mean AUC
    among those whose clean AUC is within CLEAN_TOLERANCE of the reference's (the difference's point
    estimate) and whose held-out difference has a CI reaching 0 or above. A variant without
    held-out runs is not eligible: the rule cannot be checked."""
    wide = knobs.pivot(index="variant", columns="column", values=["mean", "difference", "ci_high"])
    reference = knobs.variant.iloc[0]
    best, best_value = reference, wide.loc[reference, ("mean", "degraded")]
    for label in wide.index:
        if label == reference:
            continue
        w = wide.loc[label]
        ok = w[("difference", "clean")] >= -CLEAN_TOLERANCE and w[("ci_high", "heldout")] >= 0
        if ok and w[("mean", "degraded")] > best_value:
            best, best_value = label, w[("mean", "degraded")]
    return best


def _cell(r) -> str:
    if not r.runs:
        return "not run"
    value = f"{r['mean']:.3f}" + ("" if pd.isna(r.sd) else f" ± {r.sd:.3f}")
    if isinstance(r.held_out, str):  # a mean over these manipulations only; the difference, over those both held out
        value += f" ({len(r.held_out.split(','))} held out)"
    if pd.isna(r.difference):
        return value
    return f"{value}<br>{r.difference:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"


def markdown(knobs: pd.DataFrame, chosen: str | None) -> list[str]:
    lines = [
        "## Knob table: clean, degraded and held-out AUC",
        "",
        "Each cell: the variant's mean ± sd over seeds (held-out: the mean over the manipulations it held "
        "out), then its difference from the reference with the paired bootstrap 95% CI over the same val "
        "images (held-out: over the manipulations both held out). "
        f"Rule for the default: {RULE}.",
        "",
        "| variant (what differs from the reference) | seeds | " + " | ".join(TITLES.values()) + " | rule |",
        "|---|---:|---|---|---|---|",
    ]
    for label, mine in knobs.groupby("variant", sort=False):
        cells = mine.set_index("column")
        seeds = int(cells.loc["clean", "runs"])
        mark = "**chosen**" if label == chosen else ""
        lines.append(
            f"| {cells.differs.iloc[0]} | {seeds} | " + " | ".join(_cell(cells.loc[c]) for c in TITLES) + f" | {mark} |"
        )
    return lines + ["", "![knob table](knobs.png)", ""]
