"""Every name that more than one module writes or reads: metric names, tags, artifact and report files.

One place for each string, so that what evaluate logs is what compare, generalisation and the knob
table read back, and a rename is one edit. Names used by a single module stay in that module.

evaluate's report keeps its own keys (`val.roc_auc`, `groups`, `robustness`, ...): all of it in
reports/evaluate/details.json, its headline numbers in metrics.json (ffdi.evaluation.evaluate.headline).
MLflow receives them under the names below (ffdi.tracking.evaluation.evaluation_metrics).
"""

from __future__ import annotations

# --- evaluate's report --------------------------------------------------------------------------------
GROUP_AUC = "auc_"  # + manipulation, beside the metrics it goes with (robustness.jpeg.70.auc_splice)
EVALUATION_DETAILS = "details.json"  # the whole report, in reports/evaluate and the run's evaluate/

# --- MLflow metric names ------------------------------------------------------------------------------
# MLflow's UI charts a run's metrics in sections named by all but the last "/"-separated part of the
# name (epoch/val/auc: section epoch/val, chart auc), and lists the sections in alphabetical order
# (MLflow 3.17's RunsChartsCardConfig.getBaseChartAndSectionConfigs). The per-epoch curves are under
# epoch/ so that their sections come first, before eval/, extra/, heldout/ and robust/.
EPOCH_TRAIN = "epoch/train/"  # + a history.csv column without its train_ prefix, step = epoch
EPOCH_VAL = "epoch/val/"  # + a history.csv column without its val_ prefix, step = epoch
EPOCH_TRAIN_LOSS = EPOCH_TRAIN + "loss"
EPOCH_TRAIN_ACC = EPOCH_TRAIN + "acc"
EPOCH_VAL_LOSS = EPOCH_VAL + "loss"
EPOCH_VAL_ACC = EPOCH_VAL + "acc"
EPOCH_VAL_AUC = EPOCH_VAL + "auc"
HW = "hw/"  # + per epoch, how it computed: hw/epoch_seconds, hw/loader_workers, hw/torch_threads
TRAIN = "train/"  # + the end of training: train/best_epoch, train/best_val_auc, train/trainable_params
SKIPPED_IMAGES = "skipped_images/"  # + the stage that skipped unreadable files: train, evaluate, predict
PREDICT_IMAGES = "predict/images"  # the submission's rows

EVAL = "eval/"  # + a report val key: eval/roc_auc, eval/accuracy, ...
EVAL_ROC_AUC = EVAL + "roc_auc"  # the headline: every run evaluate has seen has it
EVAL_DEGRADED_MEAN_AUC = EVAL + "degraded_mean_auc"
EVAL_GROUP_WORST_AUC = EVAL + "group_worst_auc"
EVAL_TPR_AT_FPR = EVAL + "tpr_at_fpr"
EVAL_ACCURACY = EVAL + "accuracy"
AUC = "auc/"  # + manipulation, inside a section: eval/auc/splice, robust/jpeg/70/auc/splice
EVAL_GROUP_AUC = EVAL + AUC  # + manipulation: its fakes against all real images
HELDOUT, SEEN = "heldout/", "seen/"  # + metric: the held-out manipulations' fakes (or the others') vs real
HELDOUT_ROC_AUC = HELDOUT + "roc_auc"
ROBUST = "robust/"  # + kind/severity/metric: robust/jpeg/70/auc, robust/blur/0p5/auc/splice
EXTRA = "extra/"  # + set/metric: extra/phase2/roc_auc, extra/phase2/auc/splice
ENSEMBLE = "ensemble/"  # + metric: predict.ensemble's val metrics

# --- videos (the frames stage's crops): one score per video from its frames' ---------------------------
VAL_VIDEO = "val_video"  # metrics.json: val's videos, each scored by eval.video_aggregate of its frames
EVAL_VIDEO = EVAL + "video/"  # + a val_video key: eval/video/roc_auc, eval/video/auc/<manipulation>, ...
VIDEO = "video/"  # an extra set of frames' video-level figures: extra/<set>/video/roc_auc

# --- MLflow tags ------------------------------------------------------------------------------------
DATA_HASH_TAG = "data.hash"  # the train stage's fingerprint of the data a run trained and was evaluated on
RUN_KIND_TAG = "ffdi.kind"  # what made a run that is not a pipeline run ("compare", REEVALUATION)
# A run of evaluate (and predict) of its own, nested under a training run that DVC took from its cache.
REEVALUATION = "re-evaluation"
TRAIN_RUN_TAG = "ffdi.train_run"  # a re-evaluation's training run, beside MLflow's own parent tag
MODELS_TAG = "ffdi.models"  # a re-evaluation's models: its training run's (name=models:/<id>, ...)

# --- files: evaluate's reports, and where MLflow keeps them ------------------------------------------
EVALUATE_ARTIFACTS = "evaluate"  # the artifact folder of evaluate's reports in a run
VAL_PREDICTIONS = "val_predictions.csv"  # per val image: target, P(fake), group
VAL_VIDEO_PREDICTIONS = "val_video_predictions.csv"  # per val video: target, group, frames, P(fake)
ROBUSTNESS_DIR = "robustness"  # one CSV per kind of degradation: DVC draws one plot each
ROBUSTNESS_PREDICTIONS = "robustness_predictions.csv"  # per image and degradation, for paired bootstraps
CHECKPOINT_NAME = "checkpoint.pt"  # a checkpoint's name inside a logged MLflow model, where Detector.load finds it

# --- class activation maps: `ffdi explain --method` and ffdi.inference.cams --------------------------
CAM_METHODS = {"layercam": ("LayerCAM", "LayerCAM"), "gradcam": ("GradCAM", "Grad-CAM")}  # name -> (class, title)
