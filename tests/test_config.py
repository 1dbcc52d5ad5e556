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
        ("augment:\n  mean: [0.5, 0.5, 0.5]\n", "got [0.5, 0.5, 0.5] with normalize: imagenet"),
        ("augment:\n  normalize: model\n  std: [0.5, 0, 0.5]\n", "augment.std is the model's (normalize: model), three numbers > 0"),
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


def test_auto_or_int_and_lists_are_checked(tmp_path):
    p = tmp_path / "params.yaml"
    for text, message in [
        ("train:\n  workers: many\n", "train.workers must be an integer or 'auto', got 'many'"),
        ("train:\n  threads: 0\n", "train.threads must be > 0, got 0"),
        ("predict:\n  tta: hflip\n", "predict.tta must be a list, got 'hflip'"),
        ("predict:\n  tta: [hflip, spin]\n", "predict.tta: unknown view 'spin'"),
        ("eval:\n  fprs: [0.01, 2]\n", "eval.fprs: each must be in (0.0, 1.0), got 2.0"),
        ("data:\n  holdout: [real]\n", "'real' cannot be held out"),
    ]:
        p.write_text(text)
        with pytest.raises(ConfigError) as e:
            load_params(p)
        assert message in str(e.value), (text, str(e.value))
    p.write_text("train:\n  workers: 3\n  threads: auto\npredict:\n  tta: [vflip, hflip]\ndata:\n  holdout: [splice]\n")
    params = load_params(p)
    assert params.train.workers == 3 and params.train.threads == "auto"
    assert params.predict.tta == ("vflip", "hflip") and params.data.holdout == ("splice",)
    assert params.to_dict()["predict"]["tta"] == ["vflip", "hflip"]  # YAML- and JSON-friendly
