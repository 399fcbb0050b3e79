"""The reference bank: K models trained on seeded random halves of the training data.

Reference model ``k`` trains on the half of the samples drawn by its own seed, with
the same architecture, training configuration and strategy as the model under audit.
The bank's ``membership`` matrix (``K × n``, True where model ``k`` trained on sample
``i``) is what LiRA splits into IN and OUT, and what a deletion reads to find every
reference model that saw a forgotten sample. Models train in parallel on a backend
(:mod:`unbake.backends`: a local process pool or Ray); each job fixes its own seed, so
every backend returns the same bits.

>>> int(half_mask(6, seed=0).sum())
3
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unbake._threads import pin_threads
from unbake.backends import create_backend
from unbake.data import Samples
from unbake.evaluation.metrics import logit_confidence
from unbake.models import ModelSpec
from unbake.training import TrainConfig, TrainedModel, fit

__all__ = [
    "FitJob",
    "Recipe",
    "ReferenceBank",
    "fit_many",
    "fit_many_timed",
    "half_mask",
    "train_bank",
]


def half_mask(n: int, *, seed: int) -> np.ndarray:
    """A seeded random half (``⌊n/2⌋`` rows) of ``n`` rows, as a boolean mask."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n)[: n // 2]] = True
    return mask


@dataclass(frozen=True)
class Recipe:
    """How to train a model like the one under audit (architecture, config, strategy)."""

    spec: ModelSpec
    config: TrainConfig
    n_classes: int
    strategy: str = "monolithic"
    strategy_params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model: TrainedModel) -> Recipe:
        return cls(model.spec, model.config, model.n_classes, model.strategy, model.strategy_params)

    def key(self) -> str:
        """A stable text key: banks are reused only for the same recipe."""
        import hashlib
        import json

        text = json.dumps(
            {
                "spec": self.spec.to_dict(),
                "config": self.config.model_dump(mode="json"),
                "n_classes": self.n_classes,
                "strategy": self.strategy,
                "strategy_params": self.strategy_params,
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FitJob:
    """One training run, picklable for a process pool or Ray."""

    samples: Samples
    recipe: Recipe
    seed: int
    threads: int | None = None


def _run_fit(job: FitJob) -> tuple[TrainedModel, float]:
    """Train one reference model; ``job.threads`` pins the count (the thread policy).
    Returns it with the seconds its training took where it ran (in the worker)."""
    r = job.recipe
    start = time.perf_counter()
    with pin_threads(job.threads) if job.threads else contextlib.nullcontext():
        model = fit(
            job.samples,
            n_classes=r.n_classes,
            model=r.spec,
            config=r.config,
            seed=job.seed,
            strategy=r.strategy,
            strategy_params=r.strategy_params,
            device="cpu",
        )
    return model, time.perf_counter() - start


def fit_many_timed(
    jobs: Sequence[FitJob], *, backend: str = "local", workers: int = 1
) -> list[tuple[TrainedModel, float]]:
    """Train every job on ``backend`` (parallel jobs single-threaded each); each model
    with the seconds its own training took in the worker, so a parallel build's wall
    time can be split into the jobs' work and the backend's overhead."""
    if workers > 1:
        jobs = [FitJob(j.samples, j.recipe, j.seed, threads=1) for j in jobs]
    return create_backend(backend, workers=workers).map(_run_fit, list(jobs))


def fit_many(
    jobs: Sequence[FitJob], *, backend: str = "local", workers: int = 1
) -> list[TrainedModel]:
    """Train every job on ``backend``; parallel jobs run single-threaded each."""
    return [model for model, _ in fit_many_timed(jobs, backend=backend, workers=workers)]


@dataclass
class ReferenceBank:
    """K reference models, the sample IDs they were drawn from, and who trained on what."""

    ids: np.ndarray
    membership: np.ndarray
    models: list[TrainedModel]
    seeds: list[int]
    names: list[str] = field(default_factory=list)
    #: Seconds each model's training took where it ran (empty for a bank read back).
    fit_seconds: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.models)

    def first(self, k: int) -> ReferenceBank:
        """The bank of its first ``k`` references (an audit at a smaller K reuses them)."""
        return ReferenceBank(
            self.ids,
            self.membership[:k],
            self.models[:k],
            self.seeds[:k],
            self.names[:k],
            self.fit_seconds[:k],
        )

    def members(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """``(K, len(ids))``: True where model ``k`` trained on the sample (unknown IDs: False)."""
        pos = {sid: i for i, sid in enumerate(self.ids.astype(str))}
        cols = np.array([pos.get(str(s), -1) for s in ids], dtype=np.int64)
        out = np.zeros((len(self), len(cols)), dtype=bool)
        known = cols >= 0
        out[:, known] = self.membership[:, cols[known]]
        return out

    def statistics(self, samples: Samples) -> np.ndarray:
        """``(K, n)`` logit-scaled confidence of ``samples`` under each reference model."""
        return model_statistics(self.models, samples)


def model_statistics(models: Sequence[TrainedModel], samples: Samples) -> np.ndarray:
    """``(len(models), n)`` logit-scaled confidence of each sample's true class."""
    X = samples.X
    return (
        np.stack([logit_confidence(m.log_proba(X).double().numpy(), samples.y) for m in models])
        if models
        else np.empty((0, len(samples)))
    )


def train_bank(
    samples: Samples,
    recipe: Recipe,
    *,
    seeds: Sequence[int],
    backend: str = "local",
    workers: int = 1,
) -> ReferenceBank:
    """Train one reference model per seed, each on the half of ``samples`` its seed draws."""
    membership = (
        np.stack([half_mask(len(samples), seed=s) for s in seeds])
        if seeds
        else (np.zeros((0, len(samples)), dtype=bool))
    )
    jobs = [
        FitJob(samples.subset(m), recipe, int(s)) for m, s in zip(membership, seeds, strict=True)
    ]
    done = fit_many_timed(jobs, backend=backend, workers=workers)
    return ReferenceBank(
        samples.ids.astype(str),
        membership,
        [model for model, _ in done],
        [int(s) for s in seeds],
        fit_seconds=[seconds for _, seconds in done],
    )
