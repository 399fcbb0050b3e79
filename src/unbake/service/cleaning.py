"""Machine cleaning: rank a workspace's training set with a detector, unlearn the top K.

The suspects go through :func:`unbake.service.apply.forget` as one deletion request with the
purpose ``"cleaning"``, so the ledger, the purge and the records are those of any
deletion. Clean test accuracy, and the attack success rate where the workspace's
dataset has a planted backdoor, are measured before and after.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from unbake.data.poison import planted
from unbake.evaluation.detectors import DETECTORS, attack_harm, detection_scores, top_k
from unbake.exceptions import InvalidParameterError
from unbake.methods import METHODS
from unbake.service.apply import forget

__all__ = ["CleanReport", "clean"]


@dataclass
class CleanReport:
    """What a cleaning run removed and what it changed."""

    request_id: str
    detector: str
    method: str
    budget: int
    model_before: str
    model_after: str
    seconds: float
    ta_before: float
    ta_after: float
    asr_before: float | None = None
    asr_after: float | None = None
    detection: dict[str, float] = field(default_factory=dict)
    #: Every harm figure of :func:`attack_harm` (for a flip: ``source_acc``, ``flip_rate``).
    harm_before: dict[str, float] = field(default_factory=dict)
    harm_after: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def clean(
    ws,
    *,
    detect: str,
    budget: int,
    method: str | None = None,
    params: dict[str, Any] | None = None,
    detector_params: dict[str, Any] | None = None,
    seed: int | None = None,
    device=None,
) -> CleanReport:
    """Score the active training set with ``detect`` on the newest model, forget the top
    ``budget`` with ``method`` (default: ``sisa`` for a SISA model, else ``retrain``).

    Every check runs before anything is written: an unknown detector or method, or a
    budget outside 1 … (training-set size − 1), raises and leaves the workspace unchanged.
    """
    detector = DETECTORS.create(detect, **(detector_params or {}))
    if method is not None:
        METHODS.create(method, **(params or {}))
    active, _ = ws.active_and_forgotten()
    if not 0 < budget < len(active):
        raise InvalidParameterError(
            f"The cleaning budget must be between 1 and {len(active) - 1} (the active training "
            f"set holds {len(active)}), got {budget}; give a budget in that range."
        )
    row = ws.model_row(None)
    model = ws.load_model(row["model_id"], device=device)
    if method is None:
        method = "sisa" if model.strategy == "sisa" else "retrain"
    _, test = ws.held_out()
    plant = planted(ws.dataset())
    before = attack_harm(model, test, plant)
    scores = detector.score(model, active)
    suspects = top_k(scores, active.ids, budget)
    detection: dict[str, float] = {}
    truth = [] if plant is None else list(plant.ids)
    if plant is not None and 0 < np.isin(active.ids.astype(str), truth).sum() < len(active):
        detection = detection_scores(scores, active.ids, truth, [budget])
    rec = forget(
        ws, ids=suspects, method=method, params=params, seed=seed, device=device, purpose="cleaning"
    )
    after = ws.load_model(rec.model_after, device=device)
    harm = attack_harm(after, test, plant)
    return CleanReport(
        rec.request_id,
        detect,
        rec.method,
        budget,
        rec.model_before,
        rec.model_after,
        rec.seconds,
        before["ta"],
        harm["ta"],
        before.get("asr"),
        harm.get("asr"),
        detection,
        before,
        harm,
    )
