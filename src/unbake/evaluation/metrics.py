"""Pure statistics: per-sample scores, ROC summaries and the power of a two-sample test.

These take arrays and return numbers; they hold no state and are tested against
closed-form answers. ROC quantities come from scikit-learn, distributions from SciPy.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import roc_curve

__all__ = [
    "best_threshold",
    "confidence",
    "entropy",
    "logit_confidence",
    "minimum_detectable_auc",
    "modified_entropy",
    "nll",
    "roc_auc",
    "roc_summary",
    "tpr_at_fpr",
]


def _labelled(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    return np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC of scores of positives against negatives (ties count ½); NaN if one is empty.

    >>> roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0]))
    1.0
    >>> roc_auc(np.array([1.0]), np.array([1.0]))
    0.5
    """
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    # The AUC is the Mann–Whitney U of positives over negatives per pair; SciPy's U is
    # a few times cheaper than roc_auc_score, which the audit's permutation test calls
    # hundreds of times (the two agree to rounding: tests/test_audit_stats.py).
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    u = stats.mannwhitneyu(pos, neg, method="asymptotic", use_continuity=False).statistic
    return float(u / (len(pos) * len(neg)))


def tpr_at_fpr(positive: np.ndarray, negative: np.ndarray, fpr: float) -> float:
    """The highest true-positive rate whose false-positive rate is at most ``fpr``.

    With fewer than ``1/fpr`` negatives the only such threshold may flag nothing, so
    the answer is then an honest 0 unless positives outscore every negative.

    >>> tpr_at_fpr(np.array([3.0, 0.5]), np.array([1.0, 0.0]), 0.0)
    0.5
    """
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    labels, scores = _labelled(positive, negative)
    fprs, tprs, _ = roc_curve(labels, scores)
    return float(tprs[fprs <= fpr + 1e-12].max())


def roc_summary(positive: np.ndarray, negative: np.ndarray) -> dict[str, float]:
    """AUC, best balanced accuracy and TPR at 1% and 0.1% FPR, as fractions."""
    return {
        "auc": roc_auc(positive, negative),
        "accuracy": best_threshold(positive, negative)[1] if len(positive) else float("nan"),
        "tpr_at_1pct_fpr": tpr_at_fpr(positive, negative, 0.01),
        "tpr_at_0.1pct_fpr": tpr_at_fpr(positive, negative, 0.001),
    }


def best_threshold(positive: np.ndarray, negative: np.ndarray) -> tuple[float, float]:
    """The threshold t (predict positive when score > t) maximising balanced accuracy.

    Returns ``(t, balanced_accuracy)``.

    >>> best_threshold(np.array([2.0, 3.0]), np.array([0.0, 1.0]))
    (1.0, 1.0)
    """
    pos = np.sort(np.asarray(positive, dtype=np.float64))
    neg = np.sort(np.asarray(negative, dtype=np.float64))
    candidates = np.unique(np.concatenate([[-np.inf], pos, neg]))
    tpr = 1.0 - np.searchsorted(pos, candidates, side="right") / len(pos)
    tnr = np.searchsorted(neg, candidates, side="right") / len(neg)
    bal = (tpr + tnr) / 2.0
    i = int(bal.argmax())
    return float(candidates[i]), float(bal[i])


def minimum_detectable_auc(
    n_positive: int, n_negative: int, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """The smallest |AUC − ½| a two-sided test at level ``alpha`` detects with ``power``.

    Under the null the Mann–Whitney AUC has variance ``(n₊ + n₋ + 1) / (12 n₊ n₋)``;
    the detectable shift is ``(z₁₋α/₂ + z_power)`` standard errors.

    >>> round(minimum_detectable_auc(100, 100), 4)
    0.1147
    """
    if n_positive < 1 or n_negative < 1:
        return float("nan")
    se = np.sqrt((n_positive + n_negative + 1) / (12.0 * n_positive * n_negative))
    return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * se)


# --- per-sample statistics from class log-probabilities ---------------------------------


def _true(log_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.take_along_axis(log_probs, y[:, None].astype(np.int64), axis=1)[:, 0]


def nll(log_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cross-entropy loss of each sample: ``−log p_y``."""
    return -_true(log_probs, y)


def confidence(log_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The probability of the true class, ``p_y`` (Song & Mittal 2021)."""
    return np.exp(_true(log_probs, y))


def entropy(log_probs: np.ndarray) -> np.ndarray:
    """Shannon entropy of each predicted distribution, in nats.

    >>> float(entropy(np.log(np.array([[0.5, 0.5]])))[0]) == float(np.log(2))
    True
    """
    p = np.exp(log_probs)
    return -(p * np.where(p > 0, log_probs, 0.0)).sum(axis=1)


def modified_entropy(log_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Song & Mittal's modified entropy: ``−(1−p_y) log p_y − Σ_{i≠y} p_i log(1−p_i)``.

    Low for confidently correct samples, high for confidently wrong ones.
    """
    p = np.exp(log_probs)
    log_1mp = np.log1p(-np.clip(p, 0.0, 1.0 - 1e-12))
    onehot = np.eye(log_probs.shape[1], dtype=bool)[y]
    true_term = -(1.0 - p[onehot]) * log_probs[onehot]
    other = -np.where(onehot, 0.0, p * log_1mp).sum(axis=1)
    return true_term + other


def logit_confidence(log_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LiRA's logit-scaled confidence ``log p_y − log(1 − p_y)``, computed stably.

    ``log(1 − p_y)`` is the log-sum-exp of the other classes' log-probabilities, so
    the statistic stays finite even when ``p_y`` rounds to 1.

    >>> phi = logit_confidence(np.log(np.array([[0.75, 0.25]])), np.array([0]))
    >>> bool(np.isclose(phi[0], np.log(3.0)))
    True
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    onehot = np.eye(lp.shape[1], dtype=bool)[y]
    others = np.where(onehot, -np.inf, lp)
    return lp[onehot] - np.logaddexp.reduce(others, axis=1)
