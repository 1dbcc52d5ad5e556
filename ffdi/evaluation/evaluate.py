"""One evaluation of a Detector on val: its report, and the files behind it.

`evaluate(...)` scores and measures; `write_reports(...)` writes the CSVs and plots; the evaluate
stage writes `report` whole as reports/evaluate/details.json and its `headline` as metrics.json (what
`dvc exp show` compares experiments by), and `ffdi.tracking.evaluation.log_evaluation` logs it all. The
report holds:
- `val`: the overall val metrics; `val_no_tta`: the same without test-time views;
- `groups`: per manipulation, its fakes against all real images (`group_mean_auc`, `group_worst_auc`);
- `heldout` / `seen`: the held-out manipulations' fakes (data.holdout), and the others', against all real;
- `extra_sets.<name>`: each labelled folder of eval.extra_sets, scored by the same Detector (`video`: the
  video-level figures of a folder of frames with their video_name, another data set's frames stage output); a folder of
  videos (`video_name,target` labels, multiFFDV's) is scored per video (ffdi.inference.video: eval.video_frames
  frames, aggregated by eval.video_aggregate), with `aggregate_auc`: the AUC of each aggregation;
- `robustness.<kind>.<severity>`: val under each degradation of eval.degradations, per manipulation too
  (`auc_<manipulation>`); `robustness.clean` is the same images undegraded; `degraded_mean_auc` and
  `degraded_worst_auc`: the mean and the lowest AUC over the degradations;
- `val_video`: where val is the frames of videos (the frames stage), one score per video (eval.video_aggregate
  of its frames'), and that score's metrics, per manipulation too; `val` is then the frame-level figures;
- `ensemble`: with predict.ensemble, the val metrics of that ensemble (this model and those), which
  then writes the submission; every other figure is this run's model alone.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np
import pandas as pd

from ffdi.config import DataConfig, EvalConfig
from ffdi.data.labels import IMAGE_SUFFIXES, VIDEO_SUFFIXES, build_manifest, read_labels
from ffdi.data.video import aggregate
from ffdi.errors import DataError
from ffdi.evaluation import degrade, metrics
from ffdi.files import write_csv
from ffdi.schema import (
    GROUP_AUC,
    ROBUSTNESS_DIR,
    ROBUSTNESS_PREDICTIONS,
    VAL_PREDICTIONS,
    VAL_VIDEO,
    VAL_VIDEO_PREDICTIONS,
)

# The aggregations whose video-level AUC an extra set of videos reports beside the configured one.
COMPARED_AGGREGATES = ("mean", "max", "topk:2", "topk:4")


class Headline(TypedDict, total=False):
    """metrics.json: the numbers experiments are compared by, at most 20 with a few extra sets; the
    rest of the report (per manipulation, per degradation, confusion, ...) is in details.json."""

    val: dict[str, float]  # roc_auc, accuracy, average_precision, eer, tpr_at_fpr (target_fpr and eval.fprs)
    val_no_tta: dict[str, float]  # roc_auc
    val_video: dict[str, float]  # roc_auc, videos: where val is the frames of videos, one score per video
    precision: str  # the checkpoint's: the same params score differently in bf16 and fp32
    images: int
    group_mean_auc: float
    group_worst_auc: float
    degraded_mean_auc: float
    degraded_worst_auc: float
    heldout: dict[str, float]  # roc_auc
    extra_sets: dict[str, dict[str, float]]  # name -> roc_auc (and video_roc_auc for another data set's frames)
    ensemble: dict[str, float]  # roc_auc


# The val metrics that stay in details.json only.
DETAIL_VAL_KEYS = ("log_loss",)
HEADLINE_NUMBERS = ("images", "group_mean_auc", "group_worst_auc", "degraded_mean_auc", "degraded_worst_auc")


def headline(report: dict) -> Headline:
    """metrics.json: the report's headline numbers, the same values (not recomputed)."""
    out: Headline = {
        "val": {k: v for k, v in report["val"].items() if k not in DETAIL_VAL_KEYS},
        "val_no_tta": {"roc_auc": report["val_no_tta"]["roc_auc"]},
        "precision": report["precision"],
    }
    out.update({k: report[k] for k in HEADLINE_NUMBERS if k in report})  # type: ignore[misc]
    if VAL_VIDEO in report:
        out[VAL_VIDEO] = {k: report[VAL_VIDEO][k] for k in ("roc_auc", "videos")}
    if "heldout" in report:
        out["heldout"] = {"roc_auc": report["heldout"]["roc_auc"]}
    if "extra_sets" in report:
        out["extra_sets"] = {
            name: {"roc_auc": e["roc_auc"], **({"video_roc_auc": e["video"]["roc_auc"]} if "video" in e else {})}
            for name, e in report["extra_sets"].items()
        }
    if "ensemble" in report:
        out["ensemble"] = {"roc_auc": report["ensemble"]["roc_auc"]}
    return out


@dataclass
class Evaluation:
    report: dict  # everything: details.json; metrics.json is its headline()
    predictions: pd.DataFrame  # the scored val rows: img_name, target, group, y_pred, predicted
    robustness: dict  # degrade.Degradation -> its metrics
    clean_auc: float  # AUC of the images the degradations were applied to, undegraded
    extra: dict = field(default_factory=dict)  # extra set name -> its scored rows (img_name, target, group, y_pred)
    skipped: dict = field(default_factory=dict)  # "evaluate" or "extra_<name>" -> [(path, reason)]
    seconds: dict = field(default_factory=dict)
    degraded: pd.DataFrame | None = None  # per image, P(fake) clean and under each degradation
    videos: pd.DataFrame | None = None  # val of videos: per video, video_name, target, group, frames, y_pred


def labelled_folder(name: str, root: str, data: DataConfig) -> tuple[pd.DataFrame, str]:
    """An extra set's manifest (val layout: data.val_dir + data.val_labels under `root`) and a
    fingerprint of its names, labels and file sizes.

    DVC cannot list the folders of a params mapping as deps of one stage, so the fingerprint goes
    into metrics.json and MLflow instead: a number is always traceable to the data it came from.
    """
    key = f"eval.extra_sets.{name}"
    folder = Path(root)
    if not folder.is_dir():
        raise DataError(f"{key}: folder {root!r} not found")
    labels_path = folder / data.val_labels
    labels = read_labels(labels_path, require_target=True, group_column=data.group_column)
    if set(labels.target) != {0, 1}:
        raise DataError(
            f"{labels_path} ({key}): both real (0) and fake (1) images are needed for ROC-AUC, "
            f"got only target {sorted(set(labels.target))}"
        )
    videos = labels.img_name.map(lambda n: Path(n).suffix.lower() in VIDEO_SUFFIXES)
    if videos.any() and not videos.all():
        raise DataError(
            f"{labels_path} ({key}): names {videos.sum()} videos and {(~videos).sum()} images; "
            "a set is one or the other"
        )
    manifest = build_manifest(
        folder, data.val_dir, labels, labels_path, VIDEO_SUFFIXES if videos.any() else IMAGE_SUFFIXES
    )
    digest = hashlib.sha256(manifest[["img_name", "target", "group"]].to_csv(index=False).encode())
    for path in manifest.path:
        digest.update(f"{os.path.getsize(path)}\n".encode())
    return manifest, digest.hexdigest()[:16]


def is_video_set(manifest: pd.DataFrame) -> bool:
    return len(manifest) > 0 and all(Path(p).suffix.lower() in VIDEO_SUFFIXES for p in manifest.path)


def score_video_set(
    detector, manifest: pd.DataFrame, cfg: EvalConfig, on_bad_image: str = "error", desc: str = "score"
) -> tuple[np.ndarray, np.ndarray, list, dict]:
    """(kept row positions, video P(fake)s, skipped (path, reason), extra metrics) of a set of videos.

    One video at a time through the Detector (ffdi.inference.video), so memory stays that of one batch of
    frames. The frame scores are kept (a few floats per video) to measure every aggregation."""
    from tqdm import tqdm

    from ffdi.inference import video

    sampling = video.Sampling(frames=cfg.video_frames)
    kept, prob, frame_probs, skipped = [], [], [], []
    for i, path in enumerate(tqdm(manifest.path, desc=desc, unit="video", mininterval=1.0, leave=False)):
        v = video.score_video(detector, path, sampling, cfg.video_aggregate, batch_size=cfg.batch_size)
        if v.error:
            if on_bad_image == "error":
                raise DataError(f"{path}: {v.error} (data.on_bad_image: skip scores the others)")
            tqdm.write(f"skipped: {path}: {v.error}")
            skipped.append((path, v.error))
            continue
        kept.append(i)
        prob.append(v.score)
        frame_probs.append(v.probs())
    y = manifest.target.to_numpy()[kept]
    extra = {
        "videos": len(kept),
        # each frame scored alone, labelled as its video: the protocol's frame-level AUC
        "frame_roc_auc": metrics.roc_auc(np.repeat(y, list(map(len, frame_probs))), np.concatenate(frame_probs)),
        "frames_scored": int(sum(map(len, frame_probs))),
        "frames_per_video": cfg.video_frames,
        "aggregate": cfg.video_aggregate,
        "aggregate_auc": {
            how: metrics.roc_auc(y, np.array([video.aggregate(f, how) for f in frame_probs]))
            for how in dict.fromkeys((cfg.video_aggregate, *COMPARED_AGGREGATES))
        },
    }
    return np.asarray(kept, dtype=int), np.asarray(prob, dtype=np.float64), skipped, extra


def per_video(frames: pd.DataFrame, prob: np.ndarray, how: str) -> pd.DataFrame:
    """One row per video (`frames.video`), in the order of their first frame: video_name, target, group,
    frames, and y_pred, the `how` aggregate (mean | max | topk:K) of its frames' P(fake)."""
    rows = pd.DataFrame({"video_name": frames.video.to_numpy(), "p": np.asarray(prob, dtype=np.float64)})
    rows["target"], rows["group"] = frames.target.to_numpy(), frames.group.to_numpy()
    by_video = rows.groupby("video_name", sort=False)
    out = by_video.agg(target=("target", "first"), group=("group", "first"), frames=("p", "size")).reset_index()
    out["y_pred"] = [aggregate(p.to_numpy(), how) for _, p in by_video.p]
    return out


def scored_metrics(frame: pd.DataFrame, prob: np.ndarray, cfg: EvalConfig) -> dict:
    """The binary metrics of scored rows, per manipulation too where the labels name them."""
    y = frame.target.to_numpy()
    out = metrics.binary_metrics(y, prob, cfg.threshold, cfg.target_fpr, cfg.fprs)
    per_group = metrics.group_metrics(y, prob, frame.group, cfg.fprs)
    if per_group:
        out["groups"] = per_group
        out.update(metrics.summarise_groups(per_group))
    return out


def evaluate(
    detector,
    val: pd.DataFrame,
    cfg: EvalConfig,
    *,
    holdout: Sequence[str] = (),
    extra: dict[str, tuple[pd.DataFrame, str]] | None = None,
    ensemble=None,
    workers: int = 0,
    on_bad_image: str = "error",
) -> Evaluation:
    """Score `val` (and each extra set, and the ensemble if given) and measure it all.

    extra: name -> (manifest, fingerprint), from `labelled_folder`. ensemble: an Ensemble holding
    `detector` and others, scored on val too (the submission's scorer when predict.ensemble is set).
    """
    seconds, skipped = {}, {}
    t0 = time.perf_counter()
    res = detector.score_manifest(val, cfg.batch_size, workers, on_bad_image, "evaluate")
    seconds["val"] = time.perf_counter() - t0
    skipped["evaluate"] = res.skipped
    kept = val.iloc[res.index].reset_index(drop=True)
    y, prob = kept.target.to_numpy(), res.prob
    per_group = metrics.group_metrics(y, prob, kept.group, cfg.fprs)
    out = {
        "val": metrics.binary_metrics(y, prob, cfg.threshold, cfg.target_fpr, cfg.fprs),
        "val_no_tta": {"roc_auc": metrics.roc_auc(y, res.prob_single_view)},
        "tta": list(detector.views[1:]),
        "precision": detector.precision,
        "target_fpr": cfg.target_fpr,
        "threshold": cfg.threshold,
        "images": int(len(kept)),
        "skipped_images": len(res.skipped),
    }
    if per_group:
        out["groups"] = per_group
        out.update(metrics.summarise_groups(per_group))
    if holdout:
        out.update(metrics.heldout_metrics(y, prob, kept.group, list(holdout), cfg.fprs))
    videos = None
    if "video" in kept:  # the frames of videos: the protocol's video-level figures beside the frames'
        videos = per_video(kept, prob, cfg.video_aggregate)
        out[VAL_VIDEO] = {
            **scored_metrics(videos, videos.y_pred.to_numpy(), cfg),
            "videos": int(len(videos)),
            "frames": int(videos.frames.sum()),
            "aggregate": cfg.video_aggregate,
        }
    cm = metrics.confusion(y, prob, cfg.threshold)
    out["confusion"] = {"tn": int(cm[0, 0]), "fp": int(cm[0, 1]), "fn": int(cm[1, 0]), "tp": int(cm[1, 1])}

    if ensemble is not None:
        r = ensemble.score_manifest(val, cfg.batch_size, workers, on_bad_image, "ensemble")
        frame = val.iloc[r.index].reset_index(drop=True)
        out["ensemble"] = {**scored_metrics(frame, r.prob, cfg), "models": [m.source for m in ensemble.members]}

    # Other data sets, scored by the same Detector (same views, same precision).
    extra_rows = {}
    for name, (manifest, data_hash) in (extra or {}).items():
        t0 = time.perf_counter()
        if is_video_set(manifest):
            index, set_prob, set_skipped, counts = score_video_set(
                detector, manifest, cfg, on_bad_image, f"extra {name}"
            )
            counts["skipped_videos"] = len(set_skipped)
        else:
            r = detector.score_manifest(manifest, cfg.batch_size, workers, on_bad_image, f"extra {name}")
            index, set_prob, set_skipped = r.index, r.prob, r.skipped
            counts = {"images": int(len(index)), "skipped_images": len(r.skipped)}
            if "video" in manifest:  # another data set's frames stage output: its videos too
                videos = per_video(manifest.iloc[index], set_prob, cfg.video_aggregate)
                counts["video"] = {
                    **scored_metrics(videos, videos.y_pred.to_numpy(), cfg),
                    "videos": int(len(videos)),
                    "aggregate": cfg.video_aggregate,
                }
        frame = manifest.iloc[index].reset_index(drop=True)
        extra_rows[name] = frame[["img_name", "target", "group"]].assign(y_pred=set_prob)
        skipped[f"extra_{name}"] = set_skipped
        out.setdefault("extra_sets", {})[name] = {
            **scored_metrics(frame, set_prob, cfg),
            **counts,
            "data_hash": data_hash,
        }
        seconds[f"extra_{name}"] = time.perf_counter() - t0

    # Robustness: the same images degraded, real and fake alike, before the Detector's preprocessing.
    t0 = time.perf_counter()
    degradations = degrade.parse_all(cfg.degradations)
    rows = degrade.subset(kept, cfg.robustness_images)
    clean = prob[rows.index.to_numpy()]
    degraded = degrade.score_degraded(detector, rows, degradations, cfg.batch_size, workers)
    robust = degrade.robustness(rows, clean, degraded, cfg.threshold, cfg.fprs)
    clean_auc = metrics.roc_auc(rows.target.to_numpy(), clean)
    if degradations:
        # The clean per-manipulation AUCs of these images: `groups` is all of val, which may be more.
        clean_groups = metrics.group_aucs(rows.target, clean, rows.group)
        out["robustness"] = {
            "clean": {"roc_auc": clean_auc, "images": int(len(rows)), **clean_groups},
            **degrade.nested(robust),
        }
        out.update(degrade.summary(robust))
        seconds["robustness"] = time.perf_counter() - t0

    predictions = pd.DataFrame(
        {
            "img_name": kept.img_name,
            "target": y,
            "group": kept.group,
            "y_pred": prob,
            "predicted": (prob >= cfg.threshold).astype(int),
            "path": kept.path,
        }
    )
    return Evaluation(
        out,
        predictions,
        robust,
        clean_auc,
        extra_rows,
        skipped,
        seconds,
        degrade.predictions(rows, clean, degraded) if degradations else None,
        videos,
    )


def robustness_tables(ev: Evaluation) -> dict[str, pd.DataFrame]:
    """{kind: its severities mild -> severe}, the CSVs of reports/evaluate/robustness/. Each row also
    holds the clean references (clean_roc_auc, clean_auc_<manipulation>): DVC plots only the columns
    of one file against its own x."""
    robust_table = degrade.table(ev.robustness)
    clean = {
        f"clean_{k}": v for k, v in ev.report.get("robustness", {}).get("clean", {}).items() if k.startswith(GROUP_AUC)
    }
    return {
        kind: frame.drop(columns=["kind"]).reset_index(drop=True).assign(clean_roc_auc=ev.clean_auc, **clean)
        for kind, frame in (robust_table.groupby("kind", sort=False) if len(robust_table) else ())
    }


def write_reports(ev: Evaluation, detector, out: Path, cfg: EvalConfig, heldout: Sequence[str] = ()) -> None:
    """val_predictions.csv, roc.csv/png, confusion.png, groups.csv/png, robustness/*.csv and .png, and
    explain.png (where the detector sees fake evidence, for its worst mistakes) in `out`."""
    # Here, not at the top: evaluate() must run where matplotlib and grad-cam are not installed
    # (benchmarks.studies.generalisation_grid on the lent GPU machines).
    from ffdi.evaluation import plots
    from ffdi.evaluation.gallery import gallery

    t0 = time.perf_counter()
    p, r, threshold = ev.predictions, ev.report, cfg.threshold
    y, prob = p.target.to_numpy(), p.y_pred.to_numpy()
    write_csv(out / VAL_PREDICTIONS, p.drop(columns=["path"]))
    if ev.videos is not None:
        write_csv(out / VAL_VIDEO_PREDICTIONS, ev.videos)
    roc = metrics.roc_points(y, prob)
    write_csv(out / "roc.csv", pd.DataFrame(roc))
    plots.plot_roc(roc, r["val"]["roc_auc"], out / "roc.png")
    plots.plot_confusion(metrics.confusion(y, prob, threshold), out / "confusion.png")
    gallery(detector, p, out / "explain.png", n=4, threshold=threshold)

    per_group = r.get("groups") or {"all fakes": metrics.ranking_metrics(y, prob, cfg.fprs)}
    fakes = p.group[p.target == 1]
    rows = [
        {"group": g, "fakes": int((fakes == g).sum()) if g != "all fakes" else len(fakes), "heldout": g in heldout, **m}
        for g, m in per_group.items()
    ]
    write_csv(out / "groups.csv", pd.DataFrame(rows))
    plots.plot_groups(
        per_group,
        out / "groups.png",
        tuple(heldout),
        "AUC per manipulation, val" if "groups" in r else "AUC, val (the labels name no manipulation)",
    )

    folder = out / ROBUSTNESS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.csv"):  # kinds no longer listed
        stale.unlink()
    for kind, frame in robustness_tables(ev).items():
        write_csv(folder / f"{kind}.csv", frame)
    if ev.degraded is not None:
        write_csv(out / ROBUSTNESS_PREDICTIONS, ev.degraded)
    plots.plot_robustness(degrade.table(ev.robustness), ev.clean_auc, out / "robustness.png")
    ev.seconds["reports"] = time.perf_counter() - t0


def _worst_group(m: dict) -> str:
    """' (worst splice 0.8123)': the manipulation a degradation hides best, where there are several."""
    aucs = {k.removeprefix(GROUP_AUC): v for k, v in m.items() if k.startswith(GROUP_AUC)}
    if len(aucs) < 2:
        return ""
    worst = min(aucs, key=aucs.get)
    return f" (worst {worst} {aucs[worst]:.4f})"


def summary_lines(ev: Evaluation) -> list[str]:
    """What the evaluate stage prints."""
    r = ev.report
    lines = [", ".join(f"{k} {v:.4f}" for k, v in r["val"].items())]
    if VAL_VIDEO in r:
        v = r[VAL_VIDEO]
        lines[0] = f"frames: {lines[0]}"
        lines.append(
            f"videos ({v['aggregate']} of their frames, {v['videos']} videos): "
            + ", ".join(f"{k} {x:.4f}" for k, x in v.items() if k in r["val"])
        )
    if "ensemble" in r:
        lines.append(
            f"ensemble of {len(r['ensemble']['models'])} (the submission's scorer): "
            f"roc_auc {r['ensemble']['roc_auc']:.4f}"
        )
    for name, m in r.get("extra_sets", {}).items():
        if "videos" in m:
            lines.append(
                f"extra set {name}: roc_auc {m['roc_auc']:.4f} on {m['videos']} videos "
                f"({m['aggregate']} of {m['frames_per_video']} frames; "
                + ", ".join(f"{k} {v:.4f}" for k, v in m["aggregate_auc"].items())
                + ")"
            )
        else:
            lines.append(f"extra set {name}: roc_auc {m['roc_auc']:.4f} on {m['images']} images")
    if ev.robustness:
        lines.append(
            f"robustness (AUC): clean {ev.clean_auc:.4f}; "
            + ", ".join(f"{d.label} {m['roc_auc']:.4f}{_worst_group(m)}" for d, m in ev.robustness.items())
        )
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in ev.seconds.items()))
    return lines
