"""No host-device synchronisation per step, in training or in scoring, proven on the meta device.

On a GPU each synchronisation makes the host wait for the device, so the GPU idles while the host
prepares the next step. ffdi.engine.sync_audit counts them without a GPU; a loop may have some once (its
totals at the end), never once a step: the counts for 2 steps and for 60 must be equal.
"""

from collections import Counter

import pandas as pd
import pytest
import torch
from timm.utils import ModelEmaV3

from ffdi.config import AugmentConfig, ModelConfig, TrainConfig
from ffdi.data.dataset import make_loader
from ffdi.engine.sync_audit import SyncAudit, count_syncs, on_meta
from ffdi.engine.train import build_optimizer, train_one_epoch
from ffdi.inference.detector import Detector
from ffdi.model.networks import build_model

AUG = AugmentConfig(resize=32, image_size=32)
META = torch.device("meta")


def _rows(manifest: pd.DataFrame, n: int) -> pd.DataFrame:
    return pd.concat([manifest] * (n // len(manifest) + 1), ignore_index=True).iloc[:n]


def test_the_audit_counts_what_waits_for_the_device_and_nothing_else():
    x = torch.zeros(4, device=META)
    host = torch.zeros(4)
    with SyncAudit() as audit:
        x.sum().item()
        x.tolist()
        float(x[0])
        x.cpu()
        host.copy_(x)
        host.copy_(x, non_blocking=True)  # pinned memory on a GPU: no wait
        torch.tensor([1.0, 2.0], device=META)
        host.to(META)
        host.to(META, non_blocking=True)  # a pinned batch from the loader: no wait
        (x * 2 + 1).sum()  # work queued on the device: no wait
        host.sum().item()  # host values: no wait
    assert audit.counts == {
        "read item": 1,
        "read tolist": 1,
        "read float": 1,
        "read cpu": 1,
        "copy to host": 1,
        "host data to device": 1,
        "blocking copy to device": 1,
    }


def _meta_training(steps: int, manifest) -> dict:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet18"), AUG.image_size)
    ema = ModelEmaV3(model, decay=0.999, use_warmup=True)  # built on the CPU: timm makes a generator on its device
    ema.module.to(META)
    model = on_meta(model).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, TrainConfig())
    done = [0]

    def after_step():
        done[0] += 1
        ema.update(model, step=done[0])

    loader = make_loader(_rows(manifest, 2 * steps), AUG, 2, 0, train=True)
    loader.sampler.set_epoch(0, 1)
    counts = count_syncs(lambda: train_one_epoch(model, loader, optimizer, META, after_step=after_step))
    assert done[0] == steps
    return counts


@pytest.mark.slow
def test_a_training_epoch_synchronises_a_fixed_number_of_times_whatever_its_length(manifests):
    first = _meta_training(2, manifests[0])  # makes the normalisation constants, once a process
    short, long = _meta_training(2, manifests[0]), _meta_training(60, manifests[0])
    assert short == long, f"per-step synchronisations: {long - short}"
    assert first - short <= Counter({"host data to device": 2})  # the mean and the std
    assert sum(short.values()) <= 3  # the epoch's totals, read once


def test_scoring_synchronises_a_fixed_number_of_times_whatever_the_number_of_batches(manifests):
    model = on_meta(build_model(ModelConfig(arch="resnet18"), AUG.image_size)).to(memory_format=torch.channels_last)
    detector = Detector(model, AUG, META, "fp32", tta=("hflip",))

    def scoring(batches: int):
        loader = make_loader(_rows(manifests[1], 4 * batches), AUG, 4, 0, train=False)
        scores = []
        counts = count_syncs(lambda: scores.append(detector.score_loader(loader)))
        assert scores[0].view_logp.shape == (4 * batches, 2, 2)
        return counts

    scoring(1)  # makes the normalisation constants, once a process
    short, long = scoring(2), scoring(60)
    assert short == long, f"per-batch synchronisations: {long - short}"
    assert sum(short.values()) <= 1  # the scores, read once at the end
