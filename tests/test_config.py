import pytest

from ffdi.config import ConfigError, Params, flatten, load_params
from tests.conftest import ROOT


def write(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_repo_params_are_the_defaults():
    # params.yaml lists every knob with its default: one source of truth, nothing hidden.
    params = load_params(ROOT / "params.yaml")
    assert flatten(params.to_dict()) == flatten(Params().to_dict())


def test_missing_groups_take_defaults(tmp_path):
    params = load_params(write(tmp_path, "model:\n  se: true\n"))
    assert params.model.se is True
    assert params.train == Params().train


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  lrr: 0.1\n", "unknown key train.lrr"),
        ("trian:\n  lr: 0.1\n", "unknown key trian"),
        ("train:\n  batch_size: 32.5\n", "train.batch_size must be an integer, got 32.5"),
        ("train:\n  epochs: true\n", "train.epochs must be an integer, got True"),
        ("model:\n  se: 'yes'\n", "model.se must be true or false, got 'yes'"),
        ("train:\n  lr: fast\n", "train.lr must be a number, got 'fast'"),
        ("train:\n  batch_size: 0\n", "train.batch_size must be > 0, got 0"),
        ("train:\n  optimizer: rmsprop\n", "train.optimizer must be one of adam, adamw, sgd; got 'rmsprop'"),
        ("augment:\n  resize: 64\n  image_size: 128\n", "augment.image_size (128) must not exceed augment.resize (64)"),
        ("augment:\n  hflip: 1.5\n", "augment.hflip must be in [0.0, 1.0], got 1.5"),
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
