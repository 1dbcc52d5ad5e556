import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ffdi.analysis.compare import Run, bootstrap_auc_difference, group_runs, varying_keys


def scores(rng, y, signal, runs=3):
    return np.stack([np.clip(signal * y + rng.normal(0.5 - signal / 2, 0.25, len(y)), 0, 1) for _ in range(runs)])


def test_bootstrap_separates_a_real_gap_from_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    weak, strong = scores(rng, y, 0.2), scores(rng, y, 0.6)
    gap = bootstrap_auc_difference(y, weak, strong, n_boot=300)
    expected = np.mean([roc_auc_score(y, p) for p in strong]) - np.mean([roc_auc_score(y, p) for p in weak])
    assert gap["difference"] == pytest.approx(expected)
    assert 0 < gap["ci_low"] < gap["difference"] < gap["ci_high"]

    same = bootstrap_auc_difference(y, weak, weak[::-1], n_boot=300)
    assert same["difference"] == pytest.approx(0, abs=1e-12)
    assert same["ci_low"] <= 0 <= same["ci_high"]


def test_grouping_ignores_seed():
    runs = [
        Run(str(i), f"r{i}", {"model.se": se, "train.seed": seed, "train.lr": "0.001"}, {}, "")
        for i, (se, seed) in enumerate([("False", "1"), ("False", "2"), ("True", "1"), ("True", "2")])
    ]
    assert varying_keys(runs) == ["model.se"]
    runs[0].params["data.on_bad_image"] = "error"  # a param only newer runs log
    assert varying_keys(runs) == ["model.se"]
    groups = group_runs(runs, ["model.se"])
    assert {k: [r.run_id for r in v] for k, v in groups.items()} == {
        "model.se=False": ["0", "1"],
        "model.se=True": ["2", "3"],
    }


def test_mixed_precision_or_hardware_is_warned():
    from ffdi.analysis.compare import hardware_warnings

    def run(i, se, precision, cpu):
        return Run(str(i), f"r{i}", {"model.se": se}, {}, "", {"hw.precision": precision, "hw.device_name": cpu})

    same = {"a": [run(0, "False", "fp32", "AMD EPYC")], "b": [run(1, "True", "fp32", "AMD EPYC")]}
    assert hardware_warnings(same) == []
    mixed = {"a": [run(0, "False", "fp32", "AMD EPYC")], "b": [run(1, "True", "bf16", "Intel Xeon")]}
    warnings = hardware_warnings(mixed)
    assert len(warnings) == 2
    assert "precision" in warnings[0] and "a: fp32" in warnings[0] and "b: bf16" in warnings[0]
    assert "hardware" in warnings[1] and "Intel Xeon" in warnings[1]


def test_runs_on_several_data_sets_are_compared_one_data_set_at_a_time():
    """A store with runs on the sample and on real data: `make compare` took them all and refused
    ("different val images"). It compares the latest run's data set and names the others and the fix."""
    from ffdi.analysis.runs import CompareError, one_data_set

    def run(i, data, root):
        return Run(str(i), f"r{i}", {"model.se": "False"}, {}, "", {"data.hash": data, "data.root": root})

    runs = [
        run(0, "aaaa1111", "data/sample"),
        run(1, "bbbb2222", "/data/multiFFDI"),
        run(2, "aaaa1111", "data/sample"),
        run(3, "bbbb2222", "/data/multiFFDI"),
        run(4, "bbbb2222", "/data/multiFFDI"),
    ]  # oldest first
    chosen, notes = one_data_set(runs, "ffdi")
    assert [r.run_id for r in chosen] == ["1", "3", "4"]  # the latest run's data set, in order
    assert len(notes) == 1 and "2 data sets" in notes[0] and "aaaa1111: 2 runs on data/sample" in notes[0]
    assert "-S tracking.experiment=" in notes[0] and "--data" in notes[0]
    chosen, _ = one_data_set(runs, "ffdi", data="aaaa")
    assert [r.run_id for r in chosen] == ["0", "2"]
    with pytest.raises(CompareError, match="--data 'cccc' matches 0 of the data sets"):
        one_data_set(runs, "ffdi", data="cccc")
    alone, notes = one_data_set(runs[:1], "ffdi")
    assert [r.run_id for r in alone] == ["0"] and notes == []


def test_the_reference_group_is_the_one_run_with_params_yaml_values_not_the_first_by_name():
    """With a held-out or lr variant in the store, sorting put it first and every difference's sign was
    the reverse of what a user expects: the reference is the group run with params.yaml's values."""
    from ffdi.analysis.compare import reference_variant
    from ffdi.analysis.runs import CompareError
    from ffdi.config import Params, TrainConfig

    runs = [
        Run(str(i), f"r{i}", {"train.lr": lr, "train.seed": "0"}, {}, "") for i, lr in enumerate(["0.0005", "0.001"])
    ]
    groups = group_runs(runs, ["train.lr"])
    assert list(groups)[0] == "train.lr=0.0005"  # first by label
    assert reference_variant(["train.lr"], groups, Params()) == "train.lr=0.001"  # params.yaml's lr
    assert reference_variant(["train.lr"], groups, Params(train=TrainConfig(lr=0.0005))) == "train.lr=0.0005"
    assert reference_variant(["train.lr"], groups, Params(train=TrainConfig(lr=0.1))) is None  # none matches
    assert reference_variant(["train.lr"], groups, None, reference="0.0005") == "train.lr=0.0005"
    with pytest.raises(CompareError, match="matches 2 variants"):
        reference_variant(["train.lr"], groups, None, reference="train.lr")


def test_summary_is_each_groups_mean_and_spread_over_its_seeds():
    from ffdi.analysis.compare import SUMMARY_METRICS, summary_table
    from ffdi.schema import EVAL_ROC_AUC

    aucs = {("False", "1"): 0.81, ("False", "2"): 0.86, ("True", "1"): 0.90, ("True", "2"): 0.93}
    runs = [
        Run(f"{se}{seed}", "r", {"model.se": se, "train.seed": seed}, {EVAL_ROC_AUC: auc}, "")
        for (se, seed), auc in aucs.items()
    ]
    table = summary_table(group_runs(runs, ["model.se"])).set_index("group")
    name = SUMMARY_METRICS[EVAL_ROC_AUC]
    for se in ("False", "True"):
        row, values = table.loc[f"model.se={se}"], [aucs[(se, "1")], aucs[(se, "2")]]
        assert row.runs == 2 and row.seeds == "1,2"
        assert row[f"{name} mean"] == pytest.approx(np.mean(values))
        assert row[f"{name} sd"] == pytest.approx(np.std(values, ddof=1))
        assert np.isnan(row[f"{SUMMARY_METRICS[next(k for k in SUMMARY_METRICS if k != EVAL_ROC_AUC)]} mean"])
