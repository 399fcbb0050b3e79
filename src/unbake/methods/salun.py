"""SalUn: random-label updates confined to the weights salient for the forget loss."""

from __future__ import annotations

from unbake._validation import Interval, hyperparameter
from unbake.methods._blocks import GradientMask, saliency_mask
from unbake.methods.base import Knob, MethodTags, register_method
from unbake.methods.random_label import RandomLabel


@register_method
class SalUn(RandomLabel):
    """SalUn (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight
    Saliency", ICLR 2024).

        g ← ∇θ ℓ(D_f; θ_o)                           (one pass over the forget set)
        m ← 1[|g| ≥ the top-``fraction`` quantile of |g|]   (global, over all weights)
        run ``random_label`` with every update multiplied by m; weights outside m keep
        their values and optimiser state

    When to use: the default for deep networks when retain data exists; touching only the
    salient weights keeps retain and test accuracy close to the original.
    """

    name = "salun"
    tags = MethodTags(
        cost="one gradient over the forget set, then `epochs` passes over the `retain_samples` retain rows"
    )
    search_space = {**RandomLabel.search_space, "fraction": Knob(0.1, 0.9)}

    fraction: float = hyperparameter(
        0.5,
        help="Share of the weights, largest forget-loss gradient first, that updates may change.",
        constraints=[Interval(float, 0, 1, closed="right")],
    )

    def _phases(self, task, model, seed):
        phases, _ = super()._phases(task, model, seed)
        X_f, y_f = task.forget.tensors()
        mask = saliency_mask(model.module, X_f, y_f, self.fraction)
        return phases, [GradientMask(mask)]
