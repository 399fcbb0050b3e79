"""Population membership-inference attacks, registered as metrics.

Each attack turns per-sample statistics (pure functions of a sample's class
log-probabilities and label, in :mod:`unbake.evaluation.metrics`) into a membership
score, higher meaning "more likely trained on". The threshold attacks report the ROC
AUC of forget (members) against test (non-members), in percent: 50 means the attack
cannot tell the forget set from unseen data.

- loss threshold (Yeom et al. 2018), the default ``mia``;
- confidence, entropy and modified entropy (Song & Mittal, "Systematic Evaluation of
  Privacy Risks of Machine Learning Models", USENIX Security 2021);
- SVC MIA-efficacy (Jia et al., "Model Sparsity Can Simplify Machine Unlearning",
  2023; Fan et al., SalUn, 2024): an SVM trained on retain (members) against test
  (non-members), applied to the forget set;
- a cross-validated logistic regression on per-sample loss, as in the NeurIPS 2023
  Machine Unlearning Challenge starter kit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np

from unbake.evaluation.base import EvalContext, Metric, Result, register_metric
from unbake.evaluation.metrics import (
    best_threshold,
    confidence,
    entropy,
    modified_entropy,
    nll,
    roc_auc,
)

__all__ = ["ATTACK_SCORES", "attack_features", "lr_attack_accuracy", "svc_mia_efficacy"]

#: Membership scores (higher: member) from ``(log_probs, y)``.
ATTACK_SCORES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "loss": lambda lp, y: -nll(lp, y),
    "confidence": confidence,
    "entropy": lambda lp, y: -entropy(lp),
    "modified_entropy": lambda lp, y: -modified_entropy(lp, y),
}


def attack_features(log_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(n, 3)``: confidence, entropy and modified entropy of each sample."""
    return np.column_stack(
        [confidence(log_probs, y), entropy(log_probs), modified_entropy(log_probs, y)]
    )


def _balanced(a: np.ndarray, b: np.ndarray, rng: np.random.Generator):
    n = min(len(a), len(b))
    return a[rng.choice(len(a), n, replace=False)], b[rng.choice(len(b), n, replace=False)]


def svc_mia_efficacy(
    members: np.ndarray, nonmembers: np.ndarray, targets: np.ndarray, *, seed: int = 0
) -> float:
    """Share (%) of ``targets`` an RBF SVC, fitted on members vs non-members, calls non-member.

    Rows are per-sample feature vectors; the classes are balanced by seeded subsampling.
    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    if len(targets) == 0 or len(members) == 0 or len(nonmembers) == 0:
        return float("nan")
    m, n = _balanced(members, nonmembers, np.random.default_rng(seed))
    clf = make_pipeline(StandardScaler(), SVC(C=3.0, gamma="auto", kernel="rbf"))
    clf.fit(np.r_[m, n], np.r_[np.ones(len(m)), np.zeros(len(n))])
    return float((clf.predict(targets) == 0).mean() * 100.0)


def lr_attack_accuracy(
    member_loss: np.ndarray, nonmember_loss: np.ndarray, *, splits: int = 10, seed: int = 0
) -> float:
    """Mean held-out accuracy (%) of a logistic regression telling members by their loss.

    The classes are balanced by seeded subsampling and scored with ``splits``
    stratified shuffle splits; NaN when either side has fewer than 5 samples.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score

    m, n = _balanced(member_loss, nonmember_loss, np.random.default_rng(seed))
    if len(m) < 5:
        return float("nan")
    X = np.r_[m, n].reshape(-1, 1)
    y = np.r_[np.ones(len(m)), np.zeros(len(n))]
    cv = StratifiedShuffleSplit(n_splits=splits, test_size=0.3, random_state=seed)
    return float(cross_val_score(LogisticRegression(), X, y, cv=cv).mean() * 100.0)


class _ThresholdAttack(Metric):
    """ROC AUC (%) of one membership score, forget (members) against test."""

    score: ClassVar[str]
    order = 10
    needs = frozenset({"class_probs"})

    def _auc(self, ctx: EvalContext) -> float:
        fn = ATTACK_SCORES[self.score]
        f = fn(ctx.log_probs("forget"), ctx.forget.y)
        t = fn(ctx.log_probs("test"), ctx.test.y)
        return roc_auc(f, t) * 100.0

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        return {self.results[0].key: self._auc(ctx)}


@register_metric
class LossAttack(_ThresholdAttack):
    """Loss-threshold MIA AUC, with the attack's own strength on retain vs test."""

    name = "mia_loss"
    score = "loss"
    needs = frozenset()  # the per-sample loss: defined for classes and for text answers
    results = (
        Result("mia", "MIA", "loss-threshold AUC, forget vs test (%)", gap=True, column=True),
        Result(
            "attack_strength",
            "attack strength",
            "loss-threshold balanced accuracy, retain vs test (%)",
        ),
    )

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        r, t = -ctx.loss("retain"), -ctx.loss("test")
        strength = best_threshold(r, t)[1] * 100.0 if len(r) and len(t) else float("nan")
        # Members have low loss: the score is -loss (the "loss" entry of ATTACK_SCORES).
        return {"mia": roc_auc(-ctx.loss("forget"), t) * 100.0, "attack_strength": strength}


def _register_threshold_attack(name: str, score: str, key: str, label: str, order: int) -> None:
    """Register the AUC of one more membership score of :data:`ATTACK_SCORES` as a metric."""
    doc = f"{score.replace('_', ' ').capitalize()} AUC, forget vs test (Song & Mittal 2021)."
    result = Result(key, label, f"{score.replace('_', '-')} AUC, forget vs test (%)")
    attrs = {"name": name, "score": score, "order": order, "results": (result,), "__doc__": doc}
    register_metric(type(f"{score.title().replace('_', '')}Attack", (_ThresholdAttack,), attrs))


_register_threshold_attack("mia_confidence", "confidence", "mia_confidence", "MIA conf.", 11)
_register_threshold_attack("mia_entropy", "entropy", "mia_entropy", "MIA entr.", 12)
_register_threshold_attack(
    "mia_modified_entropy", "modified_entropy", "mia_mentropy", "MIA m-entr.", 13
)


@register_metric
class SVCEfficacy(Metric):
    """SalUn's MIA-efficacy: forget samples an SVC (retain vs test) calls non-members."""

    name = "mia_efficacy"
    order = 20
    needs = frozenset({"class_probs"})
    results = (Result("mia_efficacy", "MIA-efficacy", "forget called non-member by the SVC (%)"),)

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        feats = {s: attack_features(ctx.log_probs(s), ctx.samples(s).y) for s in NAMES}
        value = svc_mia_efficacy(feats["retain"], feats["test"], feats["forget"], seed=ctx.seed)
        return {"mia_efficacy": value}


@register_metric
class LogisticLossAttack(Metric):
    """Cross-validated logistic regression on loss, forget vs test (challenge starter kit)."""

    name = "mia_lr"
    order = 21
    results = (Result("mia_lr", "MIA LR", "logistic-regression accuracy on loss (%)"),)

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        return {"mia_lr": lr_attack_accuracy(ctx.loss("forget"), ctx.loss("test"), seed=ctx.seed)}


NAMES = ("forget", "retain", "test")
