"""Planted attacks on a dataset's training split, seeded, with the planted IDs recorded.

Two attacks, each written as one option string (``KIND:key=value,...``):

- ``flip:fraction=F,source=S,target=T`` — a fraction ``F`` of class ``S``'s training
  samples relabelled ``T``;
- ``backdoor:fraction=F,target=T,size=K,value=V`` — BadNets (Gu et al., 2017): a
  ``K``×``K`` patch of value ``V`` stamped in the bottom-right corner of a fraction
  ``F`` of the training samples of the other classes, relabelled ``T``. The attack
  success rate (ASR) is the share of triggered test samples of the other classes that
  a model classifies as ``T``.

Every option takes ``seed`` (default 0). Only the training split is touched: the
validation and test splits stay clean. ``load_dataset(name, poison="...")`` applies
the attack and records it (and the planted IDs) in the dataset spec, so reloading a
workspace's dataset reproduces it exactly.

>>> from unbake.data import load_dataset
>>> ds = load_dataset("digits", poison="backdoor:fraction=0.05,target=0")
>>> p = planted(ds)
>>> p.kind, p.target, len(p.ids), len(ds.train)
('backdoor', 0, 56, 1229)
>>> bool((ds.train.y[ds.train.mask_of(p.ids)] == 0).all())
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np

from unbake.data.samples import Dataset, Samples
from unbake.exceptions import DatasetError, InvalidParameterError

__all__ = [
    "Planted",
    "PoisonSpec",
    "apply_poison",
    "attack_success_rate",
    "flip_rates",
    "planted",
    "triggered",
]

_KEYS = {
    "flip": {"fraction", "source", "target", "seed"},
    "backdoor": {"fraction", "target", "size", "value", "seed"},
}
_DEFAULTS = {"seed": "0", "size": "2", "value": "1.0"}


@dataclass(frozen=True)
class PoisonSpec:
    """A parsed attack option; :meth:`parse` checks it, :meth:`__str__` writes it back."""

    kind: str
    fraction: float
    target: int
    seed: int = 0
    source: int | None = None
    size: int = 2
    value: float = 1.0

    @classmethod
    def parse(cls, text: str) -> PoisonSpec:
        """Parse ``KIND:key=value,...``; every error names the fix.

        >>> str(PoisonSpec.parse("backdoor:target=0,fraction=0.05"))
        'backdoor:fraction=0.05,target=0,size=2,value=1.0,seed=0'
        """
        kind, _, rest = str(text).partition(":")
        kind = kind.strip()
        if kind not in _KEYS:
            raise InvalidParameterError(
                f"Unknown poison {kind!r}; write flip:fraction=F,source=S,target=T or "
                "backdoor:fraction=F,target=T[,size=K,value=V,seed=N]."
            )
        items = dict(_DEFAULTS)
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            if not eq or key.strip() not in _KEYS[kind]:
                raise InvalidParameterError(
                    f"Poison option {part!r} is not one of {kind}'s keys "
                    f"({', '.join(sorted(_KEYS[kind]))}); write key=value."
                )
            items[key.strip()] = value.strip()
        missing = sorted(k for k in _KEYS[kind] if k not in items)
        if missing:
            raise InvalidParameterError(
                f"The {kind} poison needs {', '.join(missing)}; add e.g. {missing[0]}=1."
            )
        try:
            spec = cls(
                kind,
                float(items["fraction"]),
                int(items["target"]),
                int(items["seed"]),
                int(items["source"]) if "source" in items and kind == "flip" else None,
                int(items["size"]),
                float(items["value"]),
            )
        except ValueError:
            raise InvalidParameterError(
                f"Poison {text!r} has a value that is not a number; fraction and value are "
                "floats, the others integers."
            ) from None
        if not 0 < spec.fraction < 1:
            raise InvalidParameterError(
                f"The poison fraction must be in (0, 1), got {spec.fraction}; "
                "give e.g. fraction=0.05."
            )
        if spec.size < 1:
            raise InvalidParameterError(
                f"The trigger size must be at least 1 pixel, got {spec.size}; give e.g. size=2."
            )
        return spec

    def __str__(self) -> str:
        if self.kind == "flip":
            return (
                f"flip:fraction={self.fraction},source={self.source},target={self.target},"
                f"seed={self.seed}"
            )
        return (
            f"backdoor:fraction={self.fraction},target={self.target},size={self.size},"
            f"value={self.value},seed={self.seed}"
        )


@dataclass(frozen=True)
class Planted:
    """What an attack planted: its spec and the IDs of the poisoned training samples."""

    spec: PoisonSpec
    ids: tuple[str, ...]

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def target(self) -> int:
        return self.spec.target


def _check_class(ds: Dataset, label: int | None, what: str) -> None:
    if label is None:
        raise InvalidParameterError(
            f"The poison names no {what} class; set {what}= to a class index of "
            f"{ds.name!r} (0–{ds.n_classes - 1})."
        )
    if not 0 <= label < ds.n_classes:
        raise InvalidParameterError(
            f"The poison {what} class {label} is not a class index of {ds.name!r} "
            f"(0–{ds.n_classes - 1}); pick one of those."
        )


def _stamp(X: np.ndarray, spec: PoisonSpec) -> np.ndarray:
    """A copy of ``X`` with the trigger patch in the bottom-right corner of each sample.

    Images ``(C, H, W)`` get a ``size``×``size`` patch on every channel; flat rows get
    their last ``size`` features set.
    """
    spatial = X.shape[2:] if X.ndim == 4 else X.shape[1:]
    if any(spec.size > d for d in spatial):
        raise InvalidParameterError(
            f"The trigger ({spec.size}×{spec.size}) is larger than the input "
            f"({'×'.join(map(str, spatial))}); give a smaller size=."
        )
    out = X.copy()
    corner = (slice(None),) * (X.ndim - len(spatial)) + (slice(-spec.size, None),) * len(spatial)
    out[corner] = spec.value
    return out


def apply_poison(ds: Dataset, spec: PoisonSpec | str) -> tuple[Dataset, Planted]:
    """``ds`` with the attack planted in its training split, and what was planted."""
    spec = spec if isinstance(spec, PoisonSpec) else PoisonSpec.parse(spec)
    _check_class(ds, spec.target, "target")
    train = ds.train
    if spec.kind == "flip":
        _check_class(ds, spec.source, "source")
        if spec.source == spec.target:
            raise InvalidParameterError(
                "The flip's source and target classes are the same; pick two different classes."
            )
        pool = np.flatnonzero(train.y == spec.source)
    else:
        pool = np.flatnonzero(train.y != spec.target)
    n = round(spec.fraction * len(pool))
    if n == 0:
        raise InvalidParameterError(
            f"A fraction of {spec.fraction} of {len(pool)} eligible training samples plants "
            "none; raise fraction."
        )
    rng = np.random.default_rng(spec.seed)
    chosen = np.sort(rng.choice(pool, size=n, replace=False))
    X, y = np.asarray(train.X), train.y.copy()  # a poisoned copy is built in memory
    y[chosen] = spec.target
    if spec.kind == "backdoor":
        X = X.copy()
        X[chosen] = _stamp(X[chosen], spec)
    poisoned = Samples(X, y, train.ids, train.subjects)
    ids = tuple(str(i) for i in train.ids[chosen])
    return replace(ds, train=poisoned), Planted(spec, ids)


def poison_dataset(ds: Dataset, text: str, recorded_ids: str | None = None) -> Dataset:
    """Apply ``text`` and record it in the spec; ``recorded_ids`` (a reload) must match."""
    ds, plant = apply_poison(ds, text)
    ids_json = json.dumps(list(plant.ids))
    if recorded_ids is not None and json.loads(recorded_ids) != list(plant.ids):
        raise DatasetError(
            f"Re-planting {plant.spec} no longer selects the recorded samples (the dataset "
            "changed since the workspace was created); start a new workspace."
        )
    return replace(ds, spec={**ds.spec, "poison": str(plant.spec), "poison_ids": ids_json})


def planted(ds: Dataset) -> Planted | None:
    """What was planted in ``ds`` (from its spec), or ``None`` for clean data."""
    text = ds.spec.get("poison")
    if not text:
        return None
    return Planted(PoisonSpec.parse(text), tuple(json.loads(ds.spec.get("poison_ids", "[]"))))


def triggered(samples: Samples, plant: Planted) -> Samples:
    """The samples of ``samples`` not of the target class, with the trigger stamped."""
    keep = samples.subset(samples.y != plant.target)
    return Samples(_stamp(np.asarray(keep.X), plant.spec), keep.y, keep.ids, keep.subjects)


def attack_success_rate(log_proba, samples: Samples, plant: Planted) -> float:
    """Share of triggered ``samples`` (other classes) that ``log_proba`` labels the target.

    ``log_proba`` maps a feature array to class log-probabilities (for example
    ``TrainedModel.log_proba``).
    """
    if plant.kind != "backdoor":
        raise InvalidParameterError(
            f"The attack success rate measures a backdoor, not a {plant.kind}; "
            "plant backdoor:... to measure it."
        )
    trig = triggered(samples, plant)
    if len(trig) == 0:
        return float("nan")
    pred = np.asarray(log_proba(trig.X)).argmax(1)
    return float(np.mean(pred == plant.target))


def flip_rates(log_proba, samples: Samples, plant: Planted) -> tuple[float, float]:
    """For a label flip: among ``samples`` of the source class, the share ``log_proba``
    classifies correctly, and the share it classifies as the flip's target.

    The harm a flip does shows on the source class: its accuracy falls, and its
    samples go to the target class.
    """
    if plant.kind != "flip":
        raise InvalidParameterError(
            f"Flip rates measure a label flip, not a {plant.kind}; plant flip:... to measure them."
        )
    source = samples.subset(samples.y == plant.spec.source)
    if len(source) == 0:
        return float("nan"), float("nan")
    pred = np.asarray(log_proba(source.X)).argmax(1)
    return float(np.mean(pred == plant.spec.source)), float(np.mean(pred == plant.target))
