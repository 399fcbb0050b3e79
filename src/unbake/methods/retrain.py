"""Retrain from scratch: the exact gold standard every other method is measured against."""

from __future__ import annotations

from unbake._validation import Interval, hyperparameter
from unbake.exceptions import InvalidParameterError
from unbake.methods.base import MethodTags, Unlearner, UnlearnTask, register_method
from unbake.training import OwnLoop


@register_method
class Retrain(Unlearner):
    """Train the original's architecture, strategy and config from scratch on the retain set.

    The architecture is the model's factory and the training its recipe: unbake's loop
    with its config, or the user's own training function
    (:func:`unbake.training.adopt`); a model adopted without either is refused.

    With the original seed the result is bitwise the model that would have been trained
    had the forget set never existed, so it is *exact* by construction.
    """

    name = "retrain"
    tags = MethodTags(
        exact=True,
        reads=("retain",),
        cost="a full training run on the retain set",
        inputs=("arrays", "text"),
    )

    epochs: int | None = hyperparameter(
        None,
        help="Training epochs (None: the original's; any other value is no longer exact).",
        constraints=[Interval(int, 0, None, closed="left"), None],
    )

    def _unlearn(self, task: UnlearnTask, seed: int):
        original = task.original
        config = original.config
        if self.epochs is not None:
            if original.strategy == OwnLoop.name:
                raise InvalidParameterError(
                    "retrain's epochs sets unbake's loop, and this model trains with your own "
                    "function, whose config sets its epochs; drop --param epochs."
                )
            config = config.model_copy(update={"epochs": self.epochs})
        model = original.make_strategy().fit(
            task.retain,
            spec=original.spec,
            config=config,
            seed=seed,
            n_classes=original.n_classes,
            device=task.device,
        )
        return model, {"retrained_samples": len(task.retain)}
