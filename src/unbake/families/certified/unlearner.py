"""Certified removal as an unbake method: one Newton step per request, within a budget."""

from __future__ import annotations

from typing import Any

import numpy as np

from unbake.families.certified.strategy import to_trained_model
from unbake.methods.base import MethodTags, Unlearner, UnlearnTask, register_method
from unbake.training import TrainedModel, resolve_device

__all__ = ["CertifiedRemoval"]


@register_method
class CertifiedRemoval(Unlearner):
    """Certified removal by a Newton step (Guo et al., ICML 2020), with a residual budget.

    Guo, Goldstein, Hannun and van der Maaten, "Certified Data Removal from Machine
    Learning Models" (ICML 2020). Needs a model trained with ``--strategy certified``
    (L2-regularised logistic regression on raw or frozen features, trained on a
    noise-perturbed objective). Each request is one Newton step on the retain set; its
    gradient residual is bounded and accumulated, and when the next step would exceed
    what the noise hides at the model's (ε, δ) the model is retrained on the retain set
    with fresh noise instead. ``info`` reports the step and the certificate.
    """

    name = "certified"
    tags = MethodTags(
        certified=True,
        reads=("retain",),
        requires_strategy="certified",
        cost="one Newton step: Hessian-vector products over the retain set "
        "(a retrain when the (ε, δ) budget runs out)",
        limits="convex models only: a logistic regression on raw or frozen features",
    )
    suggested_original = {
        "model": "logreg",
        "strategy": "certified",
        "strategy_params": {"lam": 1e-2, "sigma": 5.0},
    }

    def _unlearn(self, task: UnlearnTask, seed: int) -> tuple[TrainedModel, dict[str, Any]]:
        original = task.original
        strategy = original.make_strategy()
        est = strategy.estimator(
            random_state=seed,
            device=resolve_device(task.device),
            extractor=original.module.extractor if strategy.extractor else None,
        )
        est.restore(
            np.concatenate([task.retain.X, task.forget.X]),
            np.concatenate([task.retain.y, task.forget.y]),
            ids=np.concatenate([task.retain.ids, task.forget.ids]).astype(str),
            artifacts=original.artifacts,
            meta=original.meta,
        )
        event = est.remove(task.forget.ids)
        model = to_trained_model(
            est,
            spec=original.spec,
            config=original.config,
            seed=original.seed,
            input_shape=original.input_shape,
            n_classes=original.n_classes,
            strategy_params=original.strategy_params,
        )
        return model, {**event, "certificate": est.certificate()}
