"""Typed, validated configuration read from params.yaml.

Each params group maps onto one frozen dataclass. Unknown keys, wrong types and
impossible values fail at start, with a message that names the key, so a typo in
`dvc exp run -S train.lrr=0.1` never silently trains with the default.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from ffdi.errors import ConfigError

# Test-time views the Detector can average over; the image itself is always one of them.
TTA_VIEWS = ("hflip", "vflip", "rot90", "rot180", "rot270", "transpose")

# Degradations evaluate can apply to val images (ffdi.degrade), written `kind:severity` in
# eval.degradations: kind -> (what the severity is, lowest, highest, whether the bounds are open).
DEGRADATIONS = {
    "jpeg": ("JPEG quality", 1, 100, False),
    "blur": ("Gaussian blur sigma in px", 0.0, 100.0, True),
    "downscale": ("scale factor, down and back up", 0.0, 1.0, True),
    "resize": ("shorter side in px", 1, 100_000, False),
    "noise": ("Gaussian noise sd in 8-bit levels", 0.0, 255.0, True),
}


@dataclass(frozen=True)
class SampleConfig:
    """The built-in, generated sample data set (see ffdi.sample)."""

    out: str = "data/sample"
    n_train: int = 3000
    n_val: int = 400
    n_test: int = 200
    fake_fraction: float = 0.5
    size: int = 64
    jpeg_quality: int = 90
    seed: int = 0

    def check(self) -> None:
        _positive(self, "n_train", "n_val", "size")
        _at_least(self, "n_test", 0)
        _in_range(self, "fake_fraction", 0.0, 1.0, open_=True)
        _in_range(self, "jpeg_quality", 1, 100)


@dataclass(frozen=True)
class DataConfig:
    """Where the multiFFDI-layout data lives. Paths are relative to the data root."""

    root: str = "data/sample"
    train_dir: str = "trainset"
    val_dir: str = "valset"
    test_dir: str = "testset"
    train_labels: str = "trainset_label.txt"
    val_labels: str = "valset_label.txt"
    test_labels: str = "testset_label.txt"
    on_bad_image: Literal["error", "skip"] = "error"
    group_column: Optional[str] = "method"  # label-file column naming each fake's manipulation
    holdout: tuple[str, ...] = ()  # manipulations kept out of training and model selection

    def check(self) -> None:
        for key in ("root", "train_dir", "val_dir", "train_labels", "val_labels"):
            if not getattr(self, key):
                raise ConfigError(f"data.{key} must not be empty")
        if "real" in self.holdout:
            raise ConfigError("data.holdout names manipulations of fakes; 'real' cannot be held out")


@dataclass(frozen=True)
class AugmentConfig:
    """Train-time augmentation; eval uses resize + centre crop + normalisation only."""

    # null: from the model's own pretrained config (timm's resolve_data_config): its input size,
    # and the resize its crop_pct implies.
    resize: Optional[int] = 64
    image_size: Optional[int] = 64
    hflip: float = 0.5
    vflip: float = 0.0
    rotation: float = 0.0
    grayscale: float = 0.0
    # imagenet | none | model (or null): the model's pretrained mean and std, which training
    # writes into mean/std below and the checkpoint keeps.
    normalize: Optional[Literal["imagenet", "none", "model"]] = "imagenet"
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    # Degradations of training images, real and fake alike: never of one class only, which would
    # teach "degraded means fake". Each is null or a [low, high] range, drawn per image and
    # applied with probability degrade_p.
    jpeg: Optional[tuple[int, ...]] = None  # JPEG quality, e.g. [30, 95]
    blur: Optional[tuple[float, ...]] = None  # Gaussian sigma in px, e.g. [0.2, 1.5]
    downscale: Optional[tuple[float, ...]] = None  # shrink factor, then back up, e.g. [0.5, 0.9]
    degrade_p: float = 0.5
    # Self-blending on the fly (SBI, CVPR 2022): a real training image becomes a self-blended
    # fake, label 1, with this probability; ffdi.sample's blending, its jitter scaled by strength.
    self_blend: float = 0.0
    self_blend_strength: float = 1.0
    self_blend_mask: tuple[float, ...] = (0.3, 0.45)  # the blended ellipse's half-axes, fraction of the side

    def check(self) -> None:
        for key in ("resize", "image_size"):
            if getattr(self, key) is not None:
                _positive(self, key)
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and (self.normalize != "model" or len(value) != 3
                                      or (key == "std" and min(value) <= 0)):
                raise ConfigError(f"augment.{key} is the model's (normalize: model), three numbers"
                                  f"{' > 0' if key == 'std' else ''}; got {list(value)} with normalize: {self.normalize}")
        for key, low, high in (("jpeg", 1, 100), ("blur", 0.0, 50.0), ("downscale", 0.0, 1.0),
                               ("self_blend_mask", 0.0, 0.5)):
            rng = getattr(self, key)
            if rng is not None and (len(rng) != 2 or not low <= rng[0] <= rng[1] <= high
                                    or (key in ("downscale", "self_blend_mask") and rng[0] <= 0)):
                raise ConfigError(f"augment.{key} must be null or [low, high] with {low} <= low <= high <= {high}"
                                  f"{' (low > 0)' if key in ('downscale', 'self_blend_mask') else ''}, got {list(rng)}")
        _in_range(self, "degrade_p", 0.0, 1.0)
        _in_range(self, "self_blend", 0.0, 1.0)
        _in_range(self, "self_blend_strength", 0.0, 5.0)
        if self.image_size is not None and self.resize is not None and self.image_size > self.resize:
            raise ConfigError(
                f"augment.image_size ({self.image_size}) must not exceed "
                f"augment.resize ({self.resize}): the centre crop is taken from the resized image"
            )
        for key in ("hflip", "vflip", "grayscale"):
            _in_range(self, key, 0.0, 1.0)
        _in_range(self, "rotation", 0.0, 180.0)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet18"
    se: bool = False
    se_reduction: int = 32
    pretrained: bool = False
    weights: Optional[str] = None
    num_classes: int = 2
    # full: train everything; linear: the head only (a probe on frozen features); norm: the
    # normalisation layers and the head (as GenD tunes foundation models).
    tune: Literal["full", "linear", "norm"] = "full"
    # Fixed noise-residual channels next to RGB (SRM filters, or NPR's neighbouring-pixel
    # residual), mixed back to 3 channels by a learned 1x1 conv that starts as the identity on RGB.
    input: Literal["rgb", "rgb+srm", "rgb+npr"] = "rgb"

    def check(self) -> None:
        _positive(self, "se_reduction")
        if self.num_classes != 2:
            raise ConfigError(f"model.num_classes must be 2 (real/fake), got {self.num_classes}")
        if self.pretrained and self.weights:
            raise ConfigError("set either model.pretrained or model.weights, not both")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 4
    batch_size: int = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 0.001
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: Literal["step", "cosine", "none"] = "cosine"
    step_size: int = 4
    gamma: float = 0.85
    best_metric: Literal["val_auc", "val_acc", "val_loss"] = "val_auc"
    workers: Union[int, Literal["auto"]] = "auto"
    threads: Union[int, Literal["auto"]] = "auto"
    seed: int = 0
    channels_last: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    compile: bool = False
    distributed: Literal["auto", "off", "on"] = "auto"
    # Decay of an exponential moving average of the weights (timm ModelEmaV3, with warm-up), or
    # null. The averaged weights are the ones validated, checkpointed, logged and served.
    ema: Optional[float] = None

    def check(self) -> None:
        _positive(self, "epochs", "batch_size", "step_size")
        if self.ema is not None:
            _in_range(self, "ema", 0.0, 1.0, open_=True)
        if self.workers != "auto":
            _at_least(self, "workers", 0)
        if self.threads != "auto":
            _positive(self, "threads")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        _at_least(self, "weight_decay", 0.0)
        _in_range(self, "gamma", 0.0, 1.0, open_=True)


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 128
    threshold: float = 0.5
    target_fpr: float = 0.001
    fprs: tuple[float, ...] = (0.01, 0.005, 0.001)  # TPR at each, as the FFDI organiser reports
    # Other labelled folders (val layout: data.val_dir + data.val_labels) scored by the same Detector.
    extra_sets: dict[str, str] = field(default_factory=dict)
    # `kind:severity` applied to the decoded val images before the Detector's preprocessing.
    degradations: tuple[str, ...] = ("jpeg:50", "blur:0.5", "blur:1", "downscale:0.5")
    robustness_images: Optional[int] = None  # null: every val image; else a fixed random subset

    def check(self) -> None:
        _positive(self, "batch_size")
        _in_range(self, "threshold", 0.0, 1.0)
        _in_range(self, "target_fpr", 0.0, 1.0, open_=True)
        for f in self.fprs:
            if not 0.0 < f < 1.0:
                raise ConfigError(f"eval.fprs: each must be in (0.0, 1.0), got {f}")
        for name, path in self.extra_sets.items():
            if not _SET_NAME.fullmatch(name) or name in ("val", "real"):
                raise ConfigError(f"eval.extra_sets: name {name!r} must be letters, digits, '_' or '-' "
                                  "(it names metrics and files), and not 'val' or 'real'")
            if not path:
                raise ConfigError(f"eval.extra_sets.{name}: the path must not be empty")
        for spec in self.degradations:
            parse_degradation(spec)
        if len(set(map(parse_degradation, self.degradations))) != len(self.degradations):
            raise ConfigError(f"eval.degradations: a degradation is listed twice: {list(self.degradations)}")
        if self.robustness_images is not None:
            _at_least(self, "robustness_images", 2)


@dataclass(frozen=True)
class PredictConfig:
    batch_size: int = 128
    tta: tuple[str, ...] = ("hflip",)
    out: str = "submission.csv"
    # Other trained models (models:/<id>, runs:/<id>/<path> or checkpoint files) averaged with this
    # run's model into the submission; evaluate reports that ensemble's val metrics as `ensemble`.
    ensemble: tuple[str, ...] = ()

    def check(self) -> None:
        _positive(self, "batch_size")
        check_views(self.tta, "predict.tta")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow. An empty uri means the SQLite store `mlflow.db` at the project root."""

    experiment: str = "ffdi"
    uri: Optional[str] = None
    log_model: bool = True

    def check(self) -> None:
        if not self.experiment:
            raise ConfigError("tracking.experiment must not be empty")


@dataclass(frozen=True)
class Params:
    sample: SampleConfig = field(default_factory=SampleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        # Lists, not tuples: YAML, JSON and MLflow take them as written in params.yaml.
        return dataclasses.asdict(self, dict_factory=lambda kv: {k: list(v) if isinstance(v, tuple) else v for k, v in kv})


_SET_NAME = re.compile(r"[A-Za-z0-9_-]+")


def parse_degradation(spec: str) -> tuple[str, float]:
    """'jpeg:70' -> ('jpeg', 70.0), checked against DEGRADATIONS."""
    kind, sep, raw = str(spec).partition(":")
    kind = kind.strip()
    if not sep or kind not in DEGRADATIONS:
        raise ConfigError(f"eval.degradations: {spec!r} must be 'kind:severity' with kind one of "
                          f"{', '.join(DEGRADATIONS)}, e.g. 'jpeg:70'")
    what, low, high, open_ = DEGRADATIONS[kind]
    try:
        severity = float(raw)
    except ValueError:
        raise ConfigError(f"eval.degradations: {spec!r}: the {what} must be a number") from None
    ok = low < severity < high if open_ else low <= severity <= high
    if isinstance(low, int) and severity != int(severity):
        ok = False
    if not ok:
        bounds = f"({low}, {high})" if open_ else f"[{low}, {high}]"
        kind_of = "an integer" if isinstance(low, int) else "a number"
        raise ConfigError(f"eval.degradations: {spec!r}: the {what} must be {kind_of} in {bounds}")
    return kind, severity


def check_views(views: tuple[str, ...], key: str) -> None:
    for v in views:
        if v not in TTA_VIEWS:
            raise ConfigError(f"{key}: unknown view {v!r}; known views: {', '.join(TTA_VIEWS)}")
    if len(set(views)) != len(views):
        raise ConfigError(f"{key}: a view is listed twice: {list(views)}")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate the whole params file. Missing groups take their defaults."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of groups, got {type(raw).__name__}")
    try:
        return from_dict(Params, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def from_dict(cls: type, raw: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a plain dict, checking keys, types and values."""
    where = prefix.rstrip(".") or "params"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), names, n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!s}{hint}; known keys in {where}: {', '.join(sorted(names))}"
        )
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(hints[name], value, f"{prefix}{name}")
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check()
    return obj


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value if value is not None else {}, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(a, value, key)
            except ConfigError as e:
                errors.append(e)
        if len(inner) == 1:
            raise errors[0]
        raise ConfigError(f"{key} must be {' or '.join(_describe(a) for a in inner)}, got {_show(value)}")
    if origin is dict:
        key_hint, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {_show(value)}")
        return {_coerce(key_hint, k, f"{key} key {k!r}"): _coerce(item, v, f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        (item, _) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {_show(value)}")
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}; got {_show(value)}")
        return value
    # bool is an int in Python; a YAML `true` for an int knob is a mistake, not a 1.
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a programming error in this module
        raise TypeError(f"unsupported config type {hint} for {key}")
    raise ConfigError(f"{key} must be {_type_name(hint)}, got {_show(value)}")


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(c) for c in typing.get_args(hint))
    return _type_name(hint)


def _type_name(hint: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _positive(obj: Any, *keys: str) -> None:
    for key in keys:
        if getattr(obj, key) <= 0:
            raise ConfigError(f"{_group(obj)}.{key} must be > 0, got {getattr(obj, key)}")


def _at_least(obj: Any, key: str, low: float) -> None:
    if getattr(obj, key) < low:
        raise ConfigError(f"{_group(obj)}.{key} must be >= {low}, got {getattr(obj, key)}")


def _in_range(obj: Any, key: str, low: float, high: float, open_: bool = False) -> None:
    v = getattr(obj, key)
    ok = low < v < high if open_ else low <= v <= high
    if not ok:
        bounds = f"({low}, {high})" if open_ else f"[{low}, {high}]"
        raise ConfigError(f"{_group(obj)}.{key} must be in {bounds}, got {v}")


# Each group's dataclass -> its name in params.yaml, as Params declares it.
_GROUPS = {cls: name for name, cls in typing.get_type_hints(Params).items()}


def _group(obj: Any) -> str:
    return _GROUPS[type(obj)]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'se': True}} -> {'model.se': True}: the names MLflow and DVC show."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
