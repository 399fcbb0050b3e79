"""The audit's pure statistics against closed-form answers, and the one kind of score."""

import numpy as np
import pytest
import torch
from scipy import stats

from unbake.evaluation import METRICS, evaluate, result_specs
from unbake.evaluation.attacks import lr_attack_accuracy, svc_mia_efficacy
from unbake.evaluation.bank import half_mask
from unbake.evaluation.lira import (
    cross_fit_scores,
    fit_gaussians,
    fold_of_rows,
    likelihood_ratio,
    offline_score,
)
from unbake.evaluation.metrics import (
    entropy,
    logit_confidence,
    minimum_detectable_auc,
    modified_entropy,
    roc_auc,
    tpr_at_fpr,
)
from unbake.exceptions import InvalidParameterError
from unbake.training import OUTPUT_KINDS, to_log_proba


def test_logit_confidence_is_log_odds_even_near_one():
    p = np.array([[0.9, 0.05, 0.05], [1 - 1e-15, 5e-16, 5e-16]])
    phi = logit_confidence(np.log(p), np.array([0, 0]))
    assert phi[0] == pytest.approx(np.log(0.9 / 0.1))
    assert np.isfinite(phi[1]) and phi[1] == pytest.approx(np.log((1 - 1e-15) / 1e-15), rel=1e-3)


def test_entropies_closed_form():
    uniform = np.log(np.full((1, 4), 0.25))
    assert entropy(uniform)[0] == pytest.approx(np.log(4))
    p = np.array([[0.8, 0.2]])
    expected = -(1 - 0.8) * np.log(0.8) - 0.2 * np.log(1 - 0.2)
    assert modified_entropy(np.log(p), np.array([0]))[0] == pytest.approx(expected)
    wrong = -(1 - 0.2) * np.log(0.2) - 0.8 * np.log(1 - 0.8)
    assert modified_entropy(np.log(p), np.array([1]))[0] == pytest.approx(wrong)


def test_tpr_at_fpr_and_minimum_detectable_auc():
    pos, neg = np.array([5.0, 4.0, 0.5]), np.array([1.0, 0.0, -1.0, -2.0])
    assert tpr_at_fpr(pos, neg, 0.0) == pytest.approx(2 / 3)
    assert tpr_at_fpr(pos, neg, 0.25) == 1.0  # threshold 0.5 admits one negative
    assert tpr_at_fpr(pos, neg, 1.0) == 1.0
    se = np.sqrt((50 + 50 + 1) / (12 * 50 * 50))
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
    assert minimum_detectable_auc(50, 50) == pytest.approx(z * se)


def test_gaussians_and_likelihood_ratio_closed_form():
    phi = np.array([[0.0, 10.0], [2.0, 14.0], [9.0, 9.0]])
    mask = np.array([[True, True], [True, True], [False, False]])
    mu, sd = fit_gaussians(phi, mask, pooled=False)
    assert mu.tolist() == [1.0, 12.0] and sd.tolist() == [1.0, 2.0]
    _, pooled = fit_gaussians(phi, mask)
    assert pooled[0] == pytest.approx(np.sqrt((1 + 1 + 4 + 4) / 4))
    # equal variances: the log-ratio is linear in x
    x, mp, mn, s = 1.5, 2.0, 0.0, 1.0
    expected = ((x - mn) ** 2 - (x - mp) ** 2) / (2 * s**2)
    assert likelihood_ratio(x, mp, s, mn, s) == pytest.approx(expected)
    assert offline_score(0.0, 0.0, 1.0) == pytest.approx(np.log(0.5))


def test_folds_balanced_and_half_masks_seeded():
    assert fold_of_rows(np.array([1, 1, 1, 0, 0, 0]), 2).tolist() == [0, 1, 0, 0, 1, 0]
    a, b = half_mask(101, seed=3), half_mask(101, seed=3)
    assert (a == b).all() and a.sum() == 50
    assert not (half_mask(101, seed=4) == a).all()


@pytest.mark.parametrize("shift,low,high", [(0.0, 0.44, 0.56), (3.0, 0.97, 1.0)])
def test_cross_fit_scores_are_unbiased_and_powerful(shift, low, high):
    """Identical populations give AUC ≈ ½ (no leave-one-out bias); separated ones ≈ 1."""
    rng = np.random.default_rng(0)
    n_models, n_examples = 16, 300
    example_mean = rng.normal(0, 3, n_examples)  # examples differ a lot, as in real data
    phi = example_mean + rng.normal(0, 1, (n_models, n_examples))
    rows = np.arange(n_models) < n_models // 2
    phi[rows] += shift
    pos = np.broadcast_to(rows[:, None], phi.shape)
    scores, labels = cross_fit_scores(phi, pos, ~pos, fold_of_rows(rows, 2))
    assert low <= roc_auc(scores[labels], scores[~labels]) <= high


def test_population_attack_functions_on_separable_data():
    rng = np.random.default_rng(0)
    members = rng.normal(3, 0.3, (200, 3))
    nonmembers = rng.normal(0, 0.3, (200, 3))
    assert svc_mia_efficacy(members, nonmembers, rng.normal(0, 0.3, (50, 3))) == 100.0
    assert svc_mia_efficacy(members, nonmembers, rng.normal(3, 0.3, (50, 3))) == 0.0
    assert lr_attack_accuracy(rng.normal(0, 0.1, 100), rng.normal(3, 0.1, 100)) == 100.0
    assert np.isnan(lr_attack_accuracy(np.zeros(3), np.ones(3)))


def test_every_output_kind_maps_to_normalised_log_probabilities():
    z = torch.tensor([[2.0, -1.0, 0.5]])
    assert set(OUTPUT_KINDS) == {"logits", "log_probs", "ovr_log_sigmoid"}
    for kind, out in (
        ("logits", z),
        ("log_probs", torch.log_softmax(z, 1)),
        ("ovr_log_sigmoid", torch.nn.functional.logsigmoid(z)),
    ):
        lp = to_log_proba(out, kind)
        assert lp.exp().sum() == pytest.approx(1.0)
    sig = torch.sigmoid(z)
    assert to_log_proba(torch.log(sig), "ovr_log_sigmoid").exp() == pytest.approx(sig / sig.sum())
    with pytest.raises(InvalidParameterError, match="logits"):
        to_log_proba(z, "probs")


def test_trained_models_of_every_strategy_return_log_probabilities(digits_small):
    from unbake.training import TrainConfig, fit

    ds = digits_small
    for strategy, params in (("monolithic", {}), ("sisa", {"shards": 2}), ("certified", {})):
        model = "logreg"
        tm = fit(
            ds.train,
            n_classes=10,
            model=model,
            config=TrainConfig.parse(epochs=1),
            strategy=strategy,
            strategy_params=params,
        )
        lp = tm.log_proba(torch.from_numpy(ds.test.X))
        assert lp.shape == (len(ds.test), 10)
        assert torch.allclose(lp.exp().sum(1), torch.ones(len(ds.test), dtype=lp.dtype), atol=1e-5)


def test_metrics_are_named_once_and_drive_evaluate(digits_small):
    from unbake.training import TrainConfig, fit

    ds = digits_small
    keys = [r.key for r in result_specs()]
    assert len(keys) == len(set(keys))
    assert {"fa", "ra", "ta", "mia"} <= {r.key for r in result_specs(column_only=True)}
    tm = fit(ds.train, n_classes=10, model="logreg", config=TrainConfig.parse(epochs=2))
    forget, retain = ds.train.split(ds.train.ids[:40])
    ev = evaluate(tm, forget, retain, ds.test)
    # The default metrics whose needs a classifier meets (text and TOFU metrics stay out).
    defaults = [
        r.key
        for c in METRICS
        for r in METRICS.get(c).results
        if METRICS.get(c).default and METRICS.get(c).needs <= {"class_probs"}
    ]
    assert sorted(ev) == sorted(defaults)
    assert ev.fa == ev["fa"] and 0 <= ev.mia <= 100
    only = evaluate(tm, forget, retain, ds.test, metrics=["utility"])
    assert sorted(only) == ["fa", "ra", "ta"]


def test_a_version_2_catalog_is_migrated_on_open(tmp_path):
    import sqlite3

    from tests.conftest import UNDO_V5
    from unbake.workspace import Workspace
    from unbake.workspace.catalog import SCHEMA_VERSION

    ws = Workspace.create(tmp_path / "ws", dataset="digits")
    ws.close()
    db = sqlite3.connect(tmp_path / "ws" / "catalog.sqlite")
    db.executescript(
        ";".join(UNDO_V5) + ";"
        "DROP TABLE reference_models; DROP TABLE reference_members; "
        "ALTER TABLE requests DROP COLUMN audit; "
        "UPDATE meta SET value='2' WHERE key='schema_version';"
    )
    db.close()
    with Workspace.open(tmp_path / "ws") as ws:
        assert ws.catalog.meta("schema_version") == str(SCHEMA_VERSION)
        assert ws.catalog.query("SELECT COUNT(*) AS n FROM reference_models")[0]["n"] == 0
        assert ws.log() == []


def test_klom_and_challenge_closed_forms():
    from unbake.evaluation.klom import (
        bucket_scores,
        challenge_score,
        epsilon_from_thresholds,
        gaussian_kl,
        klom,
        margins,
    )

    assert gaussian_kl(0.0, 1.0, 0.0, 2.0) == pytest.approx(np.log(2) + 1 / 8 - 0.5)
    rng = np.random.default_rng(0)
    same = rng.normal(0, 1, (400, 3))
    assert klom(same[:200], same[200:]).max() < 0.05
    r = same[200:]
    assert klom(r + 3, r) == pytest.approx(9 / (2 * r.var(0, ddof=1)))  # equal σ: Δμ²/2σ²
    lp = np.log(np.array([[0.7, 0.2, 0.1]]))
    assert margins(lp, np.array([1]))[0] == pytest.approx(np.log(0.2 / 0.7))
    n = 8  # perfectly separated: FPR = FNR = 0, floored at 1/(N+1)
    eps = epsilon_from_thresholds(np.ones((n, 1)), np.zeros((n, 1)), delta=1e-5)
    assert eps[0] == pytest.approx(np.log((1 - 1e-5 - 1 / (n + 1)) * (n + 1)))
    assert bucket_scores(np.array([0.25, 0.75, 1.75])).tolist() == [1.0, 0.5, 0.125]
    assert challenge_score(1.0, 95.0, 100.0, 90.0, 90.0) == pytest.approx(0.95)


def test_ghost_check_reads_the_penultimate_layer(digits_small):
    from unbake.evaluation.ghost import nearest_neighbours, penultimate
    from unbake.models import ModelSpec
    from unbake.training import TrainConfig, fit

    cfg = TrainConfig.parse(epochs=1)
    X = digits_small.train.X[:5]
    mlp = fit(digits_small.train, n_classes=10, model=ModelSpec("mlp", {"hidden": [7]}), config=cfg)
    assert penultimate(mlp, X).shape == (5, 7)
    lin = fit(digits_small.train, n_classes=10, model="logreg", config=cfg)
    assert penultimate(lin, X).shape == (5, 64)
    nb = nearest_neighbours(penultimate(lin, X), penultimate(lin, digits_small.train.X), 3)
    assert nb.shape == (5, 3) and (nb[:, 0] == np.arange(5)).all()  # each row is its own nearest


def test_penultimate_features_come_a_batch_at_a_time(digits_small):
    # A whole training set in one forward pass holds every row's activations at once.
    from unbake.evaluation.ghost import penultimate
    from unbake.training import TrainConfig, fit

    model = fit(digits_small.train, n_classes=10, model="cnn", config=TrainConfig.parse(epochs=1))
    X = digits_small.train.X
    whole = penultimate(model, X, batch_size=len(X))
    seen = []
    model.module.features.register_forward_hook(lambda mod, args, out: seen.append(len(args[0])))
    batched = penultimate(model, X, batch_size=64)
    assert max(seen) == 64 and sum(seen) == len(X)
    np.testing.assert_allclose(batched, whole, rtol=1e-5, atol=1e-6)
    assert penultimate(model, X[:0]).shape == (0, whole.shape[1])


@pytest.mark.parametrize("n", [1, 7, 300])
def test_roc_auc_matches_scikit_learn_with_ties(n):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(n)
    pos, neg = rng.integers(0, 5, n).astype(float), rng.integers(0, 4, n + 3).astype(float)
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    assert roc_auc(pos, neg) == pytest.approx(roc_auc_score(labels, np.r_[pos, neg]), abs=1e-12)
