import dataclasses

import pytest
import yaml

from ffdi.config import (
    REGENERATE,
    AugmentConfig,
    ConfigError,
    Params,
    TrainConfig,
    flatten,
    load_params,
    render_params,
)
from tests.conftest import ROOT


def write(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_repo_params_are_rendered_from_config():
    # Each default and its help are written once, in ffdi/config.py; params.yaml is their text.
    assert (ROOT / "params.yaml").read_text() == render_params(), f"params.yaml is stale: run `{REGENERATE}`"


def test_repo_params_are_the_defaults():
    # params.yaml lists every knob with its default: nothing hidden.
    assert load_params(ROOT / "params.yaml") == Params()
    assert yaml.safe_load(render_params()) == Params().to_dict()  # every group and key, in order, as YAML reads it


def test_rendered_values_and_comments():
    text = render_params()
    assert text.startswith(f"# Generated from ffdi/config.py by `{REGENERATE}`")
    assert "\n  holdout: []" in text and "\n  jpeg: [30, 95]" in text and "\n  tta: [hflip]" in text
    assert "\n  extra_sets: {}" in text and "\n  mean: null" in text
    assert "\n  size: 64              # px; multiFFDI is 512\n" in text  # a comment at column 24
    assert not [e for e in yaml.parse(text) if getattr(e, "anchor", None)]  # plain YAML: no anchors or aliases
    for line in text.splitlines():
        assert len(line) <= 120, line


def test_missing_groups_take_defaults(tmp_path):
    params = load_params(write(tmp_path, "model:\n  se: true\n"))
    assert params.model.se is True
    assert params.train == Params().train


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  lrr: 0.1\n", "unknown key train.lrr"),
        ("augment:\n  mean: [0.5, 0.5, 0.5]\n", "got [0.5, 0.5, 0.5] with normalize: imagenet"),
        (
            "augment:\n  normalize: model\n  std: [0.5, 0, 0.5]\n",
            "augment.std is the model's (normalize: model), three numbers > 0",
        ),
        ("trian:\n  lr: 0.1\n", "unknown key trian"),
        ("train:\n  batch_size: 32.5\n", "train.batch_size must be an integer, got 32.5"),
        ("train:\n  epochs: true\n", "train.epochs must be an integer, got True"),
        ("model:\n  se: 'yes'\n", "model.se must be true or false, got 'yes'"),
        ("train:\n  lr: fast\n", "train.lr must be a number, got 'fast'"),
        ("train:\n  batch_size: 0\n", "train.batch_size must be > 0, got 0"),
        ("train:\n  optimizer: rmsprop\n", "train.optimizer must be 'adam', 'adamw' or 'sgd', got 'rmsprop'"),
        ("augment:\n  resize: 64\n  image_size: 128\n", "augment.image_size (128) must not exceed augment.resize (64)"),
        ("augment:\n  hflip: 1.5\n", "augment.hflip must be <= 1.0, got 1.5"),
        ("model:\n  pretrained: true\n  weights: w.pt\n", "either model.pretrained or model.weights"),
        ("train: 3\n", "train must be a mapping"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        load_params(write(tmp_path, text))
    assert message in str(e.value)
    assert "params.yaml" in str(e.value)


def test_int_is_accepted_for_float(tmp_path):
    assert load_params(write(tmp_path, "train:\n  lr: 1\n")).train.lr == 1.0


def test_flatten_names():
    flat = flatten(Params().to_dict())
    assert flat["model.se"] is False
    assert flat["train.lr"] == Params().train.lr


def test_auto_or_int_and_lists_are_checked(tmp_path):
    p = tmp_path / "params.yaml"
    for text, message in [
        ("runtime:\n  workers: many\n", "runtime.workers must be an integer or 'auto', got 'many'"),
        ("runtime:\n  threads: 0\n", "runtime.threads must be > 0, got 0"),
        ("predict:\n  tta: hflip\n", "predict.tta must be a list, got 'hflip'"),
        ("predict:\n  tta: [hflip, spin]\n", "predict.tta: unknown view 'spin'"),
        ("eval:\n  fprs: [0.01, 2]\n", "eval.fprs[1] must be < 1.0, got 2"),
        ("data:\n  holdout: [real]\n", "'real' cannot be held out"),
    ]:
        p.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_params(p)
        assert message in str(e.value), (text, str(e.value))
    p.write_text(
        "runtime:\n  workers: 3\n  threads: auto\npredict:\n  tta: [vflip, hflip]\ndata:\n  holdout: [splice]\n"
    )
    params = load_params(p)
    assert params.runtime.workers == 3 and params.runtime.threads == "auto"
    assert params.predict.tta == ("vflip", "hflip") and params.data.holdout == ("splice",)
    assert params.to_dict()["predict"]["tta"] == ["vflip", "hflip"]  # YAML- and JSON-friendly


@pytest.mark.parametrize(
    "text, message",
    [
        # An unknown key: the closest known one, and every key of its group.
        (
            "train:\n  lrr: 0.1\n",
            "unknown key train.lrr (did you mean train.lr?); known keys in train: amp, batch_size, best_metric, "
            "channels_last, compile, distributed, ema, epochs, gamma, lr, momentum, optimizer, scheduler, "
            "seed, step_size, weight_decay",
        ),
        (
            "trian:\n  lr: 0.1\n",
            "unknown key trian (did you mean train?); known keys in params: augment, data, "
            "eval, frames, model, predict, runtime, sample, tracking, train",
        ),
        # Strict types: no bool for an int, no string for a number.
        ("train:\n  epochs: true\n", "train.epochs must be an integer, got True (bool)"),
        ("train:\n  lr: '0.1'\n", "train.lr must be a number, got '0.1' (str)"),
        ("augment:\n  jpeg: [30.5, 90]\n", "augment.jpeg[0] must be an integer, got 30.5 (float)"),
        # Bounds, open and closed.
        ("train:\n  lr: 0.0\n", "train.lr must be > 0.0, got 0.0"),
        ("train:\n  epochs: 0\n", "train.epochs must be > 0, got 0"),
        ("sample:\n  fake_fraction: 1.0\n", "sample.fake_fraction must be < 1.0, got 1.0"),
        ("sample:\n  jpeg_quality: 101\n", "sample.jpeg_quality must be <= 100, got 101"),
        ("eval:\n  robustness_images: 1\n", "eval.robustness_images must be >= 2, got 1"),
        ("runtime:\n  workers: -1\n", "runtime.workers must be >= 0, got -1"),
        # Choices.
        ("train:\n  amp: fp8\n", "train.amp must be 'auto', 'off', 'bf16' or 'fp16', got 'fp8' (str)"),
        (
            "augment:\n  normalize: imagenet21k\n",
            "augment.normalize must be 'imagenet', 'none' or 'model', got 'imagenet21k' (str)",
        ),
        ("model:\n  num_classes: 3\n", "model.num_classes must be 2, got 3 (int)"),
        ("runtime:\n  threads: many\n", "runtime.threads must be an integer or 'auto', got 'many' (str)"),
        # Rules across keys, and rules of one key.
        (
            "augment:\n  resize: 64\n  image_size: 128\n",
            "augment.image_size (128) must not exceed augment.resize (64): "
            "the centre crop is taken from the resized image",
        ),
        ("model:\n  pretrained: true\n  weights: w.pt\n", "set either model.pretrained or model.weights, not both"),
        (
            "augment:\n  downscale: [0, 0.5]\n",
            "augment.downscale must be null or [low, high] with 0.0 <= low <= high <= 1.0 (low > 0.0), got [0.0, 0.5]",
        ),
        ("data:\n  root: ''\n", "data.root must not be empty"),
        (
            "eval:\n  extra_sets: {real: /data/x}\n",
            "eval.extra_sets: name 'real' must be letters, digits, '_' or '-' "
            "(it names metrics and files), and not 'val' or 'real'",
        ),
        (
            "eval:\n  degradations: [blur:1, blur:1.0]\n",
            "eval.degradations: a degradation is listed twice: ['blur:1', 'blur:1.0']",
        ),
        ("predict:\n  tta: [hflip, hflip]\n", "predict.tta: a view is listed twice: ['hflip', 'hflip']"),
        ("train: [1]\n", "train must be a mapping, got [1] (list)"),
    ],
)
def test_messages_are_one_line_and_name_the_file_the_key_and_the_value(tmp_path, text, message):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_params(p)
    assert str(e.value) == f"{p}: {message}"


def test_a_group_left_empty_takes_its_defaults(tmp_path):
    # `train:` with nothing under it is YAML's null.
    assert load_params(write(tmp_path, "train:\naugment:\n  hflip: 0\n")).train == TrainConfig()


def test_int_for_float_is_a_float(tmp_path):
    params = load_params(write(tmp_path, "train:\n  lr: 1\naugment:\n  blur: [0, 2]\n"))
    assert type(params.train.lr) is float and params.train.lr == 1.0
    assert params.augment.blur == (0.0, 2.0) and all(type(v) is float for v in params.augment.blur)


def test_optional_params_file(tmp_path):
    missing = tmp_path / "nowhere" / "params.yaml"
    assert load_params(missing, optional=True) == Params()
    with pytest.raises(ConfigError) as e:
        load_params(missing)
    assert str(e.value) == f"{missing}: file not found"
    # optional is about a missing file only: a bad one still fails.
    with pytest.raises(ConfigError, match="train.lr must be > 0"):
        load_params(write(tmp_path, "train:\n  lr: 0\n"), optional=True)


def test_bad_yaml_is_one_line(tmp_path):
    p = write(tmp_path, "train:\n  lr: [0.1\n")
    with pytest.raises(ConfigError) as e:
        load_params(p)
    assert str(e.value).startswith(f"{p}: not valid YAML: ") and "\n" not in str(e.value)


def test_every_construction_is_validated():
    # dataclasses.replace builds a new config through __init__: validated like params.yaml.
    aug = AugmentConfig(resize=64, image_size=64)
    assert dataclasses.replace(aug, image_size=32).image_size == 32
    with pytest.raises(ConfigError, match=r"^augment.image_size \(100\) must not exceed augment.resize \(64\)"):
        dataclasses.replace(aug, image_size=100)
    with pytest.raises(ConfigError, match=r"^train.lr must be > 0.0, got -1.0$"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ConfigError, match=r"^unknown key augment.hflp \(did you mean augment.hflip\?\)"):
        AugmentConfig(hflp=0.5)
    with pytest.raises(ConfigError, match=r"^train.epochs must be > 0, got 0$"):
        Params(train={"epochs": 0})


def test_a_checkpoints_config_builds_the_same_params():
    # A checkpoint keeps params.to_dict() (lists, not tuples); it must rebuild the same configs.
    params = Params(augment=AugmentConfig(normalize="model", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    raw = params.to_dict()
    assert raw["augment"]["mean"] == [0.5, 0.5, 0.5]
    assert Params(**raw) == params
    assert AugmentConfig(**raw["augment"]) == params.augment
