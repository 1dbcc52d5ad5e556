"""Pictures and tables for people: the plots and markdown of evaluate and compare.

Every figure is written atomically (io.save_figure) with matplotlib's non-interactive backend.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from ffdi.io import save_figure  # noqa: E402


def _colours() -> list[str]:
    return plt.rcParams["axes.prop_cycle"].by_key()["color"]


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


def plot_run_curves(histories: dict[str, list[dict[str, list]]], out: Path) -> None:
    """Per-epoch val AUC and loss, one line per run, one colour per group.

    histories: {group: [{'step': [...], 'val_auc': [...], 'val_loss': [...]}, ...]}.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    colours = _colours()
    for i, (label, runs) in enumerate(histories.items()):
        for j, h in enumerate(runs):
            for ax, key in zip(axes, ("val_auc", "val_loss")):
                ax.plot(h["step"], h[key], color=colours[i % len(colours)], alpha=0.8,
                        label=label if j == 0 else None, marker="o", ms=3)
    for ax, key in zip(axes, ("val AUC", "val loss")):
        ax.set(xlabel="epoch", ylabel=key, title=f"{key} per epoch, one line per run")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)


def plot_run_rocs(y: np.ndarray, probs: dict[str, np.ndarray], mean_aucs: dict[str, float], out: Path) -> None:
    """ROC curves on the same val images: one line per run, one colour per group."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    colours = _colours()
    for i, (label, p) in enumerate(probs.items()):
        for j, run_probs in enumerate(p):
            fpr, tpr, _ = roc_curve(y, run_probs)
            ax.plot(fpr, tpr, color=colours[i % len(colours)], alpha=0.7,
                    label=f"{label} (mean AUC {mean_aucs[label]:.4f})" if j == 0 else None)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on val, one line per run")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)
