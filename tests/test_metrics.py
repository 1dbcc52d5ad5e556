import numpy as np
import pytest
from sklearn import metrics as skm

from ffdi.evaluation.metrics import MetricError, binary_metrics, confusion, eer, heldout_metrics, tpr_at_fpr


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.2, 500), 0, 1)
    return y, p


def test_matches_sklearn(scores):
    y, p = scores
    m = binary_metrics(y, p, threshold=0.5)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p >= 0.5))
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)))
    assert 0.5 < m["roc_auc"] < 1.0


def test_tpr_at_fpr_by_hand():
    # 4 real, 4 fake. At FPR 0 the threshold must sit above the top real (0.7): TPR 2/4.
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.6, 0.65, 0.8, 0.9])
    assert tpr_at_fpr(y, p, 1e-3) == pytest.approx(0.5)
    # FPR <= 0.25 admits the 0.7 real: all fakes down to 0.6 pass, TPR 1.
    assert tpr_at_fpr(y, p, 0.25) == pytest.approx(1.0)


def test_eer_perfect_and_by_curve(scores):
    y = np.array([0, 0, 1, 1])
    assert eer(y, np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    y, p = scores
    fpr, tpr, _ = skm.roc_curve(y, p)
    e = eer(y, p)
    i = np.argmin(np.abs((1 - tpr) - fpr))
    assert abs(e - fpr[i]) < 0.02 and abs(e - (1 - tpr[i])) < 0.02


def test_confusion_counts():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.2, 0.6, 0.4, 0.7, 0.9])
    assert confusion(y, p, 0.5).tolist() == [[1, 1], [1, 2]]


def test_single_class_is_an_error_not_nan():
    with pytest.raises(MetricError, match="both real"):
        binary_metrics(np.ones(5), np.linspace(0, 1, 5))


def test_nan_probabilities_are_an_error():
    with pytest.raises(MetricError, match="nan"):
        binary_metrics(np.array([0, 1]), np.array([0.1, np.nan]))


def test_rank_aucs_equal_sklearn_with_ties():
    from ffdi.evaluation.metrics import rank_aucs

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    probs = np.round(rng.uniform(size=(4, 300)) + 0.3 * y, 1)  # rounded: many ties, within and across classes
    expected = [skm.roc_auc_score(y, p) for p in probs]
    assert rank_aucs(y, probs) == pytest.approx(expected, abs=1e-12)
    assert rank_aucs(y, probs[0])[0] == pytest.approx(expected[0], abs=1e-12)  # one run as a 1-D array
    with pytest.raises(ValueError, match="both classes"):
        rank_aucs(np.zeros(5), np.ones(5))


def test_heldout_metrics_are_the_unseen_fakes_and_the_seen_fakes_each_against_all_real(scores):
    y, p = scores
    groups = np.where(y == 0, "", np.array(["splice", "resample", "regenerate"])[np.arange(len(y)) % 3])
    m = heldout_metrics(y, p, groups, ["splice", "regenerate"], (1e-3,))
    unseen = (y == 1) & np.isin(groups, ["splice", "regenerate"])
    seen = (y == 1) & (groups == "resample")
    assert m["heldout"]["roc_auc"] == pytest.approx(skm.roc_auc_score(y[(y == 0) | unseen], p[(y == 0) | unseen]))
    assert m["seen"]["roc_auc"] == pytest.approx(skm.roc_auc_score(y[(y == 0) | seen], p[(y == 0) | seen]))
    assert m["seen"]["average_precision"] == pytest.approx(
        skm.average_precision_score(y[(y == 0) | seen], p[(y == 0) | seen])
    )
    # A held-out manipulation with no val fakes: no held-out side, and every fake is seen.
    assert set(heldout_metrics(y, p, groups, ["face_swap"])) == {"seen"}
