"""The ``monolithic`` training strategy: one model trained on all samples.

``sisa`` (:mod:`unbake.families.sisa.strategy`) trains an ensemble of shard models and
``certified`` (:mod:`unbake.families.certified.strategy`) a noisy convex model; ``retrain``
re-runs a model's own strategy from scratch, which is what makes it exact. What they
share (:class:`~unbake.training.base.TrainedModel`, the base class and the registry)
is in :mod:`unbake.training.base`.
"""

from __future__ import annotations

from unbake._validation import Interval, hyperparameter
from unbake.data import TextSamples
from unbake.exceptions import InvalidParameterError
from unbake.models import build_checked
from unbake.training.base import STRATEGIES, TrainedModel, TrainingStrategy
from unbake.training.loop import optimize, resolve_device
from unbake.training.trajectory import TrajectoryHook, checkpoint_steps

__all__ = ["Monolithic"]


@STRATEGIES.register("monolithic")
class Monolithic(TrainingStrategy):
    """One model trained on all samples: the classic setting, and the retrain reference.

    ``checkpoints`` keeps that many checkpoints spaced evenly over training, with their
    learning rates, for the ``tracin`` detector (:mod:`unbake.training.trajectory`); the
    weights are the same with or without them. Given :class:`~unbake.data.TextSamples` and an ``hf:`` model, it fine-tunes the
    language model on the answers (:func:`unbake.training.lm.fit_causal_lm`).
    """

    name = "monolithic"

    checkpoints: int = hyperparameter(
        0,
        help="Training checkpoints kept, spaced evenly, for the tracin detector (0: none).",
        constraints=[Interval(int, 0, None)],
    )

    def fit(self, samples, *, spec, config, seed, n_classes, device=None) -> TrainedModel:
        self.validate()
        if isinstance(samples, TextSamples):
            if self.checkpoints:
                raise InvalidParameterError(
                    "Training checkpoints (checkpoints=N) are kept for classifiers on arrays "
                    "only, not for language models; drop the checkpoints parameter."
                )
            from unbake.training.lm import fit_causal_lm

            module = fit_causal_lm(samples, spec=spec, config=config, seed=seed, device=device)
            return TrainedModel(module, spec, config, seed, (), 0, strategy=self.name)
        device = resolve_device(device)
        module = build_checked(
            spec, input_shape=samples.input_shape, n_classes=n_classes, seed=seed
        ).to(device)
        X, y = samples.tensors()
        steps = config.epochs * -(-len(y) // config.batch_size)
        hooks = []
        if self.checkpoints and steps:
            hooks = [TrajectoryHook(checkpoint_steps(steps, min(self.checkpoints, steps)))]
        optimize(module, X, y, config, seed=seed, description=f"training {spec.label}", hooks=hooks)
        model = TrainedModel(
            module, spec, config, seed, samples.input_shape, n_classes, strategy=self.name
        )
        if self.checkpoints:
            model.strategy_params = self.get_params()
        for hook in hooks:
            hook.store(model)
        return model
