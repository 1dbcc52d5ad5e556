"""Binary real/fake metrics, all from scikit-learn. Positive class: 1 = fake."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from ffdi.errors import MetricError
from ffdi.schema import GROUP_AUC


def _check(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(int)
    y_prob = np.asarray(y_prob, dtype=float)
    if y_true.shape != y_prob.shape or y_true.ndim != 1:
        raise MetricError(f"labels {y_true.shape} and probabilities {y_prob.shape} must be 1-D and the same length")
    classes = set(np.unique(y_true).tolist())
    if classes != {0, 1}:
        raise MetricError(f"ROC-AUC needs both real (0) and fake (1) images; these labels hold only {sorted(classes)}")
    if not np.isfinite(y_prob).all():
        raise MetricError("probabilities contain nan or inf (did training diverge?)")
    return y_true, y_prob


def roc_auc(y_true, y_prob) -> float:
    y_true, y_prob = _check(y_true, y_prob)
    return float(skm.roc_auc_score(y_true, y_prob))


def rank_aucs(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """ROC-AUC of each row of `probs` (runs x images) from ranks, ties counted half (Mann-Whitney U):
    sklearn's roc_auc_score to rounding, without its per-call checks. A bootstrap calls it thousands
    of times, where sklearn's overhead made a report take minutes. Raises ValueError on one class."""
    from scipy.stats import rankdata

    pos = np.asarray(y_true) == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC needs both classes")
    ranks = rankdata(np.atleast_2d(probs), axis=1)
    return (ranks[:, pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def tpr_at_fpr(y_true, y_prob, target_fpr: float = 1e-3) -> float:
    """The FFDI tie-breaker: the highest TPR reached at an FPR no greater than `target_fpr`.

    No interpolation: with fewer than 1/target_fpr real images this is the TPR at
    FPR = 0, which is what a threshold on these scores could actually achieve.
    """
    y_true, y_prob = _check(y_true, y_prob)
    fpr, tpr, _ = skm.roc_curve(y_true, y_prob)
    return _tpr_at(fpr, tpr, target_fpr)


def eer(y_true, y_prob) -> float:
    """Equal error rate: where the false positive and false negative rates cross."""
    y_true, y_prob = _check(y_true, y_prob)
    fpr, tpr, _ = skm.roc_curve(y_true, y_prob)
    return _eer(fpr, tpr)


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, target_fpr: float) -> float:
    return float(tpr[fpr <= target_fpr].max())


def _eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
    fnr = 1.0 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2.0)


def fpr_key(fpr: float) -> str:
    """tpr_at_fpr_1e-3: a metric name DVC and MLflow both keep as one key (no dots)."""
    mantissa, exponent = f"{fpr:.0e}".split("e")
    return f"tpr_at_fpr_{mantissa}e{int(exponent)}"


def binary_metrics(
    y_true, y_prob, threshold: float = 0.5, target_fpr: float = 1e-3, fprs: tuple[float, ...] = ()
) -> dict[str, float]:
    """accuracy, ROC-AUC, the tie-breaker TPR at `target_fpr`, EER, AP, log loss, and TPR at each of `fprs`."""
    y_true, y_prob = _check(y_true, y_prob)
    y_pred = (y_prob >= threshold).astype(int)
    # once, for the tie-breakers and the EER; every threshold kept: tied scores can hide achievable points
    fpr, tpr, _ = skm.roc_curve(y_true, y_prob, drop_intermediate=False)
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "roc_auc": float(skm.roc_auc_score(y_true, y_prob)),
        "tpr_at_fpr": _tpr_at(fpr, tpr, target_fpr),
        "eer": _eer(fpr, tpr),
        "average_precision": float(skm.average_precision_score(y_true, y_prob)),
        "log_loss": float(skm.log_loss(y_true, np.clip(y_prob, 1e-7, 1 - 1e-7), labels=[0, 1])),
        **{fpr_key(f): _tpr_at(fpr, tpr, f) for f in fprs},
    }


def ranking_metrics(y_true, y_prob, fprs: tuple[float, ...] = ()) -> dict[str, float]:
    """Threshold-free metrics for a subset (one manipulation's fakes against all real images)."""
    y_true, y_prob = _check(y_true, y_prob)
    fpr, tpr, _ = skm.roc_curve(y_true, y_prob, drop_intermediate=False)
    return {
        "roc_auc": float(skm.roc_auc_score(y_true, y_prob)),
        "average_precision": float(skm.average_precision_score(y_true, y_prob)),
        **{fpr_key(f): _tpr_at(fpr, tpr, f) for f in fprs},
    }


def roc_points(y_true, y_prob) -> dict[str, np.ndarray]:
    y_true, y_prob = _check(y_true, y_prob)
    fpr, tpr, thresholds = skm.roc_curve(y_true, y_prob)
    # sklearn's first threshold is inf; clip so the CSV and JSON stay finite.
    return {"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thresholds, 1.0)}


def confusion(y_true, y_prob, threshold: float = 0.5) -> np.ndarray:
    """2x2 counts, rows = true (real, fake), columns = predicted (real, fake)."""
    y_true, y_prob = _check(y_true, y_prob)
    return skm.confusion_matrix(y_true, (y_prob >= threshold).astype(int), labels=[0, 1])


def group_metrics(y_true, y_prob, groups, fprs: tuple[float, ...] = ()) -> dict[str, dict[str, float]]:
    """Per manipulation: that group's fakes against every real image. Groups with no fakes are left out."""
    y_true, y_prob = np.asarray(y_true).astype(int), np.asarray(y_prob, dtype=float)
    groups = np.asarray(groups, dtype=object)
    real = y_true == 0
    out = {}
    for g in sorted({g for g, t in zip(groups, y_true) if t == 1 and g}):
        rows = real | ((y_true == 1) & (groups == g))
        out[g] = ranking_metrics(y_true[rows], y_prob[rows], fprs)
    return out


def group_aucs(y_true, y_prob, groups) -> dict[str, float]:
    """{auc_<manipulation>: AUC} from group_metrics: each manipulation's fakes against every real image."""
    return {f"{GROUP_AUC}{g}": m["roc_auc"] for g, m in group_metrics(y_true, y_prob, groups).items()}


def heldout_metrics(y_true, y_prob, groups, heldout, fprs: tuple[float, ...] = ()) -> dict[str, dict[str, float]]:
    """Leave-one-out's two numbers. `heldout`: the held-out manipulations' fakes (which the model
    never saw) against every real image; `seen`: the other fakes against the same real images.
    A side with no fakes (a manipulation may have fakes in train only) is left out."""
    y_true, y_prob = np.asarray(y_true).astype(int), np.asarray(y_prob, dtype=float)
    unseen = (y_true == 1) & np.isin(np.asarray(groups, dtype=object), list(heldout))
    out = {}
    for key, rows in (("heldout", (y_true == 0) | unseen), ("seen", ~unseen)):
        if (rows & (y_true == 1)).any():
            out[key] = ranking_metrics(y_true[rows], y_prob[rows], fprs)
    return out


def summarise_groups(per_group: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean and worst group AUC: a detector is only as good as the manipulation it misses most."""
    aucs = {g: m["roc_auc"] for g, m in per_group.items()}
    if not aucs:
        return {}
    worst = min(aucs, key=aucs.get)
    return {"group_mean_auc": float(np.mean(list(aucs.values()))), "group_worst_auc": aucs[worst]}
