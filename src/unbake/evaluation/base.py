"""The home of metrics: registered objects that declare what they need and name what they return.

A metric reads an :class:`EvalContext` (the model, its forget/retain/test sets, and
optionally a validation split and a reference bank) and returns a ``dict`` of named
numbers. Each name is declared once, as a :class:`Result`, with its label, its
description, whether it enters the avg gap, and whether compact tables show it. The
CLI tables, the comparison rows, the JSON and the request record are all built from
those declarations, so adding a metric touches one file.

>>> from unbake.evaluation import METRICS
>>> "utility" in METRICS and "mia_loss" in METRICS
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from unbake.data import Samples
from unbake.data.text import TextSamples
from unbake.evaluation.metrics import nll
from unbake.exceptions import InvalidParameterError
from unbake.registry import ClassRegistry
from unbake.training import TrainedModel

__all__ = [
    "METRICS",
    "EvalContext",
    "Evaluation",
    "Metric",
    "Result",
    "avg_gap",
    "evaluate",
    "gap_metrics",
    "result_specs",
]

#: What a metric may need beyond the model and its forget/retain/test sets: ``text``
#: (a language model's answers), ``reference`` (the retrain reference model) and
#: ``tofu`` (the generated TOFU set: world questions, answer variants, canaries).
NEEDS = ("validation", "bank", "class_probs", "text", "reference", "tofu")


@dataclass(frozen=True)
class Result:
    """One named number a metric returns."""

    key: str
    label: str
    description: str
    #: Enters the avg gap against the retrain reference (SalUn's FA, RA, TA, MIA).
    gap: bool = False
    #: Shown in compact tables (comparison, forget, log); every result is in the JSON.
    column: bool = False


class Metric:
    """Base class: ``results`` declares the names, ``compute`` returns them."""

    name: ClassVar[str]
    results: ClassVar[tuple[Result, ...]] = ()
    needs: ClassVar[frozenset[str]] = frozenset()
    #: Part of every :func:`evaluate` call when its needs are met.
    default: ClassVar[bool] = True
    #: Position in tables (lower first).
    order: ClassVar[int] = 100

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        raise NotImplementedError


METRICS: ClassRegistry[Metric] = ClassRegistry("metric", Metric)


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    METRICS.register(cls.name)(cls)
    return cls


def _ordered() -> list[type[Metric]]:
    classes = [METRICS.get(name) for name in METRICS.available()]
    return sorted(classes, key=lambda c: (c.order, c.name))


def result_specs(*, column_only: bool = False) -> list[Result]:
    """Every declared result, in table order."""
    return [r for cls in _ordered() for r in cls.results if r.column or not column_only]


@dataclass
class EvalContext:
    """What metrics read. Per-split class log-probabilities are computed once and shared."""

    model: TrainedModel
    forget: Samples
    retain: Samples
    test: Samples
    validation: Samples | None = None
    bank: Any = None
    seed: int = 0
    #: The retrain reference model, for metrics that compare distributions with it.
    reference: TrainedModel | None = None
    #: The :class:`~unbake.data.tofu.TofuSet` the model was fine-tuned on, if any.
    tofu: Any = None
    _log_probs: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    def samples(self, split: str) -> Samples:
        value = getattr(self, split)
        if value is None:
            raise InvalidParameterError(f"No {split} split in this evaluation; pass one.")
        return value

    def text_samples(self, split: str) -> TextSamples:
        """``split`` as prompt–answer text; a split of arrays raises (a text metric on a
        classifier)."""
        value = self.samples(split)
        if not isinstance(value, TextSamples):
            raise InvalidParameterError(
                f"The {split} split holds arrays, not text; drop the text metrics or "
                "evaluate a language model on a text dataset."
            )
        return value

    def has(self, need: str) -> bool:
        return getattr(self, need) is not None

    @property
    def class_probs(self) -> bool | None:
        """True where the model scores classes (arrays); None for text (answer tokens)."""
        return True if hasattr(self.forget, "X") else None

    @property
    def text(self) -> bool | None:
        """True where the model answers text (a causal LM); None for classifiers."""
        return None if self.class_probs else True

    @property
    def world(self) -> Any:
        """The TOFU set's real-world questions (None without a TOFU set)."""
        return None if self.tofu is None else self.tofu.world

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per context: what several metrics read is computed once."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def token_nll(self, split: str) -> tuple[list[np.ndarray], np.ndarray]:
        """Per text sample: each answer token's NLL, and whether all are predicted."""

        def compute():
            from unbake.training.lm import answer_token_nll

            s = self.text_samples(split)
            return answer_token_nll(self.model, s) if len(s) else ([], np.empty(0, bool))

        return self.memo(f"tokens:{split}", compute)

    def _text(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean answer-token loss and exact-answer match of each text sample."""
        tokens, ok = self.token_nll(split)
        return np.array([t.mean() for t in tokens], dtype=np.float64), ok

    def log_probs(self, split: str) -> np.ndarray:
        """``(n, classes)`` float64 log-probabilities of ``split`` under the model."""
        if split not in self._log_probs:
            s = self.samples(split)
            if len(s) == 0:
                lp = np.empty((0, self.model.n_classes))
            else:
                lp = self.model.log_proba(s.X).double().numpy()
            self._log_probs[split] = lp
        return self._log_probs[split]

    def loss(self, split: str) -> np.ndarray:
        """Per-sample cross-entropy (for text, the mean over the answer tokens)."""
        if not self.class_probs:
            return self._text(split)[0]
        return nll(self.log_probs(split), self.samples(split).y)

    def correct(self, split: str) -> np.ndarray:
        """Per-sample top-1 correctness (for text, every answer token predicted)."""
        if not self.class_probs:
            return self._text(split)[1]
        return self.log_probs(split).argmax(1) == self.samples(split).y


class Evaluation(Mapping[str, float]):
    """Named metric values; read them as ``ev["fa"]`` or ``ev.fa``.

    >>> ev = Evaluation({"fa": 90.0, "ra": 95.0})
    >>> ev.fa, sorted(ev)
    (90.0, ['fa', 'ra'])
    """

    def __init__(self, values: Mapping[str, float]) -> None:
        self._values = {k: float(v) for k, v in values.items()}

    def __getattr__(self, name: str) -> float:
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"Evaluation has no metric {name!r}; it has: {', '.join(values)}.")

    def __getitem__(self, key: str) -> float:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v:.2f}" for k, v in self._values.items())
        return f"Evaluation({inner})"

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self._values.items()}


def evaluate(
    model: TrainedModel,
    forget: Samples,
    retain: Samples,
    test: Samples,
    *,
    validation: Samples | None = None,
    bank: Any = None,
    metrics: Sequence[str] | None = None,
    seed: int = 0,
    reference: TrainedModel | None = None,
    tofu: Any = None,
) -> Evaluation:
    """Every default metric whose needs are met (or the named ``metrics``), in table order.

    A metric named explicitly whose needs are not met raises, naming what is missing.
    """
    ctx = EvalContext(model, forget, retain, test, validation, bank, seed, reference, tofu)
    if metrics is None:
        chosen = [c for c in _ordered() if c.default and all(ctx.has(n) for n in c.needs)]
    else:
        chosen = [METRICS.get(name) for name in metrics]
        for cls in chosen:
            missing = [n for n in cls.needs if not ctx.has(n)]
            if missing:
                raise InvalidParameterError(
                    f"Metric {cls.name!r} needs {' and '.join(missing)}; pass "
                    f"{', '.join(f'{n}=' for n in missing)} or drop the metric."
                )
    values: dict[str, float] = {}
    for cls in chosen:
        values.update(cls().compute(ctx))
    return Evaluation(values)


def gap_metrics() -> list[str]:
    """The metrics whose results enter the avg gap: all :func:`avg_gap` reads, and no more
    (a search scoring many candidates by the gap skips the costlier attacks)."""
    return [c.name for c in _ordered() if any(r.gap for r in c.results)]


def avg_gap(result: Mapping[str, float], reference: Mapping[str, float]) -> float:
    """Mean |Δ| in points over the gap results (FA, RA, TA, MIA) against the reference (SalUn)."""
    keys = [r.key for r in result_specs() if r.gap and r.key in result and r.key in reference]
    return float(np.mean([abs(result[k] - reference[k]) for k in keys]))
