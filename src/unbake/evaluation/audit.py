"""The audit: is a method's output distinguishable from retraining, and how hard did we look?

For a forget set ``F`` and a bank of K reference models (each trained on a random half
``H_k`` of the retained data, so none ever saw ``F``):

1. *Retrained shadows*: the bank models themselves (trained without ``F``).
2. *Unlearned shadows*: for each k, a model trained on ``H_k ∪ F`` (IN for every forget
   example), then unlearned by the method under audit, forgetting ``F`` and keeping
   ``H_k``. Auditing ``method=None`` audits doing nothing: the never-unlearned original.
3. *U-LiRA* (Hayes et al. 2024): each shadow in turn is the target; per forget example,
   Gaussians of the logit-scaled confidence are fitted on the other unlearned and
   retrained shadows, and the target scored by their likelihood ratio. The ROC of
   those scores (unlearned positive) gives AUC, accuracy and TPR at 1% / 0.1% FPR.
4. *Significance and power*: a permutation test over shadow pairs (swap which of
   unlearned_k and retrained_k, both built on ``H_k``, is called unlearned) gives the
   p-value, and its null distribution the smallest |AUC − ½| this K could have
   flagged. Scores of one model are correlated across examples, which is why the
   permutation is over models, not examples.

The verdict is "distinguishable" when p < α, else "indistinguishable from retraining
within this test's power", stated with the detectable gap so a weak test cannot pass
as a strong one. LiRA (Carlini et al. 2022) on the bank itself, leaving each reference
out in turn, shows what the references can see at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unbake._threads import pin_threads
from unbake.backends import create_backend
from unbake.data import Samples
from unbake.evaluation.bank import FitJob, Recipe, ReferenceBank, fit_many, model_statistics
from unbake.evaluation.ghost import ghost_gap, nearest_neighbours, penultimate
from unbake.evaluation.klom import (
    bucket_scores,
    challenge_score,
    epsilon_from_thresholds,
    klom,
    margins,
)
from unbake.evaluation.lira import (
    cross_fit_scores,
    fit_gaussians,
    likelihood_ratio,
)
from unbake.evaluation.metrics import roc_auc, roc_summary
from unbake.exceptions import InvalidParameterError
from unbake.methods import UnlearnTask
from unbake.training import TrainedModel

__all__ = [
    "MIN_REFERENCES",
    "AuditReport",
    "audit",
    "bank_halves",
    "check_references",
    "concat_samples",
    "pair_swaps",
    "permutation_test",
    "train_in_shadows",
    "unlearn_many",
]

#: Fewer models cannot reach p < 0.05 reliably. The permutation test swaps labels within
#: the K (unlearned, retrained) shadow pairs, so it has 2^K labelings; a labeling and its
#: mirror are always equally extreme, and with perfectly separated populations swapping
#: a single pair can be too. Measured on class-wise digits with AUC 1.000: p = 0.0625 at
#: K = 6 (not flagged), p = 0.016 at K = 8.
MIN_REFERENCES = 8
#: Seed offsets, so the IN shadows and the method's runs never reuse a reference's seed.
IN_SEED_OFFSET = 500_009
UNLEARN_SEED_OFFSET = 1_000_003
#: Shadows are split in two: Gaussians fitted on one half score the other.
FOLDS = 2
#: Training neighbours per forget sample in the ghost check.
GHOST_K = 5
#: KLoM on retained data looks at this many samples.
KLOM_SAMPLE = 500
#: LiRA on the bank scores at most this many retained samples per reference.
LIRA_SAMPLE = 1000


@dataclass
class AuditReport:
    """The verdict, its statement and every statistic behind it (named, JSON-ready)."""

    verdict: str
    statement: str
    stats: dict[str, float]
    references: list[str] = field(default_factory=list)
    method: str = "original"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "statement": self.statement,
            "method": self.method,
            "references": list(self.references),
            "stats": {
                k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.stats.items()
            },
        }


def check_references(k: object) -> None:
    """Raise unless ``k`` reference models are enough for a meaningful test."""
    if not isinstance(k, int) or k < MIN_REFERENCES:
        raise InvalidParameterError(
            f"An audit needs at least {MIN_REFERENCES} reference models, got {k}: with fewer, "
            "the permutation test over shadow pairs cannot reach p < 0.05; pass --references 8."
        )


def concat_samples(a: Samples, b: Samples) -> Samples:
    """Rows of ``a`` then rows of ``b``."""
    return Samples(
        np.concatenate([a.X, b.X]),
        np.concatenate([a.y, b.y]),
        np.concatenate([a.ids, b.ids]),
        np.concatenate([a.subjects, b.subjects]),
    )


def ulira_scores(
    phi: np.ndarray, unlearned_rows: np.ndarray, fold: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cross-fitted U-LiRA scores of every (shadow, forget example) cell; label 1: unlearned."""
    pos = np.broadcast_to(unlearned_rows[:, None], phi.shape)
    return cross_fit_scores(phi, pos, ~pos, fold)


def _ulira_auc(phi: np.ndarray, unlearned_rows: np.ndarray, fold: np.ndarray) -> float:
    scores, labels = ulira_scores(phi, unlearned_rows, fold)
    return roc_auc(scores[labels], scores[~labels])


def pair_swaps(k: int, *, limit: int, seed: int) -> np.ndarray:
    """``(m, k)`` booleans: which of ``k`` pairs swap labels. All ``2^k`` when at most ``limit``.

    >>> pair_swaps(2, limit=8, seed=0).astype(int).tolist()
    [[0, 0], [1, 0], [0, 1], [1, 1]]
    """
    if 2**k <= limit:
        return (np.arange(2**k)[:, None] >> np.arange(k)) & 1 == 1
    rng = np.random.default_rng(seed)
    return np.vstack([np.zeros((1, k), bool), rng.random((limit - 1, k)) < 0.5])


def permutation_test(
    phi_unlearned: np.ndarray, phi_retrained: np.ndarray, *, permutations: int, seed: int
) -> tuple[float, float, float]:
    """``(auc, p_value, critical_gap)`` of U-LiRA, with shadow *pairs* as the unit.

    Row ``k`` of both matrices shares its training half, so under the null (the method
    is distributed as retraining) the labels of each pair are exchangeable: the null
    distribution swaps them, exhaustively when ``2^K ≤ permutations``. The two rows of
    a pair always share a fold. ``critical_gap`` is the 95th percentile of |AUC − ½|
    under the null: the smallest gap the test flags at α = 0.05.
    """
    k = len(phi_unlearned)
    fold = np.tile(np.arange(k) % FOLDS, 2)
    null = []
    for swap in pair_swaps(k, limit=permutations, seed=seed):
        u = np.where(swap[:, None], phi_retrained, phi_unlearned)
        r = np.where(swap[:, None], phi_unlearned, phi_retrained)
        rows = np.r_[np.ones(k, bool), np.zeros(k, bool)]
        null.append(_ulira_auc(np.concatenate([u, r]), rows, fold))
    auc, gaps = null[0], np.abs(np.array(null) - 0.5)
    p = float(np.mean(gaps >= gaps[0] - 1e-12))
    return auc, p, float(np.quantile(gaps, 0.95))


def bank_halves(bank: ReferenceBank, pool: Samples) -> list[Samples]:
    """The half of ``pool`` each reference of ``bank`` trained on, in bank order."""
    members = bank.members(pool.ids)
    return [pool.subset(members[k]) for k in range(len(bank))]


def train_in_shadows(
    recipe: Recipe, forget: Samples, pool: Samples, bank: ReferenceBank, **execution: Any
) -> list[TrainedModel]:
    """One IN shadow per reference: trained on its half of ``pool`` plus ``forget``.

    ``execution`` (``backend``, ``workers``) goes to :func:`~unbake.evaluation.bank.fit_many`.
    """
    jobs = [
        FitJob(concat_samples(h, forget), recipe, s + IN_SEED_OFFSET)
        for h, s in zip(bank_halves(bank, pool), bank.seeds, strict=True)
    ]
    return fit_many(jobs, **execution)


@dataclass(frozen=True)
class UnlearnJob:
    """One run of the method under audit on one IN shadow, picklable for a pool or Ray."""

    unlearner: Any
    model: TrainedModel
    forget: Samples
    retain: Samples
    seed: int
    threads: int | None = None


def _run_unlearn(job: UnlearnJob) -> TrainedModel:
    task = UnlearnTask(job.model, job.forget, job.retain, device="cpu")
    with pin_threads(job.threads) if job.threads else contextlib.nullcontext():
        return job.unlearner.unlearn(task, seed=job.seed).model


def unlearn_many(
    jobs: list[UnlearnJob], *, backend: str = "local", workers: int = 1
) -> list[TrainedModel]:
    """Run every job on ``backend``; parallel jobs run single-threaded each (as
    :func:`~unbake.evaluation.bank.fit_many` trains)."""
    if workers > 1:
        jobs = [dataclasses.replace(j, threads=1) for j in jobs]
    return create_backend(backend, workers=workers).map(_run_unlearn, jobs)


def _lira_on_bank(bank: ReferenceBank, pool: Samples, seed: int) -> dict[str, float]:
    rows = np.random.default_rng(seed).permutation(len(pool))[:LIRA_SAMPLE]
    sub = pool.subset(np.sort(rows))
    phi = bank.statistics(sub)
    member = bank.members(sub.ids)
    fold = np.arange(len(bank)) % FOLDS
    out: dict[str, float] = {}
    for name, online in (("lira_online", True), ("lira_offline", False)):
        scores, labels = cross_fit_scores(phi, member, ~member, fold, online=online)
        for k, v in roc_summary(scores[labels], scores[~labels]).items():
            out[f"{name}_{k}"] = v
    return out


def _log_probs(models: list[TrainedModel], samples: Samples) -> np.ndarray:
    X = samples.X
    return np.stack([m.log_proba(X).double().numpy() for m in models])


def _mean_accuracy(models: list[TrainedModel], halves: list[Samples]) -> float:
    accs = [
        (_log_probs([m], h)[0].argmax(1) == h.y).mean() * 100
        for m, h in zip(models, halves, strict=True)
    ]
    return float(np.mean(accs))


def _ghost(in_models, unlearned, retrained, forget, halves) -> dict[str, float]:
    """Ghost check per shadow pair: neighbours of the forget set in the IN model's features."""
    gaps = []
    for m_in, m_u, m_r, half in zip(in_models, unlearned, retrained, halves, strict=True):
        nb = nearest_neighbours(penultimate(m_in, forget.X), penultimate(m_in, half.X), GHOST_K)
        near = half.subset(np.unique(nb.ravel()))
        phi = model_statistics([m_u, m_r], near)
        gaps.append(ghost_gap(phi[0], phi[1]))
    return {"ghost_gap_mean": float(np.mean(gaps)), "ghost_gap_std": float(np.std(gaps, ddof=1))}


def _klom_and_challenge(unlearned, retrained, forget, pool, halves, test, seed) -> dict[str, float]:
    """KLoM (median, p95) per split and the NeurIPS 2023 challenge score."""
    rows = np.random.default_rng(seed).permutation(len(pool))[:KLOM_SAMPLE]
    splits = {"forget": forget, "retain": pool.subset(np.sort(rows))}
    if test is not None:
        splits["test"] = test
    out: dict[str, float] = {}
    for name, samples in splits.items():
        m_u = np.stack([margins(lp, samples.y) for lp in _log_probs(unlearned, samples)])
        m_r = np.stack([margins(lp, samples.y) for lp in _log_probs(retrained, samples)])
        kl = klom(m_u, m_r)
        out[f"klom_{name}_median"] = float(np.median(kl))
        out[f"klom_{name}_p95"] = float(np.quantile(kl, 0.95))
    eps = epsilon_from_thresholds(
        model_statistics(unlearned, forget), model_statistics(retrained, forget), delta=1e-5
    )
    out["challenge_epsilon_median"] = float(np.median(eps))
    out["challenge_forget_quality"] = float(bucket_scores(eps).mean())
    ra_u, ra_r = _mean_accuracy(unlearned, halves), _mean_accuracy(retrained, halves)
    ta_u = ta_r = 1.0
    if test is not None:
        ta_u = _mean_accuracy(unlearned, [test] * len(unlearned))
        ta_r = _mean_accuracy(retrained, [test] * len(retrained))
    out["challenge_score"] = challenge_score(
        out["challenge_forget_quality"], ra_u, ra_r, ta_u, ta_r
    )
    out["challenge_models_per_side"] = len(unlearned)
    return out


def audit(
    *,
    recipe: Recipe,
    forget: Samples,
    pool: Samples,
    bank: ReferenceBank,
    unlearner=None,
    target: TrainedModel | None = None,
    test: Samples | None = None,
    seed: int = 0,
    alpha: float = 0.05,
    permutations: int = 256,
    backend: str = "local",
    workers: int = 1,
    in_models: list[TrainedModel] | None = None,
) -> AuditReport:
    """Audit ``unlearner`` (``None``: do nothing) on ``forget`` against ``bank``.

    ``pool`` is the retained data the bank's halves were drawn from; ``target``, if
    given, is the deployed model, scored against the shadows' Gaussians; ``test``, if
    given, adds KLoM on held-out data and the utility ratios of the challenge score.
    ``in_models``, if given, are the IN shadows of :func:`train_in_shadows` for this
    forget set and bank: they do not depend on the method, so audits of several methods
    of one request can share them.
    """
    K = len(bank)
    check_references(K)
    if len(forget) == 0:
        raise InvalidParameterError("The forget set is empty; audit a request that forgot samples.")
    if len(forget) >= len(pool) + len(forget) or len(forget) > len(pool):
        raise InvalidParameterError(
            f"The forget set ({len(forget)} samples) is larger than the retained training set "
            f"({len(pool)}); an audit needs retained data to train references on."
        )
    if bank.members(forget.ids).any():
        raise InvalidParameterError(
            "Some reference models trained on the forget set; rebuild the bank from retained data."
        )
    if tuple(forget.input_shape) != tuple(pool.input_shape):
        raise InvalidParameterError(
            f"Forget samples have shape {forget.input_shape} but the training data "
            f"{pool.input_shape}; audit samples of the model's own dataset."
        )
    halves = bank_halves(bank, pool)
    if in_models is None:
        in_models = train_in_shadows(
            recipe=recipe, forget=forget, pool=pool, bank=bank, backend=backend, workers=workers
        )
    elif len(in_models) != K:
        raise InvalidParameterError(
            f"Got {len(in_models)} IN shadows for a bank of {K} references; pass one per "
            "reference (train_in_shadows) or none."
        )
    if unlearner is None:
        unlearned = in_models
    else:
        jobs = [
            UnlearnJob(unlearner, m, forget, h, s + UNLEARN_SEED_OFFSET)
            for m, h, s in zip(in_models, halves, bank.seeds, strict=True)
        ]
        unlearned = unlearn_many(jobs, backend=backend, workers=workers)
    phi_u = model_statistics(unlearned, forget)
    phi_r = bank.statistics(forget)
    rows = np.r_[np.ones(K, dtype=bool), np.zeros(K, dtype=bool)]
    scores, labels = ulira_scores(
        np.concatenate([phi_u, phi_r]), rows, np.tile(np.arange(K) % FOLDS, 2)
    )
    summary = roc_summary(scores[labels], scores[~labels])
    auc, p, gap = permutation_test(phi_u, phi_r, permutations=permutations, seed=seed)
    st: dict[str, Any] = {
        "references": K,
        "n_forget": len(forget),
        "n_retained": len(pool),
        **{f"ulira_{k}": v for k, v in summary.items()},
        "p_value": p,
        "detectable_auc_gap": gap,
        "alpha": alpha,
        **_lira_on_bank(bank, pool, seed),
    }
    st.update(_klom_and_challenge(unlearned, bank.models, forget, pool, halves, test, seed))
    st.update(_ghost(in_models, unlearned, bank.models, forget, halves))
    if target is not None:
        phi_t = model_statistics([target], forget)[0]
        all_rows = np.ones_like(phi_u, dtype=bool)
        mu_u, sd_u = fit_gaussians(phi_u, all_rows)
        mu_r, sd_r = fit_gaussians(phi_r, all_rows)
        st["target_ulira_unlearned_share"] = float(
            (likelihood_ratio(phi_t, mu_u, sd_u, mu_r, sd_r) > 0).mean() * 100
        )
        mu_i, sd_i = fit_gaussians(model_statistics(in_models, forget), all_rows)
        st["target_lira_member_share"] = float(
            (likelihood_ratio(phi_t, mu_i, sd_i, mu_r, sd_r) > 0).mean() * 100
        )
    distinguishable = p < alpha
    verdict = "distinguishable" if distinguishable else "indistinguishable"
    what = "the original (no unlearning)" if unlearner is None else f"method {unlearner.name!r}"
    if distinguishable:
        statement = (
            f"{what} is distinguishable from retraining: U-LiRA AUC {auc:.3f} "
            f"(p = {p:.3g} < {alpha}; K = {K} references, {len(forget)} forget samples)."
        )
    else:
        statement = (
            f"{what} is indistinguishable from retraining within this test's power: U-LiRA AUC "
            f"{auc:.3f} (p = {p:.3g}); at K = {K} the test flags only |AUC − 0.5| ≥ {gap:.3f}."
        )
    statement += (
        f" Challenge score {st['challenge_score']:.3f} from N = {K} models per side "
        "(the challenge used 512: this ε is coarse)."
    )
    return AuditReport(
        verdict,
        statement,
        st,
        list(bank.names),
        "original" if unlearner is None else unlearner.name,
    )
