"""The ``certified`` training strategy: a removal-enabled logistic regression.

Trains :class:`~unbake.families.certified.estimator.CertifiedLogisticRegression`
(Guo, Goldstein, Hannun and van der Maaten, "Certified Data Removal from Machine
Learning Models", ICML 2020) so that ``unbake train --model logreg --strategy certified`` and the
workspace can hold it: the float64 weights and the noise vector go to ``artifacts``,
the accountant's state to ``meta``, and :meth:`CertifiedStrategy.skeleton` rebuilds the
module. ``TrainConfig`` does not apply: the objective is minimised to optimality.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import numpy as np
import torch
from torch import nn

from unbake._validation import hyperparameter
from unbake.exceptions import InvalidParameterError, UnsupportedModelError
from unbake.families.certified.estimator import (
    CertifiedLinear,
    CertifiedLogisticRegression,
    CertifiedParams,
)
from unbake.models import ModelSpec, _import_factory
from unbake.training.base import STRATEGIES, TrainedModel, TrainingStrategy
from unbake.training.config import TrainConfig
from unbake.training.loop import resolve_device

__all__ = ["CertifiedStrategy", "convex_spec_or_raise", "to_trained_model"]


@STRATEGIES.register("certified")
class CertifiedStrategy(CertifiedParams, TrainingStrategy):
    """Certified-removal logistic regression on raw features or a frozen extractor.

    Its hyperparameters are the estimator's (:class:`CertifiedParams`, declared once)
    plus ``extractor``.
    """

    name = "certified"
    label_params = ("epsilon",)
    output = "ovr_log_sigmoid"  # CertifiedLinear returns one-vs-rest log σ(z_k)

    extractor: str | None = hyperparameter(
        None,
        help="A trusted factory 'package.module:function' (see unbake.models) called with "
        "input_shape= that returns the "
        "frozen feature network (trained on public data, or with differential privacy: it "
        "must not depend on the data to be removed); None: raw inputs.",
        constraints=[str, None],
    )

    def estimator(
        self, *, random_state: int, device=None, extractor: nn.Module | None = None
    ) -> CertifiedLogisticRegression:
        """An unfitted estimator with this strategy's hyperparameters."""
        shared = {f.name: getattr(self, f.name) for f in fields(CertifiedParams)}
        return CertifiedLogisticRegression(
            **shared, feature_extractor=extractor, device=device, random_state=random_state
        )

    def _build_extractor(self, input_shape: Sequence[int]) -> nn.Module | None:
        if self.extractor is None:
            return None
        factory = _import_factory(self.extractor, kind="feature extractor")
        module = factory(input_shape=tuple(input_shape))
        if not isinstance(module, nn.Module):
            raise InvalidParameterError(
                f"Extractor {self.extractor!r} returned {type(module).__name__}, not an "
                "nn.Module; return the frozen feature network from the factory."
            )
        return module.eval()

    def fit(self, samples, *, spec, config, seed, n_classes, device=None) -> TrainedModel:
        self.validate()
        convex_spec_or_raise(spec)
        est = self.estimator(
            random_state=seed,
            device=resolve_device(device),
            extractor=self._build_extractor(samples.input_shape),
        )
        est.fit(samples.X, samples.y, ids=samples.ids, classes=np.arange(n_classes))
        return to_trained_model(
            est,
            spec=spec,
            config=config,
            seed=seed,
            input_shape=samples.input_shape,
            n_classes=n_classes,
            strategy_params=self.get_params(),
        )

    def skeleton(self, spec: ModelSpec, input_shape: Sequence[int], n_classes: int) -> nn.Module:
        convex_spec_or_raise(spec)
        extractor = self._build_extractor(input_shape)
        if extractor is None:
            width = math.prod(input_shape)
        else:
            with torch.no_grad():
                width = extractor(torch.zeros(1, *input_shape)).flatten(1).shape[1]
        n_outputs = 1 if n_classes == 2 else n_classes
        return CertifiedLinear(width, n_outputs, extractor=extractor, normalize=self.normalize)


def convex_spec_or_raise(spec: ModelSpec) -> None:
    """Certified removal needs a convex model: only ``logreg`` qualifies."""
    if spec.name != "logreg":
        raise UnsupportedModelError(
            f"Certified removal needs a convex model, and {spec.name!r} is not one; train "
            "--model logreg, optionally on a frozen public feature extractor "
            "(--param extractor=package.module:function)."
        )


def to_trained_model(
    est: CertifiedLogisticRegression,
    *,
    spec: ModelSpec,
    config: TrainConfig,
    seed: int,
    input_shape: tuple[int, ...],
    n_classes: int,
    strategy_params: dict[str, Any],
) -> TrainedModel:
    """Wrap a fitted estimator as a ``certified``-strategy :class:`TrainedModel`.

    The float64 weights, the noise vector and the measured residual go to ``artifacts``;
    the accountant's state to ``meta['certified']['accountant']``.
    """
    artifacts, meta = est.state()
    return TrainedModel(
        module=est.to_module(),
        spec=spec,
        config=config,
        seed=seed,
        input_shape=tuple(input_shape),
        n_classes=n_classes,
        strategy="certified",
        strategy_params=dict(strategy_params),
        artifacts=artifacts,
        meta=meta,
    )
