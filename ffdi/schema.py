"""Every name that more than one module writes or reads: metric names, tags, artifact and report files.

One place for each string, so that what evaluate logs is what compare, generalisation and the knob
table read back, and a rename is one edit. Names used by a single module stay in that module.

metrics.json (evaluate's report) keeps its own keys (`roc_auc`, `groups`, `robustness`, ...); MLflow
receives them flattened under the prefixes below (ffdi.tracking.evaluation.evaluation_metrics).
"""

from __future__ import annotations

# --- metrics.json -----------------------------------------------------------------------------------
GROUP_AUC = "auc_"  # + manipulation, beside the metrics it goes with (robustness.jpeg.70.auc_splice)

# --- MLflow metrics of an evaluation ----------------------------------------------------------------
EVAL = "eval_"  # + a metrics.json val key: eval_roc_auc, eval_accuracy, ...
EVAL_ROC_AUC = EVAL + "roc_auc"  # the headline: every run evaluate has seen has it
EVAL_DEGRADED_MEAN_AUC = EVAL + "degraded_mean_auc"
EVAL_GROUP_WORST_AUC = EVAL + "group_worst_auc"
EVAL_TPR_AT_FPR = EVAL + "tpr_at_fpr"
EVAL_ACCURACY = EVAL + "accuracy"
EVAL_GROUP_AUC = EVAL + GROUP_AUC  # + manipulation: its fakes against all real images
HELDOUT, SEEN = "heldout_", "seen_"  # + metric: the held-out manipulations' fakes (or the others') vs real
HELDOUT_ROC_AUC = HELDOUT + "roc_auc"

# --- videos (the frames stage's crops): one score per video from its frames' ---------------------------
VAL_VIDEO = "val_video"  # metrics.json: val's videos, each scored by eval.video_aggregate of its frames
EVAL_VIDEO = EVAL + "video_"  # + a val_video key: eval_video_roc_auc, eval_video_auc_<manipulation>, ...

# --- MLflow tags ------------------------------------------------------------------------------------
DATA_HASH_TAG = "data.hash"  # the train stage's fingerprint of the data a run trained and was evaluated on
RUN_KIND_TAG = "ffdi.kind"  # what made a run that is not a pipeline run ("compare")

# --- files: evaluate's reports, and where MLflow keeps them ------------------------------------------
EVALUATE_ARTIFACTS = "evaluate"  # the artifact folder of evaluate's reports in a run
VAL_PREDICTIONS = "val_predictions.csv"  # per val image: target, P(fake), group
VAL_VIDEO_PREDICTIONS = "val_video_predictions.csv"  # per val video: target, group, frames, P(fake)
ROBUSTNESS_DIR = "robustness"  # one CSV per kind of degradation: DVC draws one plot each
ROBUSTNESS_PREDICTIONS = "robustness_predictions.csv"  # per image and degradation, for paired bootstraps
CHECKPOINT_NAME = "checkpoint.pt"  # a checkpoint's name inside a logged MLflow model, where Detector.load finds it

# --- class activation maps: `ffdi explain --method` and ffdi.inference.cams --------------------------
CAM_METHODS = {"layercam": ("LayerCAM", "LayerCAM"), "gradcam": ("GradCAM", "Grad-CAM")}  # name -> (class, title)
