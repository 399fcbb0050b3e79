"""KLoM and the NeurIPS 2023 challenge score: pure functions of per-model statistics.

KLoM (Georgiev et al., "Attribute-to-Delete: Machine Unlearning via Datamodel
Matching", ICLR 2025) measures, for each example, the KL divergence between the
distribution of its margin under N unlearned models and under N retrained ones. Here
each distribution is summarised by a Gaussian, so the divergence has a closed form.

The NeurIPS 2023 Machine Unlearning Challenge scored each forget example by the ε of
the best threshold test telling unlearned from retrained models at δ, bucketed, and
multiplied the forget quality F by the utility ratios RA_u/RA_r and TA_u/TA_r. The
challenge used N = 512 models of each kind; an estimate from a handful is far coarser
(with N models per side the largest ε a threshold test can show is about log N).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "bucket_scores",
    "challenge_score",
    "epsilon_from_thresholds",
    "gaussian_kl",
    "klom",
    "margins",
]

#: The challenge's bucket width in ε.
BUCKET = 0.5


def margins(log_probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``log p_y − max_{k≠y} log p_k``: positive when the true class wins.

    >>> margins(np.log(np.array([[0.5, 0.25, 0.25]])), np.array([0])).round(4).tolist()
    [0.6931]
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    onehot = np.eye(lp.shape[1], dtype=bool)[y]
    return lp[onehot] - np.where(onehot, -np.inf, lp).max(axis=1)


def gaussian_kl(mu_p, sd_p, mu_q, sd_q) -> np.ndarray:
    """KL(N(μ_p, σ_p²) ‖ N(μ_q, σ_q²)) in nats.

    >>> float(gaussian_kl(0.0, 1.0, 1.0, 1.0))
    0.5
    """
    sd_p, sd_q = np.asarray(sd_p, float), np.asarray(sd_q, float)
    return np.log(sd_q / sd_p) + (sd_p**2 + (np.asarray(mu_p) - mu_q) ** 2) / (2 * sd_q**2) - 0.5


def klom(unlearned: np.ndarray, retrained: np.ndarray, *, floor: float = 1e-3) -> np.ndarray:
    """Per-example KL(unlearned ‖ retrained) of ``(N, n)`` margins, via Gaussians.

    ``floor`` bounds the standard deviations away from zero (identical models).
    """
    u, r = np.asarray(unlearned, float), np.asarray(retrained, float)
    sd_u = np.maximum(u.std(0, ddof=1), floor)
    sd_r = np.maximum(r.std(0, ddof=1), floor)
    return gaussian_kl(u.mean(0), sd_u, r.mean(0), sd_r)


def epsilon_from_thresholds(
    unlearned: np.ndarray, retrained: np.ndarray, *, delta: float = 1e-5
) -> np.ndarray:
    """Per-example ε of the best threshold test between ``(N, n)`` statistics.

    For every threshold (each observed value, in both directions) the test's false
    positive and false negative rates bound ε ≥ log((1 − δ − FPR) / FNR) and
    ≥ log((1 − δ − FNR) / FPR); the largest finite bound is kept. Rates of zero are
    replaced by ``1 / (N + 1)``, so ε stays finite and cannot exceed what N supports.

    >>> epsilon_from_thresholds(np.array([[1.0], [1.0]]), np.array([[1.0], [1.0]])).tolist()
    [0.0]
    """
    u, r = np.asarray(unlearned, float), np.asarray(retrained, float)
    n_u, n_r = len(u), len(r)
    out = np.zeros(u.shape[1])
    for j in range(u.shape[1]):
        t = np.unique(np.r_[u[:, j], r[:, j]])
        # test "unlearned if value > t": FPR over retrained, FNR over unlearned
        fpr = (r[:, j][None, :] > t[:, None]).mean(1)
        fnr = (u[:, j][None, :] <= t[:, None]).mean(1)
        best = 0.0
        for a, b in ((fpr, fnr), (1 - fpr, 1 - fnr)):  # both directions
            a = np.maximum(a, 1 / (n_r + 1))
            b = np.maximum(b, 1 / (n_u + 1))
            with np.errstate(divide="ignore", invalid="ignore"):
                e1 = np.log(np.maximum(1 - delta - a, 0) / b)
                e2 = np.log(np.maximum(1 - delta - b, 0) / a)
            vals = np.r_[e1, e2]
            vals = vals[np.isfinite(vals)]
            if len(vals):
                best = max(best, float(vals.max()))
        out[j] = best
    return out


def bucket_scores(epsilon: np.ndarray) -> np.ndarray:
    """The challenge's per-example score ``2^{−n}``, n the ε bucket of width ½.

    >>> bucket_scores(np.array([0.0, 0.49, 0.5, 1.2])).tolist()
    [1.0, 1.0, 0.5, 0.25]
    """
    return 2.0 ** -np.floor(np.asarray(epsilon, float) / BUCKET)


def challenge_score(forget_quality: float, ra_u: float, ra_r: float, ta_u: float, ta_r: float):
    """``F × (RA_u / RA_r) × (TA_u / TA_r)``.

    >>> challenge_score(0.5, 90.0, 100.0, 80.0, 80.0)
    0.45
    """
    return float(forget_quality * (ra_u / ra_r) * (ta_u / ta_r))
