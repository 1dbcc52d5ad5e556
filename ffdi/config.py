"""Typed, validated configuration read from params.yaml.

Each params group is one frozen pydantic dataclass: its fields declare the types, bounds and
choices, and pydantic checks them whenever a config is built (from params.yaml, a checkpoint,
`dataclasses.replace` or code). Unknown keys, wrong types and impossible values fail at start
with a one-line ConfigError that names the key, so a typo in `dvc exp run -S train.lrr=0.1`
never silently trains with the default.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import typing
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import pydantic.dataclasses
import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ffdi.errors import ConfigError

# Test-time views the Detector can average over; the image itself is always one of them.
TTA_VIEWS = ("hflip", "vflip", "rot90", "rot180", "rot270", "transpose")

# Degradations evaluate can apply to val images (ffdi.evaluation.degrade), written `kind:severity` in
# eval.degradations: kind -> (what the severity is, lowest, highest, whether the bounds are open).
DEGRADATIONS = {
    "jpeg": ("JPEG quality", 1, 100, False),
    "webp": ("WebP quality", 1, 100, False),
    "social": ("JPEG quality after halving the size", 1, 100, False),
    "blur": ("Gaussian blur sigma in px", 0.0, 100.0, True),
    "downscale": ("scale factor, down and back up", 0.0, 1.0, True),
    "resize": ("shorter side in px", 1, 100_000, False),
    "noise": ("Gaussian noise sd in 8-bit levels", 0.0, 255.0, True),
}


def parse_degradation(spec: str) -> tuple[str, float]:
    """'jpeg:70' -> ('jpeg', 70.0), checked against DEGRADATIONS."""
    kind, sep, raw = str(spec).partition(":")
    kind = kind.strip()
    if not sep or kind not in DEGRADATIONS:
        raise ConfigError(
            f"eval.degradations: {spec!r} must be 'kind:severity' with kind one of "
            f"{', '.join(DEGRADATIONS)}, e.g. 'jpeg:70'"
        )
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


def parse_aggregate(spec: str, key: str = "--aggregate") -> tuple[str, int]:
    """How a video's frame scores become its score: 'mean' -> ('mean', 0), 'max' -> ('max', 1),
    'topk:3' -> ('topk', 3), the mean of the 3 highest."""
    text = str(spec).strip()
    if text in ("mean", "max"):
        return text, 0 if text == "mean" else 1
    kind, sep, raw = text.partition(":")
    if kind == "topk" and sep and raw.isdigit() and int(raw) > 0:
        return "topk", int(raw)
    raise ConfigError(f"{key}: {spec!r} must be mean, max or topk:K with K a positive integer, e.g. topk:3")


def check_views(views: tuple[str, ...], key: str) -> None:
    for v in views:
        if v not in TTA_VIEWS:
            raise ConfigError(f"{key}: unknown view {v!r}; known views: {', '.join(TTA_VIEWS)}")
    if len(set(views)) != len(views):
        raise ConfigError(f"{key}: a view is listed twice: {list(views)}")


# --- the vocabulary of the declarations ------------------------------------------------------------
# Strict types: a YAML `true` for an int knob, or '0.1' for a number, is a mistake (an int is taken
# for a float). A rule about one key raises ValueError("must ..."), and the key goes in front; a
# ConfigError names its keys itself.

_Item = TypeVar("_Item")
# A YAML list, kept as a tuple: frozen and hashable.
Items = Annotated[tuple[_Item, ...], BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)]
Positive = Annotated[int, Field(gt=0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Between0And1 = Annotated[float, Field(gt=0.0, lt=1.0)]  # both ends excluded
NonEmpty = Annotated[str, Field(min_length=1)]
_SET_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _low_high(low: float, high: float, low_open: bool = False) -> AfterValidator:
    """null, or a [low, high] pair within the bounds given (its low above the lower one if low_open)."""

    def check(rng):
        if rng is not None and (len(rng) != 2 or not low <= rng[0] <= rng[1] <= high or (low_open and rng[0] <= low)):
            raise ValueError(
                f"must be null or [low, high] with {low} <= low <= high <= {high}"
                f"{f' (low > {low})' if low_open else ''}, got {list(rng)}"
            )
        return rng

    return AfterValidator(check)


def _validated(cls: type) -> type:
    """cls as a frozen, strict pydantic dataclass whose every construction (params.yaml, a checkpoint's
    dict, dataclasses.replace, code) is validated, and fails with one ConfigError line."""
    cls = pydantic.dataclasses.dataclass(frozen=True, config=ConfigDict(extra="forbid", strict=True))(cls)
    if not cls.__pydantic_complete__:  # pydantic would rebuild it later, and its __init__ with it
        raise TypeError(f"{cls.__name__}: pydantic could not build its schema at import")
    validate = cls.__init__

    @functools.wraps(validate)
    def __init__(self, *args, **kwargs):
        try:
            validate(self, *args, **kwargs)
        except ValidationError as e:
            raise ConfigError(_message(e, type(self))) from None

    cls.__init__ = __init__
    return cls


# --- the groups -----------------------------------------------------------------------------------


@_validated
class SampleConfig:
    """The built-in, generated sample data set (see ffdi.sample.generate)."""

    out: str = "data/sample"
    n_train: Positive = 3000
    n_val: Positive = 400
    n_test: Annotated[int, Field(ge=0)] = 200
    fake_fraction: Between0And1 = 0.5
    size: Positive = 64
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] = 90
    seed: int = 0


@_validated
class DataConfig:
    """Where the multiFFDI-layout data lives. Paths are relative to the data root."""

    root: NonEmpty = "data/sample"
    train_dir: NonEmpty = "trainset"
    val_dir: NonEmpty = "valset"
    test_dir: str = "testset"
    train_labels: NonEmpty = "trainset_label.txt"
    val_labels: NonEmpty = "valset_label.txt"
    test_labels: str = "testset_label.txt"
    on_bad_image: Literal["error", "skip"] = "error"
    group_column: str | None = "method"  # label-file column naming each fake's manipulation
    holdout: Items[str] = ()  # manipulations kept out of training and model selection

    @model_validator(mode="after")
    def _fakes_only(self) -> DataConfig:
        if "real" in self.holdout:
            raise ConfigError("data.holdout names manipulations of fakes; 'real' cannot be held out")
        return self


@_validated
class AugmentConfig:
    """Train-time augmentation; eval uses resize + centre crop + normalisation only."""

    # null: from the model's own pretrained config (timm's resolve_data_config): its input size,
    # and the resize its crop_pct implies.
    resize: Positive | None = 64
    image_size: Positive | None = 64
    hflip: Probability = 0.5
    vflip: Probability = 0.0
    rotation: Annotated[float, Field(ge=0.0, le=180.0)] = 0.0
    grayscale: Probability = 0.0
    # imagenet | none | model (or null): the model's pretrained mean and std, which training
    # writes into mean/std below and the checkpoint keeps.
    normalize: Literal["imagenet", "none", "model"] | None = "imagenet"
    mean: Items[float] | None = None
    std: Items[float] | None = None
    # Degradations of training images, real and fake alike: never of one class only, which would
    # teach "degraded means fake". Each is null or a [low, high] range, drawn per image and
    # applied with probability degrade_p.
    jpeg: Annotated[Items[int] | None, _low_high(1, 100)] = (30, 95)  # JPEG quality, e.g. [30, 95]
    blur: Annotated[Items[float] | None, _low_high(0.0, 50.0)] = (0.2, 1.5)  # Gaussian sigma in px, e.g. [0.2, 1.5]
    # Shrink factor, then back up, e.g. [0.5, 0.9].
    downscale: Annotated[Items[float] | None, _low_high(0.0, 1.0, low_open=True)] = (0.5, 0.9)
    degrade_p: Probability = 0.05
    # Self-blending on the fly (SBI, CVPR 2022): a real training image becomes a self-blended
    # fake, label 1, with this probability; the sample's blending (ffdi.sample.manipulations.self_blend),
    # its jitter scaled by strength.
    self_blend: Probability = 0.0
    self_blend_strength: Annotated[float, Field(ge=0.0, le=5.0)] = 1.0
    # The blended ellipse's half-axes, fraction of the side.
    self_blend_mask: Annotated[Items[float], _low_high(0.0, 0.5, low_open=True)] = (0.3, 0.45)

    @model_validator(mode="after")
    def _consistent(self) -> AugmentConfig:
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and (
                self.normalize != "model" or len(value) != 3 or (key == "std" and min(value) <= 0)
            ):
                raise ConfigError(
                    f"augment.{key} is the model's (normalize: model), three numbers"
                    f"{' > 0' if key == 'std' else ''}; got {list(value)} with normalize: {self.normalize}"
                )
        if self.image_size is not None and self.resize is not None and self.image_size > self.resize:
            raise ConfigError(
                f"augment.image_size ({self.image_size}) must not exceed augment.resize "
                f"({self.resize}): the centre crop is taken from the resized image"
            )
        return self


@_validated
class ModelConfig:
    arch: str = "resnet18"
    se: bool = False
    se_reduction: Positive = 32
    pretrained: bool = False
    weights: str | None = None
    num_classes: Literal[2] = 2  # real/fake
    # full: train everything; linear: the head only (a probe on frozen features); norm: the
    # normalisation layers and the head (as GenD tunes foundation models).
    tune: Literal["full", "linear", "norm"] = "full"
    # Fixed noise-residual channels next to RGB (SRM filters, or NPR's neighbouring-pixel
    # residual), mixed back to 3 channels by a learned 1x1 conv that starts as the identity on RGB.
    input: Literal["rgb", "rgb+srm", "rgb+npr"] = "rgb"

    @model_validator(mode="after")
    def _one_source_of_weights(self) -> ModelConfig:
        if self.pretrained and self.weights:
            raise ConfigError("set either model.pretrained or model.weights, not both")
        return self


@_validated
class TrainConfig:
    epochs: Positive = 4
    batch_size: Positive = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0)] = 0.001
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    momentum: float = 0.9
    scheduler: Literal["step", "cosine", "none"] = "cosine"
    step_size: Positive = 4
    gamma: Between0And1 = 0.85
    best_metric: Literal["val_auc", "val_acc", "val_loss"] = "val_auc"
    seed: int = 0
    channels_last: bool = True
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    compile: bool = False
    distributed: Literal["auto", "off", "on"] = "auto"
    # Decay of an exponential moving average of the weights (timm ModelEmaV3, with warm-up), or
    # null. The averaged weights are the ones validated, checkpointed, logged and served.
    ema: Between0And1 | None = 0.999


@_validated
class RuntimeConfig:
    """Where and with how much to compute, not what: no stage tracks this group, so changing it
    never retrains or re-evaluates. The device and the thread count can move results in the last
    bits; every run records what it used (the hw.* tags)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"  # loader processes
    threads: Positive | Literal["auto"] = "auto"  # torch threads


@_validated
class EvalConfig:
    batch_size: Positive = 128
    threshold: Probability = 0.5
    target_fpr: Between0And1 = 0.001
    fprs: Items[Between0And1] = (0.01, 0.005, 0.001)  # TPR at each, as the FFDI organiser reports
    # Other labelled folders (val layout: data.val_dir + data.val_labels) scored by the same Detector.
    extra_sets: dict[str, NonEmpty] = field(default_factory=dict)
    # `kind:severity` applied to the decoded val images before the Detector's preprocessing.
    degradations: Items[str] = (
        "jpeg:70",
        "jpeg:50",
        "jpeg:30",
        "webp:75",
        "social:70",
        "blur:0.5",
        "blur:1",
        "downscale:0.5",
    )
    # A fixed random subset of val for the degradations (null: all of it): each image is decoded in
    # full and degraded several ways, so all of multiFFDI's 147k would outlast a GPU training epoch.
    robustness_images: Annotated[int, Field(ge=2)] | None = 2000
    # Videos (an extra set of videos, `ffdi score` on videos, the served model): frames sampled per
    # video, uniformly spread, and how their P(fake)s become the video's (mean | max | topk:K).
    video_frames: Positive = 16
    video_aggregate: str = "mean"

    @model_validator(mode="after")
    def _names_and_specs(self) -> EvalConfig:
        for name in self.extra_sets:
            if not _SET_NAME.fullmatch(name) or name in ("val", "real"):
                raise ConfigError(
                    f"eval.extra_sets: name {name!r} must be letters, digits, '_' or '-' "
                    "(it names metrics and files), and not 'val' or 'real'"
                )
        parse_aggregate(self.video_aggregate, "eval.video_aggregate")
        if len(set(map(parse_degradation, self.degradations))) != len(self.degradations):
            raise ConfigError(f"eval.degradations: a degradation is listed twice: {list(self.degradations)}")
        return self


@_validated
class PredictConfig:
    batch_size: Positive = 128
    tta: Items[str] = ("hflip",)
    out: str = "submission.csv"
    # Other trained models (models:/<id>, runs:/<id>/<path> or checkpoint files) averaged with this
    # run's model into the submission; evaluate reports that ensemble's val metrics as `ensemble`.
    ensemble: Items[str] = ()

    @model_validator(mode="after")
    def _known_views(self) -> PredictConfig:
        check_views(self.tta, "predict.tta")
        return self


@_validated
class TrackingConfig:
    """MLflow. An empty uri means the SQLite store `mlflow.db` at the project root."""

    experiment: NonEmpty = "ffdi"
    uri: str | None = None
    log_model: bool = True


def _build(cls: type, raw: Any) -> Any:
    """cls from its params.yaml mapping, null meaning every default; anything else is left to
    pydantic, which names the wrong type."""
    return cls(**{str(k): v for k, v in (raw or {}).items()}) if raw is None or isinstance(raw, dict) else raw


class Group:
    """`Group[TrainConfig]`, a field of Params: strict pydantic takes only instances for a
    dataclass field, so params.yaml's mapping is built into one first."""

    def __class_getitem__(cls, group: type) -> Any:
        return Annotated[group, BeforeValidator(functools.partial(_build, group))]


@_validated
class Params:
    sample: Group[SampleConfig] = field(default_factory=SampleConfig)
    data: Group[DataConfig] = field(default_factory=DataConfig)
    augment: Group[AugmentConfig] = field(default_factory=AugmentConfig)
    model: Group[ModelConfig] = field(default_factory=ModelConfig)
    train: Group[TrainConfig] = field(default_factory=TrainConfig)
    eval: Group[EvalConfig] = field(default_factory=EvalConfig)
    predict: Group[PredictConfig] = field(default_factory=PredictConfig)
    tracking: Group[TrackingConfig] = field(default_factory=TrackingConfig)
    runtime: Group[RuntimeConfig] = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        # Lists, not tuples: YAML, JSON and MLflow take them as written in params.yaml.
        return dataclasses.asdict(
            self, dict_factory=lambda kv: {k: list(v) if isinstance(v, tuple) else v for k, v in kv}
        )


def load_params(path: str | Path = "params.yaml", optional: bool = False) -> Params:
    """Read and validate a params file; the groups and keys it leaves out take their defaults.
    optional: a missing file gives all the defaults (a folder that is no ffdi project)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        if optional:
            return Params()
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of groups, got {type(raw).__name__}")
    try:
        return _build(Params, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'se': True}} -> {'model.se': True}: the names MLflow and DVC show."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --- pydantic's errors, as one line each ------------------------------------------------------------

_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "dataclass_exact_type": "a mapping",
}
_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _message(error: ValidationError, cls: type) -> str:
    """pydantic's first error for a `cls(...)` call, as one line naming the dotted key and the value:
    `train.lr must be > 0.0, got 0`. A group's errors reach Params as ConfigErrors already."""
    errors, prefix = error.errors(), _prefix(cls)
    e = next((e for e in errors if e["type"] == "unexpected_keyword_argument"), errors[0])  # typos first
    kind, key, value = e["type"], _key(cls, e["loc"], prefix), e["input"]
    if kind == "unexpected_keyword_argument":
        names = sorted(f.name for f in dataclasses.fields(cls))
        close = difflib.get_close_matches(str(e["loc"][-1]), names, n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        return f"unknown key {key}{hint}; known keys in {prefix[:-1] or 'params'}: {', '.join(names)}"
    if kind == "value_error":  # a rule above; a ConfigError names its keys itself
        cause = e["ctx"]["error"]
        return str(cause) if isinstance(cause, ConfigError) else f"{key} {cause}"
    if kind in _BOUNDS:
        bound, sign = _BOUNDS[kind]
        return f"{key} must be {sign} {e['ctx'][bound]}, got {value}"
    if kind == "string_too_short":
        return f"{key} must not be empty"
    # A union's members each fail (runtime.workers: an integer, 'auto'): the key takes any of them.
    expected = [
        x["ctx"]["expected"] if x["type"] == "literal_error" else _EXPECTED.get(x["type"], x["msg"])
        for x in errors
        if _key(cls, x["loc"], prefix) == key
    ]
    return f"{key} must be {' or '.join(expected)}, got {_show(value)}"


def _key(cls: type, loc: tuple, prefix: str) -> str:
    """The dotted key an error's location names: `eval.fprs[1]`, `eval.extra_sets.phase2`; a union
    member's tag (`constrained-int`) is no part of it."""
    if not loc:  # a rule of the whole group
        return prefix[:-1]
    key, field_type = f"{prefix}{loc[0]}", getattr(cls.__pydantic_fields__.get(loc[0]), "annotation", None)
    for part in loc[1:]:
        if typing.get_origin(field_type) is dict:
            key += "" if part == "[key]" else f".{part}"
        elif isinstance(part, int):
            key += f"[{part}]"
    return key


def _prefix(cls: type) -> str:
    """'train.' for TrainConfig, as Params names it; '' for Params itself."""
    return next((f"{name}." for name, f in Params.__pydantic_fields__.items() if f.annotation is cls), "")


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"
