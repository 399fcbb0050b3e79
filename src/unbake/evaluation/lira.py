"""Per-example likelihood-ratio tests: LiRA and U-LiRA, as pure functions of statistics.

LiRA (Carlini et al., "Membership Inference Attacks From First Principles", IEEE S&P
2022) fits, for every example, a Gaussian to its logit-scaled confidence under the
reference models that trained on it (IN) and another under those that did not (OUT),
and scores a target model by the likelihood ratio; the *offline* variant uses the OUT
Gaussian alone (a one-sided test). U-LiRA (Hayes et al., "Inexact Unlearning Needs More
Careful Evaluations to Avoid a False Sense of Privacy", 2024) asks the same question
of unlearning: the two populations are models *unlearned* by the method under audit
and models *retrained* without the example.

Every function takes a ``(models, examples)`` matrix of statistics and boolean masks
saying which cells belong to which population, so one implementation serves both.
With few models per example the per-example variance is unreliable, so by default the
two populations' variances are pooled over examples (Carlini et al.'s "fixed variance").
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = [
    "cross_fit_scores",
    "fit_gaussians",
    "fold_of_rows",
    "likelihood_ratio",
    "offline_score",
]

_EPS = 1e-6


def fit_gaussians(
    phi: np.ndarray, mask: np.ndarray, *, pooled: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean and standard deviation of ``phi`` over the rows where ``mask``.

    ``phi`` and ``mask`` are ``(models, examples)``. Examples with no row in the mask
    get NaN. ``pooled`` replaces each example's standard deviation with the pooled
    within-example standard deviation of all examples.

    >>> mu, sd = fit_gaussians(np.array([[0.0, 1.0], [2.0, 3.0]]), np.ones((2, 2), bool))
    >>> mu.tolist(), sd.tolist()
    ([1.0, 2.0], [1.0, 1.0])
    """
    phi = np.asarray(phi, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    count = mask.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(mask, phi, 0.0).sum(0) / count
        resid = np.where(mask, phi - mu, 0.0) ** 2
        if pooled:
            sd = np.full(phi.shape[1], np.sqrt(resid.sum() / max(count.sum(), 1)))
        else:
            sd = np.sqrt(resid.sum(0) / count)
    return mu, np.maximum(sd, _EPS)


def likelihood_ratio(x, mu_pos, sd_pos, mu_neg, sd_neg) -> np.ndarray:
    """``log N(x; μ₊, σ₊) − log N(x; μ₋, σ₋)``: positive when ``x`` looks like the ₊ population.

    >>> float(likelihood_ratio(0.0, 0.0, 1.0, 0.0, 1.0))
    0.0
    """
    return stats.norm.logpdf(x, mu_pos, sd_pos) - stats.norm.logpdf(x, mu_neg, sd_neg)


def offline_score(x, mu_neg, sd_neg) -> np.ndarray:
    """Offline LiRA: ``log P(X ≤ x)`` under the negative (OUT) Gaussian; high means member."""
    return stats.norm.logcdf(x, mu_neg, sd_neg)


def fold_of_rows(labels: np.ndarray, folds: int) -> np.ndarray:
    """Fold index of each row, dealt round-robin within each label so folds stay balanced.

    >>> fold_of_rows(np.array([True, True, False, False]), 2).tolist()
    [0, 1, 0, 1]
    """
    labels = np.asarray(labels)
    out = np.empty(len(labels), dtype=np.int64)
    for value in np.unique(labels):
        rows = np.flatnonzero(labels == value)
        out[rows] = np.arange(len(rows)) % folds
    return out


def cross_fit_scores(
    phi: np.ndarray,
    positive: np.ndarray,
    negative: np.ndarray,
    fold: np.ndarray,
    *,
    online: bool = True,
    pooled: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Score the cells of each fold of rows against Gaussians fitted on the other folds.

    Rows are models, columns examples. The Gaussians of each example are fitted on
    the ``positive`` and ``negative`` cells of the rows outside the fold, and the fold's
    cells are scored (likelihood ratio online, the OUT tail offline). Disjoint folds
    matter: leaving one row out biases its own population's mean away from it, which
    drags the AUC below ½ even when the populations are identical. Returns
    ``(scores, labels)`` for every scored cell in ``positive | negative``.
    """
    phi = np.asarray(phi, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    negative = np.asarray(negative, dtype=bool)
    scores, labels = [], []
    for f in np.unique(fold):
        held, fit = fold == f, fold != f
        mu_n, sd_n = fit_gaussians(phi[fit], negative[fit], pooled=pooled)
        if online:
            mu_p, sd_p = fit_gaussians(phi[fit], positive[fit], pooled=pooled)
            s = likelihood_ratio(phi[held], mu_p, sd_p, mu_n, sd_n)
        else:
            s = offline_score(phi[held], mu_n, sd_n)
        cell = (positive[held] | negative[held]) & np.isfinite(s)
        scores.append(s[cell])
        labels.append(positive[held][cell])
    return np.concatenate(scores), np.concatenate(labels)
