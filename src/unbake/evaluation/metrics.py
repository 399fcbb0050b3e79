"""Pure statistics: accuracy, ROC AUC and the balanced-accuracy threshold attack.

These take arrays and return numbers; they hold no state and are tested against
closed-form answers.
"""

from __future__ import annotations

import numpy as np

__all__ = ["best_threshold", "roc_auc"]


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score(pos) > score(neg)) + ½ P(tie): the Mann–Whitney form of the ROC AUC.

    >>> roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0]))
    1.0
    >>> roc_auc(np.array([1.0]), np.array([1.0]))
    0.5
    """
    pos = np.asarray(positive, dtype=np.float64)
    neg = np.asarray(negative, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    scores = np.concatenate([pos, neg])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    rank_sum = ranks[: len(pos)].sum()
    return float((rank_sum - len(pos) * (len(pos) + 1) / 2.0) / (len(pos) * len(neg)))


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
