"""Representation Misdirection for Unlearning (RMU) on a causal language model."""

from __future__ import annotations

import torch
from torch import nn

from unbake._validation import Interval, hyperparameter
from unbake.methods._blocks import frozen_teacher
from unbake.methods._lm import RETAIN_WEIGHT, LMUnlearner, lm_tags
from unbake.methods.base import BATCH_SIZE, EPOCHS, LR, register_method
from unbake.training.loop import Phase

__all__ = ["RMU"]


def _hidden(model: nn.Module, batch, layer: int) -> torch.Tensor:
    """The residual stream after ``layer`` at the answer tokens, one row per token."""
    ids, labels = batch
    states = model(input_ids=ids, output_hidden_states=True).hidden_states
    return states[layer][labels != -100]


@register_method
class RMU(LMUnlearner):
    """Representation Misdirection for Unlearning.

    Li et al., "The WMDP Benchmark: Measuring and Reducing Malicious Use with Unlearning"
    (ICML 2024). A fixed random unit vector ``u`` is drawn once (seeded); at one layer the
    forget set's activations are pushed towards ``steering · u`` while the retain set's
    are held to the frozen original's:

        L = mean‖h_θ(x_f) − c·u‖² + retain_weight · mean‖h_θ(x_r) − h_ref(x_r)‖²

    Activations are read at the answer tokens. ``layer`` counts from 1 (0: the middle).
    Unlike the paper, every trainable parameter is updated, not only three MLPs.
    """

    name = "rmu"
    tags = lm_tags(cost="`epochs` passes over the forget set, each paired with retain batches")

    epochs: int = EPOCHS(2)
    lr: float = LR(1e-4)
    batch_size: int = BATCH_SIZE(8)
    layer: int = hyperparameter(
        0,
        help="The layer whose activations are steered, counting from 1 (0: the middle one).",
        constraints=[Interval(int, 0, None, closed="left")],
    )
    steering: float = hyperparameter(
        6.5,
        help="Length c of the random direction the forget activations are pushed to.",
        constraints=[Interval(float, 0, None, closed="neither")],
    )
    retain_weight: float = RETAIN_WEIGHT(1.0)

    def _phases(self, task, model, seed):
        config = model.module.config
        layer = self.layer or max(1, config.num_hidden_layers // 2)
        if layer > config.num_hidden_layers:
            from unbake.exceptions import InvalidParameterError

            raise InvalidParameterError(
                f"The 'layer' parameter of rmu must be at most {config.num_hidden_layers} "
                f"(the model's layers). Got {layer} instead."
            )
        gen = torch.Generator().manual_seed(int(seed))
        u = torch.rand(config.hidden_size, generator=gen)
        target = self.steering * u / u.norm()
        reference = frozen_teacher(model.module)

        def step(m, got, _):
            h = _hidden(m, got["forget"], layer)
            loss = (h - target.to(h.device)).pow(2).mean()
            if "retain" in got and self.retain_weight:
                with torch.no_grad():
                    ref = _hidden(reference, got["retain"], layer)
                loss = (
                    loss
                    + self.retain_weight * (_hidden(m, got["retain"], layer) - ref).pow(2).mean()
                )
            return loss

        return [Phase("forget", step, self.epochs, paired=("retain",))], []
