import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from unbake.evaluation import Evaluation, avg_gap, best_threshold, roc_auc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, 5, 50).astype(float)
    neg = rng.integers(0, 5, 70).astype(float) - 0.5
    expected = roc_auc_score(np.r_[np.ones(50), np.zeros(70)], np.r_[pos, neg])
    assert roc_auc(pos, neg) == pytest.approx(expected, abs=1e-12)


def test_auc_closed_forms():
    assert roc_auc(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.5
    assert roc_auc(np.array([0.0]), np.array([1.0])) == 0.0


def test_best_threshold_perfect_and_useless():
    t, acc = best_threshold(np.array([5.0, 6.0]), np.array([1.0, 2.0]))
    assert acc == 1.0 and 2.0 <= t < 5.0
    _, acc = best_threshold(np.array([1.0, 1.0]), np.array([1.0, 1.0]))
    assert acc == 0.5


def test_avg_gap_is_mean_abs_difference_in_points():
    a = Evaluation({"fa": 90, "ra": 95, "ta": 85, "mia": 60, "mia_efficacy": 10})
    b = Evaluation({"fa": 80, "ra": 95, "ta": 87, "mia": 50, "mia_efficacy": 30})
    assert avg_gap(a, b) == pytest.approx((10 + 0 + 2 + 10) / 4)


def test_gap_metrics_compute_the_whole_avg_gap_and_skip_the_rest():
    from unbake.evaluation import evaluate, gap_metrics
    from unbake.testing import tiny_dataset
    from unbake.training import fit

    ds = tiny_dataset()
    model = fit(ds.train, n_classes=10, model="logreg", seed=0)
    forget, retain = ds.train.split(ds.train.ids[:20])
    full = evaluate(model, forget, retain, ds.test)
    lean = evaluate(model, forget, retain, ds.test, metrics=gap_metrics())
    assert {"fa", "ra", "ta", "mia"} <= set(lean) < set(full)  # the costlier attacks skipped
    assert "mia_efficacy" in full and "mia_efficacy" not in lean
    assert avg_gap(lean, full) == 0.0 and {k: lean[k] for k in lean} == {k: full[k] for k in lean}


def test_a_text_metric_on_a_split_of_arrays_is_refused_in_one_line():
    from unbake.data import load_dataset
    from unbake.data.text import TextSamples
    from unbake.evaluation.base import EvalContext
    from unbake.exceptions import InvalidParameterError
    from unbake.training import TrainConfig, fit

    ds = load_dataset("digits")
    model = fit(ds.train, n_classes=10, model="logreg", config=TrainConfig.parse(epochs=0))
    forget, retain = ds.train.split(ds.train.ids[:5])
    ctx = EvalContext(model, forget, retain, ds.test)
    with pytest.raises(InvalidParameterError, match="holds arrays, not text") as info:
        ctx.text_samples("forget")
    assert "\n" not in str(info.value)
    text = TextSamples.build(["Q?"], ["A."], ids=["t0"])
    assert EvalContext(model, text, text, text).text_samples("forget") is text
