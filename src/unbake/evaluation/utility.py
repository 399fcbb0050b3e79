"""Utility and privacy of one model on the forget, retain and test sets."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from unbake.data import Samples
from unbake.evaluation.metrics import best_threshold, roc_auc
from unbake.training import TrainedModel

__all__ = ["Evaluation", "accuracy", "avg_gap", "evaluate", "per_sample_loss"]


@torch.no_grad()
def per_sample_loss(model: TrainedModel, samples: Samples) -> tuple[np.ndarray, np.ndarray]:
    """(cross-entropy loss, correct?) for every sample.

    For text: the mean loss over the answer tokens, and whether every answer token is
    the model's top prediction (:func:`unbake.training.lm.answer_loss_and_match`).
    """
    if len(samples) == 0:
        return np.empty(0), np.empty(0, dtype=bool)
    if not hasattr(samples, "X"):
        from unbake.training.lm import answer_loss_and_match

        return answer_loss_and_match(model, samples)
    probs = model.predict_proba(torch.from_numpy(samples.X))
    y = torch.from_numpy(samples.y)
    loss = F.nll_loss(torch.log(probs.clamp_min(1e-12)), y, reduction="none")
    return loss.numpy().astype(np.float64), (probs.argmax(1) == y).numpy()


def accuracy(model: TrainedModel, samples: Samples) -> float:
    """Top-1 accuracy in percent."""
    _, correct = per_sample_loss(model, samples)
    return float(correct.mean() * 100.0) if len(correct) else float("nan")


@dataclass(frozen=True)
class Evaluation:
    """FA, RA, TA (accuracy, %), MIA and the attack's own strength.

    ``mia`` is the loss-threshold membership-inference AUC of forget (members)
    against test (non-members), in percent: 50 means an attacker cannot tell the
    forget set from unseen data. ``mia_efficacy`` is the share (%) of forget samples
    that an attack calibrated on retain-vs-test calls *non-members* (SalUn's
    MIA-efficacy). ``attack_strength`` is that attack's balanced accuracy (%) on
    retain against test: near 50 it could see nothing at all.
    """

    fa: float
    ra: float
    ta: float
    mia: float
    mia_efficacy: float
    attack_strength: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in asdict(self).items()}


def evaluate(model: TrainedModel, forget: Samples, retain: Samples, test: Samples) -> Evaluation:
    f_loss, f_ok = per_sample_loss(model, forget)
    r_loss, r_ok = per_sample_loss(model, retain)
    t_loss, t_ok = per_sample_loss(model, test)
    # members have low loss: score = -loss
    mia = roc_auc(-f_loss, -t_loss) * 100.0
    threshold, strength = best_threshold(-r_loss, -t_loss)
    efficacy = float(np.mean(-f_loss <= threshold) * 100.0) if len(f_loss) else float("nan")

    def pct(ok: np.ndarray) -> float:
        return float(ok.mean() * 100.0) if len(ok) else float("nan")

    return Evaluation(pct(f_ok), pct(r_ok), pct(t_ok), mia, efficacy, strength * 100.0)


def avg_gap(result: Evaluation, reference: Evaluation) -> float:
    """Mean |Δ| in points over FA, RA, TA and MIA against the retrain reference (SalUn)."""
    keys = ("fa", "ra", "ta", "mia")
    return float(np.mean([abs(getattr(result, k) - getattr(reference, k)) for k in keys]))
