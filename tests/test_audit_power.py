"""The audit's power, in both directions: the original is flagged, a retrain passes.

Two settings: digits with a whole class forgotten, and a small overfit setting (300
digits, a wide MLP trained long) with a random 10% forgotten. Doing nothing (the
never-unlearned original) must be flagged distinguishable; retraining with another
seed must pass. The bands are justified in the tests' comments and in the report.
"""

import numpy as np
import pytest

from unbake.data import load_dataset
from unbake.evaluation.audit import MIN_REFERENCES, audit, concat_samples
from unbake.evaluation.bank import Recipe, train_bank
from unbake.exceptions import InvalidParameterError
from unbake.methods import METHODS
from unbake.models import ModelSpec
from unbake.training import TrainConfig

K = 8


def _setting(name):
    ds = load_dataset("digits")
    if name == "class":
        train = ds.train
        forget_ids = train.ids[train.y == 3]
        recipe = Recipe(ModelSpec("mlp", {"hidden": [32]}), TrainConfig.parse(epochs=8), 10)
    else:  # small and overfit: 300 samples, 100 % train accuracy, a clear train/test gap
        train = ds.train.subset(slice(0, 300))
        forget_ids = np.random.default_rng(0).choice(train.ids.astype(str), 30, replace=False)
        recipe = Recipe(
            ModelSpec("mlp", {"hidden": [256]}), TrainConfig.parse(epochs=60, batch_size=32), 10
        )
    forget, pool = train.split(forget_ids)
    bank = train_bank(pool, recipe, seeds=list(range(K)))
    return recipe, forget, pool, bank


@pytest.fixture(scope="module")
def class_setting():
    return _setting("class")


@pytest.fixture(scope="module")
def overfit_setting():
    return _setting("random")


def _audit(setting, method):
    recipe, forget, pool, bank = setting
    unlearner = None if method is None else METHODS.create(method)
    return audit(recipe=recipe, forget=forget, pool=pool, bank=bank, unlearner=unlearner)


@pytest.mark.slow
def test_class_wise_original_is_distinguishable(class_setting):
    rep = _audit(class_setting, None)
    print("class-wise original:", rep.stats)
    assert rep.verdict == "distinguishable"
    assert rep.stats["ulira_auc"] >= 0.95
    assert rep.stats["p_value"] < 0.05


@pytest.mark.slow
def test_class_wise_retrain_passes(class_setting):
    rep = _audit(class_setting, "retrain")
    print("class-wise retrain:", rep.stats)
    assert rep.verdict == "indistinguishable"
    # At K = 8 the permutation null puts 95% of |AUC − ½| below detectable_auc_gap
    # (≈ 0.2 here: one class's examples move together with their model). A retrain
    # must sit inside that, and inside 0.1 of ½ (measured on all of digits, 32 hidden
    # units, 8 epochs: 0.513; 0.445 with 64 units and 15 epochs).
    assert abs(rep.stats["ulira_auc"] - 0.5) < min(0.1, rep.stats["detectable_auc_gap"])


@pytest.mark.slow
def test_overfit_random_original_is_distinguishable(overfit_setting):
    rep = _audit(overfit_setting, None)
    print("overfit random original:", rep.stats)
    assert rep.verdict == "distinguishable"
    assert rep.stats["ulira_auc"] >= 0.75
    assert rep.stats["ulira_tpr_at_1pct_fpr"] > 0.01  # above chance at 1% FPR


@pytest.mark.slow
def test_overfit_random_retrain_passes(overfit_setting):
    rep = _audit(overfit_setting, "retrain")
    print("overfit random retrain:", rep.stats)
    assert rep.verdict == "indistinguishable"
    assert abs(rep.stats["ulira_auc"] - 0.5) < min(0.1, rep.stats["detectable_auc_gap"])


def test_bad_input_is_one_clear_error(digits_small):
    recipe = Recipe(ModelSpec("logreg"), TrainConfig.parse(epochs=1), 10)
    forget, pool = digits_small.train.split(digits_small.train.ids[:20])
    bank = train_bank(pool, recipe, seeds=[0, 1, 2])
    with pytest.raises(InvalidParameterError, match=f"at least {MIN_REFERENCES}"):
        audit(recipe=recipe, forget=forget, pool=pool, bank=bank)
    bank = train_bank(pool, recipe, seeds=list(range(MIN_REFERENCES)))
    with pytest.raises(InvalidParameterError, match="larger than the retained"):
        audit(recipe=recipe, forget=concat_samples(pool, forget), pool=forget, bank=bank)
    with pytest.raises(InvalidParameterError, match="trained on the forget set"):
        audit(recipe=recipe, forget=pool.subset(slice(0, 5)), pool=pool, bank=bank)


def test_pair_swaps_enumerate_or_sample():
    from unbake.evaluation.audit import pair_swaps

    every = pair_swaps(6, limit=64, seed=0)
    assert len({tuple(r) for r in every}) == 64
    sampled = pair_swaps(12, limit=50, seed=0)
    assert sampled.shape == (50, 12) and not sampled[0].any()
