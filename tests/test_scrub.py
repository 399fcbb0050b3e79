"""SCRUB forgets a class on the demo's setting with its defaults (issue 7, item 3)."""

from unbake.data import load_dataset
from unbake.evaluation import evaluate
from unbake.evaluation.compare import class_forget_ids
from unbake.methods import METHODS, UnlearnTask
from unbake.training import TrainConfig, fit


def test_scrub_forgets_the_demos_class_and_keeps_the_rest():
    # The demo's class-wise request: digits, the mlp at 20 epochs, forget class 0, seed 0.
    ds = load_dataset("digits")
    original = fit(ds.train, n_classes=ds.n_classes, config=TrainConfig.parse(epochs=20), seed=0)
    forget, retain = ds.train.split(class_forget_ids(ds, 0))
    before = evaluate(original, forget, retain, ds.val)
    after = evaluate(
        METHODS.create("scrub").unlearn(UnlearnTask(original, forget, retain)).model,
        forget,
        retain,
        ds.val,
    )
    assert before.fa > 95  # the original knows the class …
    assert after.fa < 5 and after.mia < 0.5 * before.mia  # … SCRUB's student does not,
    assert after.ra > before.ra - 2  # and keeps the rest
