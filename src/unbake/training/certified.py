"""The ``certified`` training strategy: a removal-enabled logistic regression.

Trains :class:`unbake.methods.certified.CertifiedLogisticRegression` (Guo, Goldstein,
Hannun and van der Maaten, "Certified Data Removal from Machine Learning Models",
ICML 2020) so that ``unbake train --model logreg --strategy certified`` and the
workspace can hold it: the float64 weights and the noise vector go to ``artifacts``,
the residual budget to ``meta``, and :meth:`CertifiedStrategy.skeleton` rebuilds the
module. ``TrainConfig`` does not apply: the objective is minimised to optimality.

The estimator is imported lazily because :mod:`unbake.methods` imports this package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from unbake.exceptions import InvalidParameterError
from unbake.models import ModelSpec, _import_factory
from unbake.training.loop import resolve_device
from unbake.training.strategy import STRATEGIES, TrainedModel, TrainingStrategy

if TYPE_CHECKING:
    from unbake.methods.certified import CertifiedLogisticRegression

__all__ = ["CertifiedStrategy"]


@STRATEGIES.register("certified")
class CertifiedStrategy(TrainingStrategy):
    """Certified-removal logistic regression on raw features or a frozen extractor.

    ``extractor`` names a factory ``"package.module:function"`` called with
    ``input_shape=`` that returns the frozen feature network (trained on public data,
    or with differential privacy: it must not depend on the data to be removed).
    """

    name = "certified"
    label_params = ("epsilon",)
    output = "ovr_log_sigmoid"  # CertifiedLinear returns one-vs-rest log σ(z_k)

    def __init__(
        self,
        *,
        lam: float = 1e-3,
        sigma: float = 1.0,
        epsilon: float = 1.0,
        delta: float = 1e-5,
        normalize: bool = True,
        max_iter: int = 500,
        extractor: str | None = None,
    ) -> None:
        self.lam = lam
        self.sigma = sigma
        self.epsilon = epsilon
        self.delta = delta
        self.normalize = normalize
        self.max_iter = max_iter
        self.extractor = extractor

    @property
    def _parameter_constraints(self) -> dict[str, list]:  # type: ignore[override]
        from unbake.methods.certified import ESTIMATOR_CONSTRAINTS

        return {**ESTIMATOR_CONSTRAINTS, "extractor": [str, None]}

    def estimator(
        self, *, random_state: int, device=None, extractor: nn.Module | None = None
    ) -> CertifiedLogisticRegression:
        """An unfitted estimator with this strategy's hyperparameters."""
        from unbake.methods.certified import CertifiedLogisticRegression

        shared = {k: v for k, v in self.get_params().items() if k != "extractor"}
        return CertifiedLogisticRegression(
            **shared, feature_extractor=extractor, device=device, random_state=random_state
        )

    def _build_extractor(self, input_shape: Sequence[int]) -> nn.Module | None:
        if self.extractor is None:
            return None
        module = _import_factory(self.extractor)(input_shape=tuple(input_shape))
        if not isinstance(module, nn.Module):
            raise InvalidParameterError(
                f"Extractor {self.extractor!r} returned {type(module).__name__}, not an "
                "nn.Module; return the frozen feature network from the factory."
            )
        return module.eval()

    def fit(self, samples, *, spec, config, seed, n_classes, device=None) -> TrainedModel:
        from unbake.methods.certified import convex_spec_or_raise, to_trained_model

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
        from unbake.methods.certified import CertifiedLinear, convex_spec_or_raise

        convex_spec_or_raise(spec)
        extractor = self._build_extractor(input_shape)
        if extractor is None:
            width = math.prod(input_shape)
        else:
            with torch.no_grad():
                width = extractor(torch.zeros(1, *input_shape)).flatten(1).shape[1]
        n_outputs = 1 if n_classes == 2 else n_classes
        return CertifiedLinear(width, n_outputs, extractor=extractor, normalize=self.normalize)
