"""The plots of one run: its training curves, and its evaluation's ROC, confusion, AUC per manipulation, robustness.

Every figure is written atomically (files.save_figure) with matplotlib's non-interactive backend.
The plots of many runs (compare, generalisation) are ffdi.analysis.plots.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ffdi.files import save_figure  # noqa: E402


def colour_cycle() -> list[str]:
    return plt.rcParams["axes.prop_cycle"].by_key()["color"]


def plot_history(history, out: Path) -> None:
    """Per-epoch curves of one training run (fit's history rows, reports/history.csv): loss, then accuracy
    and val AUC. A PNG, so that they show offline, where `dvc plots show`'s Vega charts need a CDN."""
    fig, (loss, score) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
    for ax, keys, ylabel in (
        (loss, ("train_loss", "val_loss"), "cross-entropy"),
        (score, ("train_acc", "val_acc", "val_auc"), "accuracy / AUC"),
    ):
        for key in keys:
            if key in history:
                ax.plot(history["epoch"], history[key], marker="o", label=key)
        ax.set(xlabel="epoch", ylabel=ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend()
    loss.set_title("loss")
    score.set_title("accuracy and AUC")
    fig.tight_layout()
    save_figure(fig, out)


def plot_roc(pts: dict[str, np.ndarray], auc: float, out: Path, title: str = "ROC, val") -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(pts["fpr"], pts["tpr"], label=f"AUC = {auc:.4f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false positive rate (real called fake)", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, out)


def plot_confusion(cm: np.ndarray, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(3.8, 3.4), dpi=100)
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["real", "fake"], yticklabels=["real", "fake"])
    ax.set(xlabel="predicted", ylabel="true", title="confusion, val")
    fig.tight_layout()
    save_figure(fig, out)


def plot_groups(
    per_group: dict[str, dict[str, float]], out: Path, heldout: tuple = (), title: str = "AUC per manipulation, val"
) -> None:
    """One bar per manipulation (its fakes against every real image), best at the top; the worst
    is drawn in red, the mean as a dashed line, and held-out manipulations are hatched."""
    names = sorted(per_group, key=lambda g: per_group[g]["roc_auc"], reverse=True)
    aucs = np.array([per_group[g]["roc_auc"] for g in names])
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * max(len(names), 1)), dpi=100)
    if len(names):
        worst = int(np.argmin(aucs))
        colours = ["tab:red" if i == worst else "tab:blue" for i in range(len(names))]
        bars = ax.barh(range(len(names)), aucs, color=colours, height=0.6)
        low = min(0.5, float(aucs.min()) - 0.1)
        for i, (bar, g) in enumerate(zip(bars, names)):
            if g in heldout:
                bar.set_hatch("//")
                bar.set_edgecolor("white")
            note = ("held out, " if g in heldout else "") + ("worst, " if i == worst and len(names) > 1 else "")
            ax.text(
                max(aucs[i], low + 0.1 * (1 - low)) - 0.005,
                i,
                f"{note}{aucs[i]:.4f}",
                va="center",
                ha="right",
                fontsize=8,
                color="white",
            )
        ax.axvline(aucs.mean(), ls="--", c="black", lw=1, label=f"mean {aucs.mean():.4f}")
        ax.set(yticks=range(len(names)), yticklabels=names)
        ax.invert_yaxis()
        ax.set_xlim(low, 1.0)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "the labels name no manipulation", ha="center", va="center", transform=ax.transAxes)
        ax.set(yticks=[])
    ax.set(xlabel="ROC-AUC (that manipulation's fakes vs all real)", title=title)
    fig.tight_layout()
    save_figure(fig, out)


def plot_robustness(table, clean_auc: float, out: Path, title: str = "AUC under degradation, val") -> None:
    """AUC against severity, one line per kind of degradation, mildest severity on the left;
    each point is labelled with its severity, and the clean AUC is the dashed reference."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    ax.axhline(clean_auc, ls="--", c="grey", lw=1, label=f"clean {clean_auc:.4f}")
    colours = colour_cycle()
    if len(table):
        for i, (kind, rows) in enumerate(table.groupby("kind", sort=False)):
            c = colours[i % len(colours)]
            ax.plot(rows.level, rows.roc_auc, marker="o", color=c, label=kind)
            for _, r in rows.iterrows():
                ax.annotate(
                    f"{r.severity:g}",
                    (r.level, r.roc_auc),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                    color=c,
                )
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    else:
        ax.text(0.5, 0.3, "no degradations in eval.degradations", ha="center", transform=ax.transAxes)
    ax.set(xlabel="severity step (1 = mildest listed; labels: the severity)", ylabel="ROC-AUC", title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    save_figure(fig, out)
