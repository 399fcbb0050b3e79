"""What every training strategy shares: the :class:`TrainedModel` it produces, the
:class:`TrainingStrategy` base class and the :data:`STRATEGIES` registry.

Kept apart from the strategies themselves (:mod:`unbake.training.strategy`,
:mod:`unbake.families`), so that what a trained model is (and what reads one, such as
:mod:`unbake.training.trajectory`) sits below every strategy that makes one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from unbake._validation import Declared, get_params, set_params, validate_params
from unbake.data import RowView, Samples
from unbake.data.text import TextSamples
from unbake.exceptions import InvalidParameterError
from unbake.models import ModelSpec, build_model
from unbake.registry import ClassRegistry
from unbake.training.config import TrainConfig

__all__ = [
    "OUTPUT_KINDS",
    "STRATEGIES",
    "TrainedModel",
    "TrainingStrategy",
    "differing_tensors",
    "get_params",
    "model_tensors",
    "set_params",
    "to_log_proba",
]

#: How a strategy's module output maps to log-probabilities. ``logits``: unnormalised
#: scores (log-softmax). ``log_probs``: already normalised log-probabilities (kept as
#: they are). ``ovr_log_sigmoid``: one-vs-rest ``log σ(z_k)``, normalised over classes as
#: scikit-learn does for one-vs-rest probabilities (log-softmax of the log-sigmoids).
OUTPUT_KINDS = ("logits", "log_probs", "ovr_log_sigmoid")


def to_log_proba(output: torch.Tensor, kind: str) -> torch.Tensor:
    """Class log-probabilities from a module's raw ``output`` of the declared ``kind``.

    >>> to_log_proba(torch.tensor([[0.0, 0.0]]), "logits").exp()
    tensor([[0.5000, 0.5000]])
    """
    if kind == "log_probs":
        return output
    if kind in ("logits", "ovr_log_sigmoid"):
        return torch.log_softmax(output, dim=1)
    raise InvalidParameterError(
        f"Unknown module output kind {kind!r}; declare one of: {', '.join(OUTPUT_KINDS)}."
    )


@dataclass
class TrainedModel:
    """A trained model plus everything needed to retrain it exactly: its factory
    (``spec``), its recipe (``strategy``, ``strategy_params`` and ``config``) and ``seed``.

    A model adopted without a factory or a recipe (:func:`unbake.training.adopt`) lacks
    what a retrain needs, and exact methods refuse it.

    ``artifacts`` holds extra named tensors a strategy keeps beside the weights
    (SISA's slice checkpoints, a certified model's noise vector); ``meta`` holds
    JSON-serialisable extra state. Both are persisted with the checkpoint.
    """

    module: nn.Module
    spec: ModelSpec
    config: TrainConfig
    seed: int
    input_shape: tuple[int, ...]
    n_classes: int
    strategy: str = "monolithic"
    strategy_params: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def make_strategy(self) -> TrainingStrategy:
        return STRATEGIES.create_checked(self.strategy, self.strategy_params)

    def describe(self) -> str:
        name = self.spec.label
        if self.strategy == "monolithic":
            return name
        keys = STRATEGIES.get(self.strategy).label_params
        params = ",".join(
            f"{k}={self.strategy_params[k]}" for k in keys if k in self.strategy_params
        )
        return f"{name}/{self.strategy}({params})" if params else f"{name}/{self.strategy}"

    @torch.no_grad()
    def log_proba(self, X: torch.Tensor | Any, batch_size: int = 4096) -> torch.Tensor:
        """Class log-probabilities for ``X`` (eval mode, on the model's device; CPU result).

        ``X`` may be streamed rows (:class:`~unbake.data.RowView`): read a batch at a time.

        The one score every metric reads: the strategy declares what its module outputs
        (:attr:`TrainingStrategy.output`), so nothing downstream guesses.
        """
        if not isinstance(X, (torch.Tensor, RowView)):  # streamed rows stay streamed
            X = torch.as_tensor(X)
        device = next(self.module.parameters()).device
        kind = STRATEGIES.get(self.strategy).output
        self.module.eval()
        outs = [
            to_log_proba(self.module(X[i : i + batch_size].to(device)), kind).cpu()
            for i in range(0, len(X), batch_size)
        ]
        return torch.cat(outs) if outs else torch.empty(0, self.n_classes)

    def predict_proba(self, X: torch.Tensor | Any, batch_size: int = 4096) -> torch.Tensor:
        """Class probabilities: ``log_proba(X).exp()``."""
        return self.log_proba(X, batch_size).exp()


def model_tensors(model: TrainedModel) -> dict[str, torch.Tensor]:
    """Every tensor of a model, as its checkpoint names them: weights and artifacts."""
    out = {f"module.{k}": v for k, v in model.module.state_dict().items()}
    out.update({f"artifact.{k}": v for k, v in model.artifacts.items()})
    return out


def differing_tensors(a: TrainedModel, b: TrainedModel) -> list[str]:
    """The tensors (weights and artifacts) that ``a`` and ``b`` do not share bit for bit.

    A name held by one model only counts as differing; ``[]`` means bitwise equal.
    """
    sa, sb = model_tensors(a), model_tensors(b)
    return sorted(set(sa) ^ set(sb)) + [k for k in sa if k in sb and not torch.equal(sa[k], sb[k])]


class TrainingStrategy(Declared):
    """Base class: constructor stores hyperparameters, ``fit`` trains, ``skeleton`` rebuilds.

    A strategy declares its hyperparameters as fields (:func:`~unbake._validation.hyperparameter`),
    which give it its keyword-only constructor and its constraints.
    """

    name: ClassVar[str]
    #: The parameters that name a trained model in tables and logs (e.g. shards, slices).
    label_params: ClassVar[tuple[str, ...]] = ()
    #: What the trained module's ``forward`` returns (one of :data:`OUTPUT_KINDS`).
    output: ClassVar[str] = "logits"

    def model_params(self) -> dict[str, Any]:
        """The parameters that define the model, as stored with it (default: all)."""
        return self.get_params()

    def validate(self, samples: Samples | TextSamples | None = None) -> None:
        """Check the declared constraints (and, in subclasses, fit against ``samples``)."""
        validate_params(self.get_params(), self._parameter_constraints, self.name)

    def fit(
        self,
        samples: Samples | TextSamples,
        *,
        spec: ModelSpec,
        config: TrainConfig,
        seed: int,
        n_classes: int,
        device: str | torch.device | None = None,
    ) -> TrainedModel:
        raise NotImplementedError

    def skeleton(self, spec: ModelSpec, input_shape: Sequence[int], n_classes: int) -> nn.Module:
        """An untrained module with the right structure, to load saved weights into."""
        return build_model(spec, input_shape=input_shape, n_classes=n_classes, seed=0)


STRATEGIES: ClassRegistry[TrainingStrategy] = ClassRegistry(
    "training strategy", TrainingStrategy, builtins="unbake.families"
)
