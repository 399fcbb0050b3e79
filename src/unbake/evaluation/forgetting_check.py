"""Did an approximate method forget at all? A plain verdict on one request's result.

An approximate method gives no guarantee, and with parameters that do not suit the data
it can leave the forget set about as well recognised as before. Two signs, compared with
the original model on the same samples:

- a **class** request: the forget accuracy (FA) stays at :data:`FA_KEPT` or more of the
  original's, where retraining leaves about 0% on a class it never saw;
- any other request: the mean forget loss moved less than :data:`LOSS_MOVED` of the way
  from the original's forget loss to its test loss (retraining leaves forgotten samples
  about as unfamiliar as unseen ones). When the original already scores the forget set
  like the test set (a gap under :data:`MIN_GAP` nats), there is nothing to measure.

:func:`verdict` is the pure rule; :func:`check_forgetting` measures a request's original
and result and applies it (``None`` for exact and certified methods, which need no
check).

>>> verdict({"fa": 98.0}, {"fa": 60.0}, scenario="class", method="finetune")["verdict"]
'barely forgot'
>>> verdict({"fa": 98.0}, {"fa": 3.0}, scenario="class", method="finetune")["verdict"]
'forgot'
"""

from __future__ import annotations

from typing import Any

from unbake.data import Samples
from unbake.evaluation.base import EvalContext
from unbake.training import TrainedModel

__all__ = ["FA_KEPT", "LOSS_MOVED", "MIN_GAP", "check_forgetting", "figures", "verdict"]

#: A class request barely forgot when FA keeps at least this share of the original's.
FA_KEPT = 0.5
#: Another request barely forgot when the forget loss moved less than this share of the
#: way from the original's forget loss to its test loss.
LOSS_MOVED = 0.1
#: Below this gap (nats) between the original's test and forget loss, it already scores
#: the forget set as unseen data: no verdict.
MIN_GAP = 0.02


def figures(model: TrainedModel, forget: Samples, test: Samples) -> dict[str, float]:
    """``fa`` (%), ``forget_loss`` and ``test_loss`` (mean cross-entropy) of ``model``."""
    ctx = EvalContext(model, forget, test, test)
    out = {"fa": 100.0 * float(ctx.correct("forget").mean()) if len(forget) else 0.0}
    out["forget_loss"] = float(ctx.loss("forget").mean()) if len(forget) else 0.0
    out["test_loss"] = float(ctx.loss("test").mean()) if len(test) else float("nan")
    return out


def _next_step(method: str, scenario: str, workspace: str) -> str:
    where = f" --workspace {workspace}" if workspace else ""
    return (
        f"rerun the request with --method retrain (exact), or tune {method} for this data "
        f"with `unbake tune{where} --method {method} --scenario {scenario}`"
    )


def verdict(
    before: dict[str, float],
    after: dict[str, float],
    *,
    scenario: str,
    method: str,
    workspace: str = "",
) -> dict[str, Any]:
    """``{"verdict": "forgot" | "barely forgot" | "not measured", "message", figures}``
    for a result (``after``) against its original (``before``), per :func:`figures`."""
    out: dict[str, Any] = {
        "before": {k: round(v, 4) for k, v in before.items()},
        "after": {k: round(v, 4) for k, v in after.items()},
    }
    if scenario == "class":
        if not (before["fa"] > 0 and after["fa"] >= FA_KEPT * before["fa"]):
            message = f"FA fell from {before['fa']:.1f}% to {after['fa']:.1f}%."
            return {**out, "verdict": "forgot", "message": message}
        message = (
            f"{method} barely forgot this class: FA is {after['fa']:.1f}% against the "
            f"original's {before['fa']:.1f}% (retraining leaves about 0% on a class it never "
            f"saw); {_next_step(method, scenario, workspace)}."
        )
        return {**out, "verdict": "barely forgot", "message": message}
    gap = before.get("test_loss", float("nan")) - before["forget_loss"]
    if not gap >= MIN_GAP:
        message = "The original already scores the forget set like unseen data."
        return {**out, "verdict": "not measured", "message": message}
    moved = (after["forget_loss"] - before["forget_loss"]) / gap
    out["moved"] = round(moved, 4)
    if moved >= LOSS_MOVED:
        message = f"The forget loss moved {moved:.0%} of the way to the original's test loss."
        return {**out, "verdict": "forgot", "message": message}
    message = (
        f"{method} barely forgot: the forget loss moved from {before['forget_loss']:.3f} to "
        f"{after['forget_loss']:.3f}, {moved:.0%} of the way to the original's test loss "
        f"({before['test_loss']:.3f}, about where retraining leaves it); "
        f"{_next_step(method, 'random', workspace)}."
    )
    return {**out, "verdict": "barely forgot", "message": message}


def check_forgetting(
    unlearner: Any,
    original: TrainedModel,
    result: TrainedModel,
    forget: Samples,
    test: Samples,
    *,
    scenario: str,
    workspace: str = "",
) -> dict[str, Any] | None:
    """:func:`verdict` on ``result`` against ``original`` for an approximate
    ``unlearner``; ``None`` for an exact or certified one."""
    if unlearner.tags.exact or unlearner.tags.certified:
        return None
    return verdict(
        figures(original, forget, test),
        figures(result, forget, test),
        scenario=scenario,
        method=unlearner.name,
        workspace=workspace,
    )
