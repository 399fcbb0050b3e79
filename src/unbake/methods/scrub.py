"""SCRUB: a student that moves away from a frozen teacher on the forget set only."""

from __future__ import annotations

from unbake._validation import Interval
from unbake.methods._blocks import LoopUnlearner, ce, frozen_teacher, kl_distill
from unbake.methods.base import Knob, MethodTags, register_method
from unbake.training.loop import Phase


@register_method
class SCRUB(LoopUnlearner):
    """SCRUB (Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023).

        teacher ← a frozen copy of θ_o; student θ ← θ_o
        for epoch in 1..epochs:
            if epoch ≤ max_epochs:  for each forget batch B_f:      (max step)
                θ ← θ + η ∇ KL(teacher(B_f) ‖ student(B_f))
            for each retain batch B_r:                                 (min step)
                θ ← θ − η ∇[ α·KL(teacher(B_r) ‖ student(B_r)) + γ·ℓ(B_r) ]

    At the start the student *is* the teacher, where the KL and its gradient are zero, so
    the first max phase does nothing; the forget set moves only after min steps have
    separated the two, which is why it needs several epochs. KL at temperature
    ``temperature``. When to use: when the forget set should look like
    unseen data while retain behaviour stays the teacher's. Cost: a teacher forward pass
    per step, ``max_epochs`` passes over the forget set and ``epochs`` over the retain set.
    """

    name = "scrub"
    tags = MethodTags(
        cost="`epochs` passes over the retain set and `max_epochs` over the forget set, "
        "with a teacher forward pass per step"
    )
    _parameter_constraints = {
        **LoopUnlearner._parameter_constraints,
        "max_epochs": [Interval(int, 0, None, closed="left")],
        "alpha": [Interval(float, 0, None, closed="left")],
        "gamma": [Interval(float, 0, None, closed="left")],
        "temperature": [Interval(float, 0, None, closed="neither")],
    }
    search_space = {
        **LoopUnlearner.search_space,
        "max_epochs": Knob(1, 4),
        "alpha": Knob(0.1, 10.0, log=True),
        "temperature": Knob(1.0, 4.0),
    }

    def __init__(
        self,
        *,
        epochs: int = 5,
        max_epochs: int = 4,
        lr: float = 1e-3,
        batch_size: int = 64,
        alpha: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 2.0,
    ) -> None:
        self.epochs = epochs
        self.max_epochs = max_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.alpha = alpha
        self.gamma = gamma
        self.temperature = temperature

    def _phases(self, task, model, seed):
        teacher = frozen_teacher(model.module)
        t = self.temperature

        def max_step(m, got, _):
            x, _y = got["forget"]
            return -kl_distill(m(x), teacher(x), t)

        def min_step(m, got, _):
            x, _y = got["retain"]
            return self.alpha * kl_distill(m(x), teacher(x), t) + self.gamma * ce(m, got["retain"])

        phases = []
        for epoch in range(self.epochs):
            if epoch < self.max_epochs:
                phases.append(Phase("forget", max_step, name="max"))
            phases.append(Phase("retain", min_step, name="min"))
        return phases, []
