"""`ffdi generalisation`: which experiments it queues, how it waits, and the tables it renders.

The rendering is checked on made-up runs (every cell against the runs' own metrics); one slow
test runs the real command on a tiny project with two manipulations.
"""

import json
import re
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from ffdi.analysis import dvc_queue
from ffdi.analysis import generalisation as gen
from ffdi.analysis import generalisation_report as gen_report
from ffdi.analysis.runs import CompareError, Run
from ffdi.config import AugmentConfig, DataConfig, Params, SampleConfig
from ffdi.sample.generate import generate
from ffdi.schema import (
    EVAL_DEGRADED_MEAN_AUC,
    EVAL_GROUP_AUC,
    EVAL_ROC_AUC,
    HELDOUT,
    HELDOUT_ROC_AUC,
    PREDICT_IMAGES,
    SEEN,
)
from ffdi.tracking.mlflow_run import epoch_metric_name
from tests.project import NO_DEGRADATION, label_with_groups, make_project, mlflow_runs


def test_holdout_sets_leave_one_out_and_train_on_one():
    assert gen.holdout_sets(["a", "b", "c"]) == [("a",), ("b",), ("c",), ("b", "c"), ("a", "c"), ("a", "b")]
    assert gen.holdout_sets(["a", "b", "c"], train_on_one=False) == [("a",), ("b",), ("c",)]
    # With two manipulations, leaving one out is training on the other: queued once.
    assert gen.holdout_sets(["a", "b"]) == [("a",), ("b",)]


def test_trained_on_all_is_queued_with_an_empty_holdout_first():
    planned = gen.planned_experiments(
        ["a", "b", "c"],
        seeds=[0, 1],
        overrides=["augment.blur=[0.2, 1.5]"],
        leave_one_out=True,
        train_on_one=False,
        trained_on_all=True,
    )
    assert [h for _, h in planned] == [
        "data.holdout=[]",
        "data.holdout=['a']",
        "data.holdout=['b']",
        "data.holdout=['c']",
    ]
    assert planned[0][0] == [
        "exp",
        "run",
        "--queue",
        "-S",
        "data.holdout=[]",
        "-S",
        "train.seed=0,1",
        "-S",
        "augment.blur=[0.2, 1.5]",
    ]


def test_exp_run_args_pass_the_holdout_as_one_list_not_a_sweep():
    args = gen.exp_run_args(("b", "c"), [0, 1], ["model.se=true"])
    assert args == [
        "exp",
        "run",
        "--queue",
        "-S",
        'data.holdout=["b", "c"]',
        "-S",
        "train.seed=0,1",
        "-S",
        "model.se=true",
    ]
    assert gen.exp_run_args(("a",), [], []) == ["exp", "run", "--queue", "-S", 'data.holdout=["a"]']


def test_parse_queue_status():
    text = """Task     Name        Created    Status
252591e  pricy-tyne  12:32 AM   Success
5442222  batty-ryas  12:32 AM   Running
5900022  inane-puck  12:32 AM   Failed
7700022  other-puck  12:33 AM   Queued

Worker status: 1 active, 0 idle
"""
    tasks, active = dvc_queue.parse_queue_status(text)
    assert tasks == {"pricy-tyne": "Success", "batty-ryas": "Running", "inane-puck": "Failed", "other-puck": "Queued"}
    assert active == 1


def test_wait_gives_up_when_no_worker_runs_the_queue(monkeypatch, capsys):
    monkeypatch.setattr(dvc_queue, "queue_status", lambda: ({"x": "Queued"}, 0))
    status = dvc_queue.wait_for(["x", "y"], timeout_s=60, poll_s=0.01, stall_s=0.05)
    assert status == {"x": "Queued", "y": "unknown"}
    assert "no queue worker is active" in capsys.readouterr().err


def test_wait_restarts_workers_that_left_experiments_queued(monkeypatch, capsys):
    # Each start of the workers runs one experiment, then they exit with the rest still queued.
    state = {"done": 0, "running": False}

    def status():
        tasks = {n: "Success" if i < state["done"] else "Queued" for i, n in enumerate("xyz")}
        if not state["running"]:
            return tasks, 0
        tasks["xyz"[state["done"]]] = "Running"  # seen running once, then done and the worker gone
        state["done"], state["running"] = state["done"] + 1, False
        return tasks, 1

    monkeypatch.setattr(dvc_queue, "queue_status", status)
    starts = []

    def restart():
        starts.append(1)
        state["running"] = True

    result = dvc_queue.wait_for(list("xyz"), timeout_s=60, poll_s=0.01, stall_s=0.05, restart=restart, restarts=1)
    assert result == dict.fromkeys("xyz", "Success")
    assert len(starts) == 3  # one restart each time, as each brought progress, though only 1 in a row is allowed
    assert "starting workers again" in capsys.readouterr().out
    # Workers that never come up: a bounded number of fruitless restarts, then the error.
    monkeypatch.setattr(dvc_queue, "queue_status", lambda: ({"x": "Queued"}, 0))
    tries = []
    assert dvc_queue.wait_for(
        ["x"], timeout_s=60, poll_s=0.01, stall_s=0.05, restart=lambda: tries.append(1), restarts=2
    ) == {"x": "Queued"}
    assert len(tries) == 2 and "no queue worker is active" in capsys.readouterr().err


def test_wait_is_bounded(monkeypatch, capsys):
    monkeypatch.setattr(dvc_queue, "queue_status", lambda: ({"x": "Running"}, 1))
    assert dvc_queue.wait_for(["x"], timeout_s=0.05, poll_s=0.01) == {"x": "Running"}
    assert "timed out" in capsys.readouterr().err


def test_starting_the_workers_does_not_wait_for_them(tmp_path):
    """`dvc queue start` leaves daemons behind that keep its stdout open: waiting on a pipe there
    would wait for the whole queue. The daemon here lives until the test lets it go."""
    release = tmp_path / "release"
    daemon = f"import os, sys, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.05)\n"
    starter = (
        f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {daemon!r}])\nprint('started 1 worker')\n"
    )
    try:
        dvc_queue.start_workers(1, [sys.executable, "-c", starter], timeout=60)  # raises TimeoutExpired if it waits
    finally:
        release.touch()
    with pytest.raises(dvc_queue.QueueError, match="exited 3: no queue here"):
        dvc_queue.start_workers(1, [sys.executable, "-c", "print('no queue here'); raise SystemExit(3)"])


def test_manipulations_from_summary_or_labels(tmp_path):
    root = tmp_path / "data"
    generate(SampleConfig(n_train=12, n_val=8, n_test=0, size=16, seed=1), root)
    label_with_groups(root, ("x", "y"))
    params = Params(data=DataConfig(root=str(root)))
    assert gen.manipulations(params, tmp_path / "missing.json") == ["x", "y"]
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"root": str(root), "splits": {"train": {"fake_groups": {"p": 3, "q": 3}}}}))
    assert gen.manipulations(params, summary) == ["p", "q"]
    label_with_groups(root, ("only",))
    with pytest.raises(gen.GeneralisationError, match="at least two manipulations"):
        gen.manipulations(params, tmp_path / "missing.json")


def fake_runs() -> list[Run]:
    """Two variants (model.se), two seeds, leave-one-out and train-on-one over a, b, c; plus a
    baseline run without a holdout, which the tables must leave out."""
    rng = np.random.default_rng(0)
    runs, i = [], 0
    for se in ("False", "True"):
        for seed in ("0", "1"):
            for holdout in gen.holdout_sets(["a", "b", "c"]):
                i += 1
                metrics = {
                    EVAL_ROC_AUC: rng.uniform(0.8, 1),
                    HELDOUT_ROC_AUC: rng.uniform(0.5, 1),
                    HELDOUT + "average_precision": rng.uniform(0.5, 1),
                    HELDOUT + "tpr_at_fpr_1e-3": rng.uniform(),
                    SEEN + "roc_auc": rng.uniform(0.8, 1),
                    **{f"{EVAL_GROUP_AUC}{g}": rng.uniform(0.5, 1) for g in "abc"},
                }
                params = {"model.se": se, "train.seed": seed, "data.holdout": str(list(holdout)), "train.lr": "0.001"}
                runs.append(Run(f"id{i}", f"exp{i}", params, metrics, "", {"git.commit": "c0ffee"}))
    runs.append(
        Run(
            "base",
            "base",
            {"model.se": "False", "train.seed": "0", "data.holdout": "[]", "train.lr": "0.001"},
            {EVAL_ROC_AUC: 0.5},
            "",
        )
    )
    return runs


def test_tables_equal_the_runs_metrics(tmp_path):
    runs = fake_runs()
    result = gen_report.render(runs, tmp_path)
    assert result["keys"] == ["model.se"] and len(result["runs"]) == 24
    assert set(result["tables"]) == {"model.se=False", "model.se=True"}
    for label, t in result["tables"].items():
        se = label.endswith("True")
        mine = [r for r in runs if r.params["model.se"] == ("True" if se else "False") and r.run_id != "base"]
        held = t["heldout"].set_index(["heldout", "metric"])
        for g in "abc":
            loo = [r for r in mine if r.params["data.holdout"] == f"['{g}']"]
            assert len(loo) == 2  # two seeds
            for key, column in gen_report.HELDOUT_COLUMNS.items():
                values = [r.metrics[key] for r in loo]
                assert held.loc[(g, column), "mean"] == pytest.approx(np.mean(values))
                assert held.loc[(g, column), "sd"] == pytest.approx(np.std(values, ddof=1))
                assert held.loc[(g, column), "runs"] == 2
        cross = t["train_on_one"].set_index(["trained_on", "tested_on"])
        for trained in "abc":
            others = str(sorted(set("abc") - {trained}))
            on_one = [r for r in mine if r.params["data.holdout"] == others]
            for tested in "abc":
                assert cross.loc[(trained, tested), "mean"] == pytest.approx(
                    np.mean([r.metrics[f"{EVAL_GROUP_AUC}{tested}"] for r in on_one])
                )
    # The markdown shows the same numbers, and the files are all there.
    md = (tmp_path / "report.md").read_text()
    assert md == result["markdown"]
    held = result["tables"]["model.se=True"]["heldout"].set_index(["heldout", "metric"])
    row = re.search(r"^\| b \| (.*) \|$", md.split("## model.se=True")[1], re.M).group(1).split(" | ")
    assert row[0] == f"{held.loc[('b', 'held-out AUC'), 'mean']:.4f} ± {held.loc[('b', 'held-out AUC'), 'sd']:.4f}"
    for name in ("heldout.png", "train_on_one.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    listed = pd.read_csv(tmp_path / "runs.csv")
    assert len(listed) == 24 and "base" not in set(listed.run_id)
    assert len(pd.read_csv(tmp_path / "train_on_one.csv")) == 2 * 9


def test_variants_against_the_reference_match_sklearn(tmp_path):
    from sklearn.metrics import roc_auc_score

    runs = [r for r in fake_runs() if r.run_id != "base"]
    rng = np.random.default_rng(1)
    groups = np.array(["real"] * 60 + ["a"] * 20 + ["b"] * 20 + ["c"] * 20)
    y = (groups != "real").astype(int)
    names = [f"{i:03d}.jpg" for i in range(len(y))]
    # SE runs separate the classes better, so their held-out AUC is higher.
    preds = {
        r.run_id: pd.DataFrame(
            {
                "img_name": names,
                "target": y,
                "group": groups,
                "y_pred": rng.uniform(size=len(y)) + y * (0.6 if r.params["model.se"] == "True" else 0.1),
            }
        )
        for r in runs
    }
    result = gen_report.render(runs, tmp_path, params=Params(), load=lambda r: preds[r.run_id], n_boot=200)
    assert result["reference"] == "model.se=False"  # params.yaml's value of the param that differs
    table = result["differences"].set_index(["variant", "heldout"])
    assert table.loc[("model.se=False", "a"), "runs"] == 2 and np.isnan(
        table.loc[("model.se=False", "a"), "difference"]
    )
    diffs = []
    for g in "abc":
        keep = (groups == "real") | (groups == g)

        def auc(se):
            loo = [r for r in runs if r.params["model.se"] == se and r.params["data.holdout"] == f"['{g}']"]
            return np.mean([roc_auc_score(y[keep], preds[r.run_id].y_pred[keep]) for r in loo])

        row = table.loc[("model.se=True", g)]
        assert row.heldout_auc == pytest.approx(auc("True"))
        assert row.difference == pytest.approx(auc("True") - auc("False"))
        assert row.ci_low < row.difference < row.ci_high and row.ci_low > 0  # clearly better
        diffs.append(row.difference)
    mean = table.loc[("model.se=True", "mean")]
    assert mean.difference == pytest.approx(np.mean(diffs)) and mean.ci_low < mean.difference < mean.ci_high
    assert "## Against the reference: model.se=False" in result["markdown"]
    assert re.search(r"^\| model.se=True \| mean \|.*\| better \|$", result["markdown"], re.M)
    assert re.search(r"^\| \(reference\) \| a \| 2 \|", result["markdown"], re.M)
    assert len(pd.read_csv(tmp_path / "differences.csv")) == 3 + 4
    assert (tmp_path / "differences.png").stat().st_size > 10_000
    from ffdi.analysis.plots import plot_differences

    plotted = plot_differences(result["differences"], tmp_path / "again.png", "t")
    assert [(v, h) for v, h, *_ in plotted] == [("model.se=True", g) for g in ("a", "b", "c", "mean")]
    for _, h, d, low, high in plotted:
        row = table.loc[("model.se=True", h)]
        assert (d, low, high) == (row.difference, row.ci_low, row.ci_high)
    assert (
        gen_report.render(runs, tmp_path, reference="se=True", load=lambda r: preds[r.run_id], n_boot=50)["reference"]
        == "model.se=True"
    )
    with pytest.raises(CompareError, match="matches 2 variants"):
        gen_report.render(runs, tmp_path, reference="model.se", load=lambda r: preds[r.run_id])


def test_a_missing_run_shows_as_na(tmp_path):
    runs = [r for r in fake_runs() if r.params["model.se"] == "False" and r.params["data.holdout"] != "['c']"]
    result = gen_report.render(runs, tmp_path)
    held = result["tables"]["all runs"]["heldout"].set_index(["heldout", "metric"])
    assert held.loc[("c", "held-out AUC"), "runs"] == 0 and np.isnan(held.loc[("c", "held-out AUC"), "mean"])
    assert re.search(r"^\| c \| n/a \| n/a", result["markdown"], re.M)


def test_nothing_to_render_is_a_clear_error(tmp_path):
    with pytest.raises(gen_report.GeneralisationError, match="no finished, evaluated run has data.holdout set"):
        gen_report.render([r for r in fake_runs() if r.run_id == "base"], tmp_path)


def knob_runs():
    """Three variants of augment.blur/augment.jpeg, three seeds each, trained on all manipulations,
    with val and degraded predictions; leave-one-out runs over a, b for two of them. `jpeg` is the
    most robust but loses clean AUC; `blur` is robust and keeps it; `both` is never held out."""
    rng = np.random.default_rng(2)
    groups = np.array(["real"] * 80 + ["a"] * 40 + ["b"] * 40)
    y = (groups != "real").astype(int)
    names = [f"{i:03d}.jpg" for i in range(len(y))]
    # (clean separation, degraded separation) per variant
    strength = {"null": (1.2, 0.2), "[0.2, 1.5]": (1.2, 0.9), "[30, 95]": (0.6, 1.1), "both": (1.2, 0.5)}
    runs, preds, degraded = [], {}, {}
    for variant, (clean_s, degraded_s) in strength.items():
        blur = "null" if variant in ("null", "[30, 95]") else "[0.2, 1.5]"
        jpeg = variant if variant == "[30, 95]" else "[30, 95]" if variant == "both" else "null"
        for seed in "012":
            for holdout in ([], ["a"], ["b"]):
                if holdout and variant in ("[30, 95]", "both"):
                    continue
                rid = f"{variant}-{seed}-{holdout}"
                shift = np.where((groups == holdout[0]) if holdout else False, 0.3, 1.0)
                p = rng.uniform(size=len(y)) + y * clean_s * shift
                preds[rid] = pd.DataFrame({"img_name": names, "target": y, "group": groups, "y_pred": p})
                d = {c: rng.uniform(size=len(y)) + y * degraded_s * k for c, k in (("jpeg:50", 1.0), ("blur:1", 0.5))}
                degraded[rid] = pd.DataFrame({"img_name": names, "target": y, "group": groups, "clean": p, **d})
                metrics = {
                    EVAL_ROC_AUC: roc_auc_score(y, p),
                    EVAL_DEGRADED_MEAN_AUC: np.mean([roc_auc_score(y, v) for v in d.values()]),
                    **{f"{EVAL_GROUP_AUC}{g}": 0.9 for g in "ab"},
                }
                if holdout:
                    keep = (groups == "real") | (groups == holdout[0])
                    metrics[HELDOUT_ROC_AUC] = roc_auc_score(y[keep], p[keep])
                params = {"augment.blur": blur, "augment.jpeg": jpeg, "train.seed": seed, "data.holdout": str(holdout)}
                runs.append(Run(rid, rid, params, metrics, ""))
    return runs, preds, degraded, y, groups


def test_knob_table_three_columns_match_sklearn_and_the_rule_picks(tmp_path):
    runs, preds, degraded, y, groups = knob_runs()
    # The reference is the variant run with these params: the one without degradations.
    params = Params(augment=AugmentConfig(**NO_DEGRADATION))
    result = gen_report.render(
        runs,
        tmp_path,
        params=params,
        load=lambda r: preds[r.run_id],
        load_degraded=lambda r: degraded[r.run_id],
        n_boot=200,
    )
    knob = result["knobs"].set_index(["variant", "column"])
    ref = "augment.blur=null, augment.jpeg=null"
    assert result["knobs"].variant.iloc[0] == ref

    def flat(blur, jpeg):
        return [
            r
            for r in runs
            if r.params["augment.blur"] == blur
            and r.params["augment.jpeg"] == jpeg
            and r.params["data.holdout"] == "[]"
        ]

    def mean_auc(rs, column="y_pred", rows=slice(None)):
        frames = degraded if column != "y_pred" else preds
        return np.mean([roc_auc_score(y[rows], frames[r.run_id][column].to_numpy()[rows]) for r in rs])

    base = flat("null", "null")
    for blur, jpeg in (("[0.2, 1.5]", "null"), ("null", "[30, 95]"), ("[0.2, 1.5]", "[30, 95]")):
        label = f"augment.blur={blur}, augment.jpeg={jpeg}"
        mine = flat(blur, jpeg)
        clean, deg = knob.loc[(label, "clean")], knob.loc[(label, "degraded")]
        assert clean.runs == 3 and clean["mean"] == pytest.approx(np.mean([r.metrics[EVAL_ROC_AUC] for r in mine]))
        assert clean.difference == pytest.approx(mean_auc(mine) - mean_auc(base))
        assert deg["mean"] == pytest.approx(np.mean([r.metrics[EVAL_DEGRADED_MEAN_AUC] for r in mine]))
        expected = np.mean([mean_auc(mine, c) - mean_auc(base, c) for c in ("jpeg:50", "blur:1")])
        assert deg.difference == pytest.approx(expected)
        assert deg.ci_low < deg.difference < deg.ci_high
    # held-out: the mean over manipulations of the leave-one-out AUC difference (reference_differences' `mean`)
    blur = "augment.blur=[0.2, 1.5], augment.jpeg=null"
    held = knob.loc[(blur, "heldout")]
    diffs = []
    for g in "ab":
        keep = (groups == "real") | (groups == g)

        def loo(b):
            return [
                r
                for r in runs
                if r.params["augment.blur"] == b
                and r.params["augment.jpeg"] == "null"
                and r.params["data.holdout"] == f"['{g}']"
            ]

        diffs.append(mean_auc(loo("[0.2, 1.5]"), rows=keep) - mean_auc(loo("null"), rows=keep))
    assert held.difference == pytest.approx(np.mean(diffs)) and held.runs == 3
    assert knob.loc[("augment.blur=null, augment.jpeg=[30, 95]", "heldout")].runs == 0
    # The rule: jpeg is the most robust but its clean AUC falls by more than 0.01, and `both` was never held out.
    assert knob.loc[("augment.blur=null, augment.jpeg=[30, 95]", "clean")].difference < -0.01
    assert (
        knob.loc[("augment.blur=null, augment.jpeg=[30, 95]", "degraded")]["mean"]
        > knob.loc[(blur, "degraded")]["mean"]
    )
    assert result["chosen"] == blur
    assert re.search(r"^\| augment.blur=\[0.2, 1.5\] \| 3 \|.*\| \*\*chosen\*\* \|$", result["markdown"], re.M)
    assert "not run" in result["markdown"] and (tmp_path / "knobs.png").stat().st_size > 10_000
    assert knob.loc[(blur, "heldout")].held_out == "a,b" and "(2 held out)" in result["markdown"]
    assert len(pd.read_csv(tmp_path / "knobs.csv")) == 4 * 3
    from ffdi.analysis.knob_table import TITLES
    from ffdi.analysis.plots import plot_knobs

    plotted = plot_knobs(result["knobs"], tmp_path / "again.png", TITLES, "t")
    assert len(plotted) == 3 + 3 + 1  # clean and degraded for 3 variants; held-out for blur only


# --- the real command on a tiny project -----------------------------------------------------------

TINY = {
    "data": {"root": "data/labelled"},
    "augment": {"resize": 32, "image_size": 32},
    "train": {"epochs": 2, "batch_size": 16},
    "runtime": {"workers": 0},
    "eval": {"batch_size": 32, "degradations": []},
    "predict": {"batch_size": 32},
    "tracking": {"log_model": False},
}


@pytest.fixture(scope="module")
def generalised(tmp_path_factory):
    """`ffdi generalisation` in a tiny project with two manipulations: two experiments queued in DVC
    and run two at a time, then the report. The suite's test of DVC's queue."""
    p = make_project(tmp_path_factory.mktemp("generalisation") / "repo", TINY)
    generate(SampleConfig(n_train=64, n_val=32, n_test=4, size=32, seed=7), p.repo / "data" / "labelled")
    label_with_groups(p.repo / "data" / "labelled", ("a", "b"))
    p.commit("labelled data")
    proc = p.sh(
        sys.executable,
        "-m",
        "ffdi.cli.main",
        "generalisation",
        "--jobs",
        "2",
        "--poll",
        "2",
        "--timeout",
        "15",
        all_cores=True,
    )
    return p, proc


@pytest.mark.slow
def test_generalisation_end_to_end(generalised):
    p, proc = generalised
    assert "manipulations: a, b" in proc.stdout and "2 succeeded, 0 failed, 0 unfinished" in proc.stdout

    client, _, runs = mlflow_runs(p.repo)
    pipeline = {r.data.params["data.holdout"]: r for r in runs if r.data.tags.get("ffdi.kind") == "pipeline"}
    assert set(pipeline) == {"['a']", "['b']"}
    assert {r.info.status for r in pipeline.values()} == {"FINISHED"}
    (report_run,) = [r for r in runs if r.data.tags.get("ffdi.kind") == "generalisation"]
    arts = {a.path for a in client.list_artifacts(report_run.info.run_id, "generalisation")}
    assert {"generalisation/report.md", "generalisation/heldout.png", "generalisation/train_on_one.png"} <= arts

    # Every cell is its run's metric: held out a = trained on b, and the reverse.
    out = p.repo / "reports" / "generalisation"
    held = pd.read_csv(out / "heldout.csv").set_index(["heldout", "metric"])
    cross = pd.read_csv(out / "train_on_one.csv").set_index(["trained_on", "tested_on"])
    for g, other in (("a", "b"), ("b", "a")):
        m = pipeline[f"['{g}']"].data.metrics
        assert held.loc[(g, "held-out AUC"), "mean"] == pytest.approx(m[HELDOUT_ROC_AUC])
        assert held.loc[(g, "seen AUC"), "mean"] == pytest.approx(m[SEEN + "roc_auc"])
        assert held.loc[(g, "held-out AUC"), "mean"] == pytest.approx(m[f"{EVAL_GROUP_AUC}{g}"])
        for tested in "ab":
            assert cross.loc[(other, tested), "mean"] == pytest.approx(m[f"{EVAL_GROUP_AUC}{tested}"])
    report = (out / "report.md").read_text()
    heldout_a = pipeline["['a']"].data.metrics[HELDOUT_ROC_AUC]
    assert f"| a | {heldout_a:.4f} |" in report

    # `ffdi compare` leaves the report run out; --no-run renders again from MLflow alone.
    from ffdi.analysis.runs import finished_pipeline_runs

    assert {r.run_id for r in finished_pipeline_runs("ffdi")} == {r.info.run_id for r in pipeline.values()}
    again = p.sh(
        sys.executable, "-m", "ffdi.cli.main", "generalisation", "--no-run", "--no-log", "--out", "reports/again"
    )
    assert "| a |" in again.stdout
    assert (p.repo / "reports" / "again" / "report.md").read_text() == report


@pytest.mark.slow
def test_queued_runs_land_complete_in_the_one_store(generalised):
    """Two experiments run side by side by DVC's queue: each lands, complete, in the one MLflow store."""
    p, _ = generalised
    commit = p.out("git", "rev-parse", "HEAD")
    client, exp, runs = mlflow_runs(p.repo)
    pipeline = [r for r in runs if r.data.tags.get("ffdi.kind") == "pipeline"]
    assert len(pipeline) == 2 and {r.info.status for r in pipeline} == {"FINISHED"}
    assert len({r.info.run_name for r in pipeline}) == 2  # one per DVC experiment, no duplicates
    for run in pipeline:
        for key in ("train_loss", "val_loss", "val_auc"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, epoch_metric_name(key))]
            assert sorted(steps) == [0, 1], (run.info.run_name, key)
        assert EVAL_ROC_AUC in run.data.metrics and run.data.metrics[PREDICT_IMAGES] == 4
        assert run.data.tags["git.commit"] == commit
    # Nothing was stored inside DVC's temporary executor folders.
    assert not list((p.repo / ".dvc" / "tmp").rglob("mlflow.db"))
    assert not list((p.repo / ".dvc" / "tmp").rglob("mlartifacts"))

    shown = json.loads(p.out("dvc", "exp", "show", "--json"))
    names = {e["name"] for entry in shown for exp in entry.get("experiments") or [] for e in exp.get("revs", [])}
    assert {r.info.run_name for r in pipeline} <= names


@pytest.mark.slow
def test_compare_report_on_the_queued_runs(generalised):
    """`ffdi compare` on real runs: one group per held-out set, each group's numbers its run's, a paired
    bootstrap CI around the difference, the plots, and a report run in MLflow."""
    p, _ = generalised
    proc = p.sh(sys.executable, "-m", "ffdi.cli.compare", "--boot", "200")
    client, _, runs = mlflow_runs(p.repo)
    pipeline = [r for r in runs if r.data.tags.get("ffdi.kind") == "pipeline"]
    (report_run,) = [r for r in runs if r.data.tags.get("ffdi.kind") == "compare"]

    summary = pd.read_csv(p.repo / "reports" / "compare" / "summary.csv")
    assert summary.group.tolist() == ["data.holdout=['a']", "data.holdout=['b']"]
    for _, row in summary.iterrows():
        (run,) = [r for r in pipeline if f"data.holdout={r.data.params['data.holdout']}" == row.group]
        assert row.runs == 1 and row["val AUC mean"] == pytest.approx(run.data.metrics[EVAL_ROC_AUC])
        assert np.isnan(row["val AUC sd"])  # one seed: no spread to report

    report = (p.repo / "reports" / "compare" / "report.md").read_text()
    assert "95% CI" in report
    ci = re.search(
        r"\| data\.holdout=\['b'\] \| data\.holdout=\['a'\] \| ([+-][0-9.]+) \| \[([+-][0-9.]+), ([+-][0-9.]+)\]",
        report,
    )
    assert ci, report
    diff, low, high = map(float, ci.groups())
    aucs = {r.data.params["data.holdout"]: r.data.metrics[EVAL_ROC_AUC] for r in pipeline}
    assert diff == pytest.approx(aucs["['b']"] - aucs["['a']"], abs=1e-4) and low <= diff <= high
    for png in ("curves.png", "roc.png"):
        assert (p.repo / "reports" / "compare" / png).stat().st_size > 10_000
    arts = {a.path for a in client.list_artifacts(report_run.info.run_id, "compare")}
    assert {"compare/report.md", "compare/curves.png", "compare/roc.png", "compare/summary.csv"} <= arts
    assert "val AUC" in proc.stdout
