"""model.tune and train.ema: what is trained, what is frozen, and which weights are scored."""

import pytest
import torch
from sklearn import metrics as skm

from ffdi.config import ModelConfig, Params
from ffdi.engine.train import fit, seed_everything
from ffdi.inference.detector import Detector
from ffdi.model import checkpoint
from ffdi.model.networks import build_model, is_norm, set_tuning
from ffdi.schema import TRAIN
from ffdi.tracking.pyfunc_model import MODEL_NAME
from tests.test_train import tiny_params


def initial_state(params: Params) -> dict:
    """The weights fit() starts from: it seeds, then builds."""
    seed_everything(params.train.seed)
    return {k: v.clone() for k, v in build_model(params.model).state_dict().items()}


def with_model(params: Params, **model) -> Params:
    from dataclasses import replace

    return replace(params, model=replace(params.model, **model))


@pytest.mark.parametrize("tune", ["linear", "norm"])
def test_frozen_parameters_and_statistics_do_not_move(tune, tiny_data, manifests, tmp_path):
    params = with_model(tiny_params(tiny_data, epochs=1), tune=tune)
    before = initial_state(params)
    result = fit(params, *manifests, tmp_path)
    after = checkpoint.load(tmp_path / "last.pt")["model"]
    model = build_model(params.model)
    norm_names = {
        f"{n}.{p}" for n, m in model.named_modules() if is_norm(m) for p, _ in m.named_parameters(recurse=False)
    }
    expected = model.fc.weight.numel() + model.fc.bias.numel()
    if tune == "norm":
        expected += sum(model.state_dict()[k].numel() for k in norm_names)
    assert result["trainable_params"] == expected
    for name, value in after.items():
        moved = not torch.equal(value, before[name])
        if name.startswith("fc."):
            assert moved, name
        elif name in norm_names:
            assert moved == (tune == "norm"), name
        elif "running_" in name or "num_batches" in name:
            # A linear probe's backbone stays in eval mode: its BatchNorm statistics stay put.
            assert moved == (tune == "norm"), name
        else:  # conv weights
            assert not moved, name


def test_set_tuning_counts_and_full_trains_everything():
    model = build_model(ModelConfig())
    total = sum(p.numel() for p in model.parameters())
    assert set_tuning(model, "full") == total
    assert set_tuning(model, "linear") == 2 * 512 + 2
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]


@pytest.mark.slow
def test_ema_weights_are_the_ones_validated_and_checkpointed(tiny_data, manifests, tmp_path):
    params = tiny_params(tiny_data, epochs=2, ema=0.9)
    result = fit(params, *manifests, tmp_path)
    last = checkpoint.load(tmp_path / "last.pt")
    raw, ema = last["model"], last["ema"]
    assert last["ema_steps"] == 2 * -(-len(manifests[0]) // params.train.batch_size)
    diff = [k for k in raw if raw[k].is_floating_point() and not torch.equal(raw[k], ema[k])]
    assert "fc.weight" in diff and "conv1.weight" in diff
    best = checkpoint.load(tmp_path / "best.pt")
    if best["epoch"] == 1:  # the best checkpoint holds the average, not the raw weights
        assert all(torch.equal(best["model"][k], ema[k]) for k in ema)
    # The recorded val numbers are those of the checkpointed (averaged) weights.
    val = manifests[1]
    res = Detector.load(tmp_path / "best.pt", "cpu", tta=params.predict.tta).score_manifest(val, 32)
    assert skm.roc_auc_score(res.targets, res.prob) == pytest.approx(result["best"]["value"], abs=1e-12)
    raw_model = checkpoint.rebuild_model({"model": raw, "config": last["config"]})
    raw_res = Detector(raw_model, params.augment, "cpu", "fp32", params.predict.tta).score_manifest(val, 32)
    assert not torch.allclose(torch.as_tensor(raw_res.prob), torch.as_tensor(res.prob))


@pytest.mark.slow
def test_ema_resumes_to_the_same_numbers(tiny_data, manifests, tmp_path):
    params = tiny_params(tiny_data, epochs=2, ema=0.9)
    straight = fit(params, *manifests, tmp_path / "a")["history"]

    class Killed(Exception):
        pass

    def die(row):
        raise Killed

    with pytest.raises(Killed):
        fit(params, *manifests, tmp_path / "b", on_epoch=die)
    resumed = fit(params, *manifests, tmp_path / "b")["history"]
    assert [r["val_loss"] for r in resumed] == [r["val_loss"] for r in straight]


def test_ema_and_tune_are_checked():
    from ffdi.config import TrainConfig
    from ffdi.errors import ConfigError

    with pytest.raises(ConfigError, match="train.ema must be < 1.0, got 1.0"):
        TrainConfig(ema=1.0)
    with pytest.raises(ConfigError, match="model.tune must be 'full', 'linear' or 'norm', got 'lora'"):
        ModelConfig(tune="lora")


@pytest.mark.slow
def test_another_family_with_every_new_knob_runs_the_pipeline_and_logs_a_servable_model(tmp_path):
    """A ViT, norm-tuned, with NPR channels, EMA, on-the-fly self-blending and degradations: the
    whole pipeline, then the logged models score like the submission."""
    import numpy as np
    import pandas as pd

    from tests.project import TINY_PARAMS, make_project, mlflow_runs

    overrides = {k: dict(v) for k, v in TINY_PARAMS.items()}
    overrides["model"] = {"arch": "vit_tiny_patch16_224", "tune": "norm", "input": "rgb+npr"}
    overrides["train"].update(ema=0.9)
    overrides["augment"].update(self_blend=0.3, jpeg=[50, 95], blur=[0.2, 1.0], downscale=[0.6, 0.9])
    overrides["eval"] = {**overrides["eval"], "degradations": []}
    p = make_project(tmp_path / "repo", overrides)
    p.sh("dvc", "repro")
    client, exp, runs = mlflow_runs(p.repo)
    (run,) = runs
    assert run.data.params["model.arch"] == "vit_tiny_patch16_224" and run.info.status == "FINISHED"
    model = build_model(ModelConfig(arch="vit_tiny_patch16_224", tune="norm", input="rgb+npr"), image_size=32)
    assert (
        run.data.metrics[TRAIN + "trainable_params"]
        == set_tuning(model, "norm")
        < sum(q.numel() for q in model.parameters())
    )
    best = checkpoint.load(p.repo / "models" / "model.pt")
    assert "artefacts.mix.weight" in best["model"]
    submission = pd.read_csv(p.repo / "submission.csv", dtype={"img_name": str})
    import mlflow

    logged = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
    assert [m.name for m in logged] == [MODEL_NAME]  # one logged model per run, the served detector
    test_dir = p.repo / "data" / "sample" / "testset"
    for m in logged:
        det = Detector.load(f"models:/{m.model_id}", "cpu", tta=["hflip"])
        np.testing.assert_allclose(det.score([test_dir / n for n in submission.img_name]), submission.y_pred, atol=1e-6)


def test_unset_size_and_normalisation_come_from_the_model(tiny_data, manifests, tmp_path):
    """augment.image_size/resize/normalize left null: the model's pretrained config (timm) decides,
    the checkpoint keeps the resolved values, and the Detector scores with exactly them."""
    import dataclasses

    import numpy as np

    from ffdi.config import AugmentConfig
    from ffdi.data.transforms import norm_stats, normalize_batch
    from ffdi.model.networks import resolve_augment

    vit = build_model(ModelConfig(arch="vit_tiny_patch16_224"))
    resolved = resolve_augment(AugmentConfig(resize=None, image_size=None, normalize=None), vit)
    # timm's vit_tiny_patch16_224: 224 px, crop_pct 0.9, mean = std = 0.5
    assert (resolved.image_size, resolved.resize, resolved.normalize) == (224, 248, "model")
    assert resolved.mean == (0.5, 0.5, 0.5) == resolved.std
    explicit = AugmentConfig(resize=40, image_size=32, normalize="imagenet")
    assert resolve_augment(explicit, vit) is explicit  # what the user set is kept

    # A model whose statistics are not ImageNet's, trained at a small size to stay fast.
    params = with_model(tiny_params(tiny_data, epochs=1), arch="vit_tiny_patch16_224")
    params = dataclasses.replace(params, augment=dataclasses.replace(params.augment, normalize=None))
    fit(params, *manifests, tmp_path)
    saved = checkpoint.load(tmp_path / "best.pt")["config"]["augment"]
    assert saved["normalize"] == "model" and list(saved["mean"]) == [0.5] * 3 == list(saved["std"])
    det = Detector.load(tmp_path / "best.pt")
    assert norm_stats(det.augment) == ((0.5,) * 3, (0.5,) * 3)
    paths = manifests[1].path.tolist()[:8]
    pixels = torch.stack([det.preprocess(p) for p in paths])
    x = pixels.permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        expected = det.model((x - 0.5) / 0.5).float().softmax(1)[:, 1].numpy()
    no_tta = Detector(det.model, det.augment, tta=())
    assert np.allclose(no_tta.score(paths), expected, atol=1e-5)
    assert torch.equal(normalize_batch(pixels, norm_stats(det.augment), False), (x - 0.5) / 0.5)
