"""SCRUB: a student that moves away from a frozen teacher on the forget set only."""

from __future__ import annotations

from unbake._validation import Interval, Options, hyperparameter
from unbake.methods._blocks import (
    TEMPERATURE,
    LoopUnlearner,
    ce,
    frozen_teacher,
    kl_distill,
    perturb_,
)
from unbake.methods.base import (
    BATCH_SIZE,
    EPOCHS,
    LR,
    RETAIN_SAMPLES,
    Knob,
    MethodTags,
    register_method,
)
from unbake.training.loop import Phase


@register_method
class SCRUB(LoopUnlearner):
    """SCRUB (Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023).

        teacher ← a frozen copy of θ_o; student θ ← θ_o + ε·rms(θ_o)·N(0, I)
        for epoch in 1..epochs:
            if epoch ≤ max_epochs:  for K seeded forget batches B_f:   (max steps)
                θ ← θ + η ∇ KL(teacher(B_f) ‖ student(B_f))
            for each retain batch B_r:                                 (min steps)
                θ ← θ − η ∇[ α·KL(teacher(B_r) ‖ student(B_r)) + γ·ℓ(B_r) ]

    The max step climbs a KL that has no top: once the student disagrees with the
    teacher, the gradient on its logits stays near T·(p_student − p_teacher) and never
    fades, so how far the max phase goes is set by how many steps it takes. Hence K, at
    most ``max_steps`` forget batches per max epoch (a fresh seeded draw each epoch), as
    the authors' released ``scrub.py`` runs a fixed count of max iterations per epoch;
    ``None`` walks the whole forget set, ⌈forget rows / ``forget_batch_size``⌉ steps: 338
    per epoch on a Fashion-MNIST random 10%, where every tuning trial collapsed the model. On
    a digits random 10% with ``forget_batch_size=1`` (123 rows, so 123 steps), the
    defaults leave 8% test accuracy uncapped and 95% (the original's) at K = 8
    (``tests/test_scrub.py`` asserts both). The searched range runs from 1 (the released
    code's default) to 8.

    Where the student *is* the teacher, the KL is at its minimum and its gradient is
    exactly zero: the first max phase cannot move, and later ones only follow what the
    min steps have separated. The paper's networks never sit there: their student runs
    in train mode, where batch-norm and dropout noise set it apart from the eval-mode
    teacher. unbake's ``mlp`` and ``cnn`` have neither, so the student starts from the
    original plus seeded Gaussian noise of relative size ``init_noise`` (ε, per tensor,
    times its root mean square; 0 gives the bare recipe). At the default 1e-3 it changes
    no prediction of the digits models and a probability by under 0.003, yet the first
    max step has a gradient to follow. Steps run with ``optimizer``: Adam by default,
    which scales that step to ``lr``, as in the paper's small-scale experiments; "sgd"
    (with the original's momentum, 0.9 by default) is its large-scale recipe, which on
    unbake's small models barely moves at the searched rates (digits class 0 stays 100%
    known at lr 1e-3; the conformance forgetting check fails at 1e-2), so it is offered
    but not searched. As in the paper, max steps run only in the first ``max_epochs``
    epochs (2) and on forget batches smaller than the retain batches
    (``forget_batch_size``, a quarter of ``batch_size`` by default, as the paper's 32
    against 128). KL at temperature ``temperature``.

    When to use: when the forget set should look like unseen data while retain
    behaviour stays the teacher's.
    """

    name = "scrub"
    tags = MethodTags(
        cost="`epochs` passes over the `retain_samples` retain rows and at most `max_steps` "
        "forget batches in each of the first `max_epochs`, with a teacher forward pass per step"
    )
    search_space = {
        **LoopUnlearner.search_space,
        "max_epochs": Knob(1, 4),
        "alpha": Knob(0.1, 10.0, log=True),
        "temperature": Knob(1.0, 4.0),
        "init_noise": Knob(1e-4, 1e-1, log=True),
        "forget_batch_size": Knob(8, 64),
        "max_steps": Knob(1, 8, log=True),
    }

    epochs: int = EPOCHS(5)
    max_epochs: int = hyperparameter(
        2,
        help="The first epochs that run max steps on the forget set.",
        constraints=[Interval(int, 0, None, closed="left")],
    )
    lr: float = LR(1e-3)
    batch_size: int = BATCH_SIZE(64)
    retain_samples: int | None = RETAIN_SAMPLES(None)
    alpha: float = hyperparameter(
        1.0,
        help="Weight α of the KL to the teacher in the min steps.",
        constraints=[Interval(float, 0, None, closed="left")],
    )
    gamma: float = hyperparameter(
        1.0,
        help="Weight γ of the retain cross-entropy in the min steps.",
        constraints=[Interval(float, 0, None, closed="left")],
    )
    temperature: float = TEMPERATURE(2.0)
    init_noise: float = hyperparameter(
        1e-3,
        help="Relative size ε of the seeded noise the student starts with (0: none).",
        constraints=[Interval(float, 0, None, closed="left")],
    )
    forget_batch_size: int = hyperparameter(
        16,
        help="Rows per forget batch of the max steps.",
        constraints=[Interval(int, 1, None, closed="left")],
    )
    max_steps: int | None = hyperparameter(
        8,
        help="Forget batches per max epoch, a fresh seeded draw each (None: all of them).",
        constraints=[Interval(int, 1, None, closed="left"), None],
    )
    optimizer: str = hyperparameter(
        "adam", help="The optimiser its steps run with.", constraints=[Options({"adam", "sgd"})]
    )

    def _phases(self, task, model, seed):
        teacher = frozen_teacher(model.module)
        perturb_(model.module, self.init_noise, seed)
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
                phases.append(
                    Phase(
                        "forget",
                        max_step,
                        name="max",
                        batch_size=self.forget_batch_size,
                        steps=self.max_steps,
                    )
                )
            phases.append(Phase("retain", min_step, name="min"))
        return phases, []
