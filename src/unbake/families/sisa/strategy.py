"""SISA training: Sharded, Isolated, Sliced and Aggregated.

Bourtoule et al., "Machine Unlearning" (IEEE S&P 2021). The training set is split into
``shards`` disjoint shards; one model is trained per shard, in isolation. Each shard is
cut into ``slices`` slices and trained incrementally: slice 1, then slices 1–2, and so
on, with a checkpoint after every slice. Predictions aggregate the shard models. To
forget a sample, only its shard is retrained, from the checkpoint taken before the
sample's slice (see :mod:`unbake.families.sisa.unlearner`).

Everything that decides a shard's weights is a pure function of the sample IDs (or
subjects), the seed and the configuration:

* a sample's shard and slice come from a keyed hash of its subject (``assignment=
  "subject"``; samples without a subject use their ID) or of its ID (``"hash"``), so
  removing samples never moves the others (:mod:`unbake.families.sisa.layout`);
* inside a shard, rows are ordered by (slice, sample ID), whatever the input order;
* every shard has its own initialisation seed and every slice step its own batch-order
  seed, both derived from the model seed;
* each slice step starts a fresh optimiser and runs single-threaded, on any backend.

Training the same shard from scratch on its remaining data therefore gives bitwise the
weights that restoring a checkpoint and retraining the later slices gives, and every
backend gives the same bits.

The schedule: slice step ``r`` trains on slices ``1..r`` for ``2·epochs/(R+1)`` epochs
(rounded, at least one), the paper's choice, so that the R steps together cost about
what ``epochs`` epochs over the whole shard cost.

>>> from unbake.data import load_dataset
>>> from unbake.training import TrainConfig, fit
>>> ds = load_dataset("digits")
>>> tm = fit(ds.train, n_classes=10, model="logreg", config=TrainConfig.parse(epochs=1),
...          strategy="sisa", strategy_params={"shards": 3, "slices": 2})
>>> tm.describe(), len(tm.module.shards)
('logreg/sisa(shards=3,slices=2)', 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from unbake._threads import pin_threads
from unbake._validation import Interval, Options, hyperparameter
from unbake.backends import BACKEND, RAY_ADDRESS, WORKERS, create_backend
from unbake.data import RowView, Samples
from unbake.exceptions import IntegrityError, InvalidParameterError
from unbake.families.sisa.layout import ShardLayout, key_hashes, shard_seed, step_seed
from unbake.models import ModelSpec, build_model
from unbake.training.base import STRATEGIES, TrainedModel, TrainingStrategy
from unbake.training.config import TrainConfig
from unbake.training.loop import cross_entropy, optimize, resolve_device

__all__ = [
    "SISA",
    "SISAEnsemble",
    "ShardJob",
    "ShardRecipe",
    "checkpoint_key",
    "single_thread",
    "slice_epochs",
    "train_shard",
]

#: Parameters that define the model (persisted); the rest only say where training runs.
MODEL_PARAMS = ("shards", "slices", "assignment", "aggregation")
META_KEY = "sisa"


def slice_epochs(epochs: int, slices: int) -> int:
    """Epochs of each slice step: ``2·epochs/(R+1)``, rounded, at least one (zero stays zero)."""
    if epochs == 0:
        return 0
    return max(1, round(2 * epochs / (slices + 1)))


def checkpoint_key(shard: int, step: int, name: str) -> str:
    """The artifact name of parameter ``name`` of shard ``shard`` after slice step ``step``."""
    return f"sisa.shard{shard}.slice{step}.{name}"


def single_thread():
    """Run single-threaded: the thread count changes float reductions, hence the bits."""
    return pin_threads(1)


class ShardRecipe:
    """How a shard model trains and what its slice checkpoints hold: here, a classifier.

    Its whole state is checkpointed and every parameter trains on cross-entropy.
    :class:`~unbake.families.sisa.lora.LoRARecipe` trains LoRA adapters of a causal LM
    instead. A recipe holds no data, so a job carrying it pickles to any backend.
    """

    def loss(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cross_entropy(module, x, y)

    def rows(self, X: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """What one slice step trains on: the first ``n`` rows of the shard."""
        return X[:n], y[:n]

    def params(self, module: nn.Module) -> list[nn.Parameter] | None:
        """The parameters trained (``None``: all)."""
        return None

    def state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """What a slice checkpoint holds."""
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    def load(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Restore a :meth:`state` into a freshly built shard model."""
        module.load_state_dict(state, strict=True)


@dataclass
class ShardJob:
    """Everything needed to train one shard from slice step ``start`` on, in any process."""

    shard: int
    spec: ModelSpec
    input_shape: tuple[int, ...]
    n_classes: int
    config: TrainConfig
    init_seed: int
    step_seeds: list[int]
    X: np.ndarray | RowView
    y: np.ndarray
    ends: list[int]
    start: int = 0
    state: dict[str, torch.Tensor] | None = None
    device: str = "cpu"
    recipe: ShardRecipe = field(default_factory=ShardRecipe)


def train_shard(job: ShardJob) -> list[dict[str, torch.Tensor]]:
    """Train one shard's slice steps ``start..R-1``; returns the state after each step.

    A top-level function of plain data, so a process pool or Ray can run it.
    """
    recipe = job.recipe
    with single_thread():
        module = build_model(
            job.spec, input_shape=job.input_shape, n_classes=job.n_classes, seed=job.init_seed
        )
        if job.state is not None:
            recipe.load(module, job.state)
        module.to(job.device)
        X = job.X.torch_rows() if isinstance(job.X, RowView) else torch.from_numpy(job.X)
        y = torch.from_numpy(job.y)
        states = []
        for step in range(job.start, len(job.ends)):
            optimize(
                module,
                *recipe.rows(X, y, job.ends[step]),
                job.config,
                seed=job.step_seeds[step],
                loss_fn=recipe.loss,
                params=recipe.params(module),
                description=f"shard {job.shard}, slice {step + 1}/{len(job.ends)}",
            )
            states.append(recipe.state(module))
    return states


class SISAEnsemble(nn.Module):
    """The shard models as one module; ``forward`` returns aggregated log-probabilities.

    ``mean`` averages the shards' probabilities. ``vote`` gives each shard one vote for
    its top class and returns ``(votes + mean probability) / (S + 1)``: a distribution
    whose arg-max is the majority label, with ties broken by the mean probability.
    """

    def __init__(self, shards: Sequence[nn.Module], aggregation: str = "vote") -> None:
        super().__init__()
        self.shards = nn.ModuleList(shards)
        self.aggregation = aggregation

    def shard_keys(self, shard: int) -> list[str]:
        """The names of the tensors a slice checkpoint of ``shard`` holds."""
        return list(self.shards[shard].state_dict())

    def load_shard(self, shard: int, state: dict[str, torch.Tensor]) -> None:
        """Make ``state`` the weights of ``shard``."""
        self.shards[shard].load_state_dict(state, strict=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([torch.log_softmax(m(x), dim=-1) for m in self.shards])
        n = len(self.shards)
        log_mean = torch.logsumexp(log_probs, dim=0) - float(np.log(n))
        if self.aggregation == "mean":
            return log_mean
        n_classes = log_probs.shape[-1]
        votes = nn.functional.one_hot(log_probs.argmax(-1), n_classes).sum(0)
        scores = (votes.to(log_mean.dtype) + log_mean.exp()) / (n + 1)
        return torch.log(scores.clamp_min(torch.finfo(scores.dtype).tiny))


@STRATEGIES.register("sisa")
class SISA(TrainingStrategy):
    """Sharded, isolated, sliced, aggregated training (Bourtoule et al., IEEE S&P 2021).

    S disjoint ``shards``, each cut into R ``slices`` trained incrementally. With
    ``assignment="subject"`` all of one subject's samples share a shard (and a slice), so
    deleting a person touches one shard; samples without a subject use their ID. The
    execution options ``backend``, ``workers`` and ``ray_address`` (see
    :mod:`unbake.backends`) change the wall time, never the weights, and are not stored
    with the model. Each hyperparameter is declared once, as a field with its default,
    allowed values and help; the docs' table of the strategies' parameters lists them.
    """

    name = "sisa"
    label_params = ("shards", "slices")
    output = "log_probs"  # SISAEnsemble aggregates the shards' log-probabilities
    #: How each shard model trains and what its checkpoints hold.
    recipe: ClassVar[type[ShardRecipe]] = ShardRecipe

    shards: int = hyperparameter(
        5,
        help="Disjoint shards S, one model each.",
        constraints=[Interval(int, 1, None, closed="left")],
    )
    slices: int = hyperparameter(
        1,
        help="Slices R per shard, trained incrementally with a checkpoint after each.",
        constraints=[Interval(int, 1, None, closed="left")],
    )
    assignment: str = hyperparameter(
        "subject",
        help="How samples go to shards: by subject (a person's samples share one) or by ID hash.",
        constraints=[Options({"subject", "hash"})],
    )
    aggregation: str = hyperparameter(
        "vote",
        help="How the shards' predictions combine: majority vote or mean probability.",
        constraints=[Options({"vote", "mean"})],
    )
    backend: str = BACKEND("local")
    workers: int = WORKERS(1)
    ray_address: str | None = RAY_ADDRESS(None)

    def model_params(self) -> dict[str, Any]:
        """The parameters that define the model, as stored with it."""
        return {k: v for k, v in self.get_params().items() if k in MODEL_PARAMS}

    def validate(self, samples: Samples | None = None) -> None:
        super().validate()
        if samples is None:
            return
        self._check_kind(samples)
        n_keys = len(np.unique(key_hashes(samples, self.assignment)))  # by 64-bit hash
        if self.shards > n_keys:
            loose = int(np.sum(samples.subjects.astype(str) == ""))
            what = f"{n_keys} samples"
            if self.assignment == "subject" and loose < len(samples):
                what = f"{n_keys - loose} subjects and {loose} samples without a subject"
            raise InvalidParameterError(
                f"The 'shards' parameter of {self.name} is {self.shards}, more than the {what} to "
                f"spread over shards; use --shards {n_keys} or fewer."
            )

    def _check_kind(self, samples: Samples) -> None:
        """SISA trains classifiers on arrays; text goes to ``sisa_lora``."""
        if not hasattr(samples, "X"):
            raise InvalidParameterError(
                "The sisa strategy trains classifiers on arrays, and this dataset is text; "
                "for a language model use --strategy sisa_lora with --param lora_rank=R."
            )

    def shard_data(
        self, samples: Samples, rows: np.ndarray, spec: ModelSpec
    ) -> tuple[np.ndarray, np.ndarray]:
        """The training arrays of one shard: ``rows`` of ``samples``, in that order."""
        if isinstance(samples.X, RowView):  # streamed: the shard is a view, read by batch
            return samples.X.view(rows), np.ascontiguousarray(samples.y[rows])
        return np.ascontiguousarray(samples.X[rows]), np.ascontiguousarray(samples.y[rows])

    def layout(self, samples: Samples, seed: int) -> ShardLayout:
        return ShardLayout.of(
            samples,
            shards=self.shards,
            slices=self.slices,
            assignment=self.assignment,
            seed=seed,
        )

    def run(self, jobs: list[ShardJob]) -> list[list[dict[str, torch.Tensor]]]:
        """Train ``jobs`` on this strategy's backend."""
        backend = create_backend(self.backend, workers=self.workers, ray_address=self.ray_address)
        return backend.map(train_shard, jobs)

    def job(
        self,
        samples: Samples,
        layout: ShardLayout,
        shard: int,
        *,
        spec: ModelSpec,
        config: TrainConfig,
        seed: int,
        n_classes: int,
        device: torch.device,
        start: int = 0,
        state: dict[str, torch.Tensor] | None = None,
    ) -> ShardJob:
        """The job that trains ``shard`` of ``samples`` from slice step ``start`` on."""
        rows, ends = layout.rows(shard)
        step_config = config.model_copy(update={"epochs": slice_epochs(config.epochs, self.slices)})
        X, y = self.shard_data(samples, rows, spec)
        return ShardJob(
            shard=shard,
            spec=spec,
            input_shape=samples.input_shape,
            n_classes=n_classes,
            config=step_config,
            init_seed=shard_seed(seed, shard),
            step_seeds=[step_seed(seed, shard, r) for r in range(self.slices)],
            X=X,
            y=y,
            ends=ends,
            start=start,
            state=state,
            device=str(device),
            recipe=self.recipe(),
        )

    def fit(self, samples, *, spec, config, seed, n_classes, device=None) -> TrainedModel:
        self.validate(samples)
        layout = self.layout(samples, seed)
        sizes = layout.sizes().sum(axis=1)
        empty = np.flatnonzero(sizes == 0)
        if len(empty):
            raise InvalidParameterError(
                f"{self.name} shard {int(empty[0])} of {self.shards} gets no samples with seed {seed} "
                f"({len(empty)} empty shards in all); use fewer --shards or another --seed."
            )
        device = resolve_device(device)
        jobs = [
            self.job(
                samples,
                layout,
                s,
                spec=spec,
                config=config,
                seed=seed,
                n_classes=n_classes,
                device=device,
            )
            for s in range(self.shards)
        ]
        results = self.run(jobs)
        with single_thread():
            module = self.skeleton(spec, samples.input_shape, n_classes)
            model = TrainedModel(
                module,
                spec,
                config,
                seed,
                samples.input_shape,
                n_classes,
                strategy=self.name,
                strategy_params=self.model_params(),
            )
            for job, states in zip(jobs, results, strict=True):
                install_states(model, job.shard, job.start, states)
        model.meta = layout_meta(layout, config, self.slices)
        model.module.to(device).eval()
        return model

    def skeleton(self, spec: ModelSpec, input_shape: Sequence[int], n_classes: int) -> nn.Module:
        shards = [
            build_model(spec, input_shape=input_shape, n_classes=n_classes, seed=0)
            for _ in range(self.shards)
        ]
        return SISAEnsemble(shards, self.aggregation)


def install_states(
    model: TrainedModel, shard: int, start: int, states: list[dict[str, torch.Tensor]]
) -> None:
    """Put the states of slice steps ``start..R-1`` of ``shard`` into ``model``.

    The last step's state becomes the shard's weights; the earlier ones are kept as
    checkpoint artifacts (the last checkpoint *is* the shard's weights, so it is not
    stored twice).
    """
    slices = start + len(states)
    for offset, state in enumerate(states):
        step = start + offset
        if step == slices - 1:
            model.module.load_shard(shard, state)
        else:
            for name, value in state.items():
                model.artifacts[checkpoint_key(shard, step, name)] = value


def restore_state(model: TrainedModel, shard: int, step: int) -> dict[str, torch.Tensor]:
    """The state of ``shard`` after slice step ``step`` (a stored checkpoint)."""
    names = model.module.shard_keys(shard)
    try:
        return {name: model.artifacts[checkpoint_key(shard, step, name)] for name in names}
    except KeyError as exc:
        raise IntegrityError(
            f"The SISA model lacks the checkpoint of shard {shard} after slice {step + 1} "
            f"({exc.args[0]}); the checkpoint file is incomplete: retrain the model."
        ) from None


def layout_meta(layout: ShardLayout, config: TrainConfig, slices: int) -> dict[str, Any]:
    """What the model records about its shards: sizes, ID fingerprints and the schedule."""
    return {
        META_KEY: {
            "version": 1,
            "slice_epochs": slice_epochs(config.epochs, slices),
            "sizes": layout.sizes().tolist(),
            "fingerprints": layout.fingerprints(),
        }
    }
