"""The default detector, trained as the pipeline trains it, actually learns the built-in sample."""

import pytest
from sklearn import metrics as skm

from ffdi.config import AugmentConfig, DataConfig, Params, RuntimeConfig, SampleConfig, TrainConfig
from ffdi.data.labels import prepare, read_manifest
from ffdi.engine.train import fit
from ffdi.inference.detector import Detector
from ffdi.sample.generate import generate


@pytest.mark.slow
def test_resnet18_learns_the_four_kind_sample(tmp_path):
    # The default model, optimiser and schedule on a smaller, 32 px sample: about 30 s on 2 cores.
    generate(SampleConfig(n_train=1200, n_val=200, n_test=0, size=32, seed=1), tmp_path / "data")
    params = Params(
        data=DataConfig(root=str(tmp_path / "data")),
        augment=AugmentConfig(resize=32, image_size=32),
        train=TrainConfig(epochs=4, seed=0),
        runtime=RuntimeConfig(workers=0),
    )
    prepare(params.data, tmp_path / "prepared")
    train, val = (read_manifest(tmp_path / "prepared" / f"{s}.csv") for s in ("train", "val"))
    history = fit(params, train, val, tmp_path / "state")["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.1
    res = Detector.load(tmp_path / "state" / "best.pt", "cpu", tta=params.predict.tta).score_manifest(val)
    auc = skm.roc_auc_score(res.targets, res.prob)
    assert auc > 0.8, [round(r["val_auc"], 3) for r in history]
    # Every manipulation is learnt, not only the easiest one.
    y, groups = res.targets, val.group.to_numpy()[res.index]
    for kind in sorted(set(groups[y == 1])):
        rows = (y == 0) | (groups == kind)
        assert skm.roc_auc_score(y[rows], res.prob[rows]) > 0.7, kind
