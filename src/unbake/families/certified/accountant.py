"""The (ε, δ) budget of certified removal, kept in an accountant object with its own state.

In the manner of Opacus's privacy accountants: an accountant is created by the name of
its mechanism from a small registry (:data:`ACCOUNTANTS`, :func:`create_accountant`),
is told about each removal with :meth:`~Accountant.step`, answers
:meth:`~Accountant.get_epsilon` for any δ, and saves and restores its state with
:meth:`~Accountant.state_dict` / :meth:`~Accountant.load_state_dict`, which refuse a
state written by another mechanism or with other parameters. The pure maths comes first,
as functions of numbers only.

The one mechanism today is Guo, Goldstein, Hannun and van der Maaten's (ICML 2020,
Theorem 3): objective perturbation with Gaussian noise ``b ~ N(0, σ² I)`` hides a
gradient residual of norm ``β`` at (ε, δ) when ``β ≤ σε/c`` with ``c = √(2 ln(1.5/δ))``,
so the ε a residual needs at δ is ``c β / σ``. Its accountant,
:class:`GradientResidualAccountant`, keeps per output the exactly known part of the
residual and the accumulated bound on the rest; a retrain with fresh noise starts it
afresh.

>>> acc = create_accountant("gradient_residual", sigma=1.0, epsilon=1.0, delta=1e-5)
>>> acc.start(torch.zeros(2, dtype=torch.float64))
>>> two = lambda a, b: torch.tensor([a, b], dtype=torch.float64)  # one value per output
>>> acc.step(residual=two(0.03, 0.0), added=two(0.0, 0.04), removed=1)
>>> round(acc.spent, 12), round(acc.get_epsilon(1e-5) / gaussian_constant(1e-5), 12)
(0.05, 0.05)
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from unbake._validation import Interval, validate_params
from unbake.exceptions import IntegrityError, InvalidParameterError
from unbake.registry import Registry
from unbake.training import get_params

__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "GradientResidualAccountant",
    "create_accountant",
    "epsilon_of_residual",
    "gaussian_constant",
    "residual_budget",
]


# --- pure maths --------------------------------------------------------------------------


def gaussian_constant(delta: float) -> float:
    """``c = √(2 ln(1.5/δ))`` from Theorem 3 of Guo et al. (2020)."""
    return math.sqrt(2.0 * math.log(1.5 / delta))


def residual_budget(*, sigma: float, epsilon: float, delta: float) -> float:
    """The gradient residual norm that noise of scale ``sigma`` hides at (ε, δ): ``σε/c``.

    >>> round(residual_budget(sigma=1.0, epsilon=1.0, delta=1e-5), 4)
    0.2048
    """
    return sigma * epsilon / gaussian_constant(delta)


def epsilon_of_residual(residual: float, *, sigma: float, delta: float) -> float:
    """The ε at which noise of scale ``sigma`` hides a residual of norm ``residual``: ``cβ/σ``.

    The inverse of :func:`residual_budget` in ε.

    >>> eps = epsilon_of_residual(residual_budget(sigma=2.0, epsilon=0.5, delta=1e-6),
    ...                           sigma=2.0, delta=1e-6)
    >>> round(eps, 12)
    0.5
    """
    return gaussian_constant(delta) * residual / sigma


# --- accountants -------------------------------------------------------------------------


class Accountant:
    """Base class: the running (ε, δ) account of one model, saved with it.

    Subclasses set :attr:`mechanism` (their registry name), take their parameters as
    keyword-only constructor arguments, and implement :meth:`step`, :meth:`get_epsilon`
    and the state of :meth:`_state` / :meth:`_load`.
    """

    mechanism: ClassVar[str]
    #: Version of the saved state's layout; :meth:`load_state_dict` refuses others.
    version: ClassVar[int] = 1
    _parameter_constraints: ClassVar[dict[str, list]] = {}

    def get_params(self) -> dict[str, Any]:
        return get_params(self)

    def step(self, **kwargs: Any) -> None:
        """Account for one removal."""
        raise NotImplementedError

    def get_epsilon(self, delta: float) -> float:
        """The ε spent so far at ``delta``."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The accountant's state as JSON-serialisable data, tagged with its mechanism."""
        return {
            "mechanism": self.mechanism,
            "version": self.version,
            "params": self.get_params(),
            **self._state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; another mechanism, version or parameters raise."""
        mechanism = state.get("mechanism")
        if mechanism != self.mechanism:
            raise IntegrityError(
                f"The saved accountant state is for mechanism {mechanism!r}, not "
                f"{self.mechanism!r}; load it into create_accountant({mechanism!r}, ...)."
            )
        if state.get("version") != self.version:
            raise IntegrityError(
                f"The saved {self.mechanism} accountant state has version "
                f"{state.get('version')!r}, not {self.version}; retrain the model with this "
                "version of unbake."
            )
        params, mine = state.get("params"), self.get_params()
        if params != mine:
            raise IntegrityError(
                f"The saved {self.mechanism} accountant was made with {params}, but this one "
                f"has {mine}; the model's metadata does not match its parameters: retrain it."
            )
        try:
            self._load(state)
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(
                f"The saved {self.mechanism} accountant state is incomplete or malformed "
                f"({type(exc).__name__}: {exc}); retrain the model."
            ) from None

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


ACCOUNTANTS: Registry[Accountant] = Registry("privacy accountant")


def create_accountant(mechanism: str, /, **params: Any) -> Accountant:
    """The accountant registered as ``mechanism``, with ``params``, validated.

    >>> create_accountant("gradient_residual", sigma=1.0, epsilon=0.5, delta=1e-5).mechanism
    'gradient_residual'
    """
    accountant = ACCOUNTANTS.create(mechanism, **params)
    validate_params(accountant.get_params(), accountant._parameter_constraints, mechanism)
    return accountant


@ACCOUNTANTS.register("gradient_residual")
class GradientResidualAccountant(Accountant):
    """The gradient-residual account of certified removal (Guo et al., ICML 2020, Thm. 3).

    Per one-vs-rest output it keeps the norm of the part of the gradient residual known
    exactly (the optimiser's and the linear solves') and the accumulated bound on the
    second-order remainders; outputs combine in the Euclidean norm, as their noise
    vectors together form one Gaussian vector. The model stays (ε, δ)-certified while
    :attr:`spent` ≤ :attr:`budget` ``= σε/c``; a removal that would go over is refused
    by :meth:`step`, and the model retrains with fresh noise instead
    (:meth:`record_retrain`, then :meth:`start`).
    """

    mechanism = "gradient_residual"
    _parameter_constraints = {
        "sigma": [Interval(float, 0, None, closed="neither")],
        # Theorem 3 rests on the Gaussian mechanism's analysis, which holds for ε ≤ 1.
        "epsilon": [Interval(float, 0, 1, closed="right")],
        "delta": [Interval(float, 0, 1, closed="neither")],
    }

    def __init__(self, *, sigma: float, epsilon: float, delta: float) -> None:
        self.sigma = sigma
        self.epsilon = epsilon
        self.delta = delta
        self.residual = torch.zeros(0, dtype=torch.float64)
        self.bound = torch.zeros(0, dtype=torch.float64)
        self.removals_since_retrain = 0
        self.removed_total = 0
        self.retrains = 0
        self.retrain_log: list[dict[str, Any]] = []
        self.training_residual = 0.0

    @property
    def budget(self) -> float:
        """The residual norm the noise hides at the target (ε, δ): ``σε/c``."""
        return residual_budget(sigma=self.sigma, epsilon=self.epsilon, delta=self.delta)

    @property
    def spent(self) -> float:
        """The bound on the current gradient residual's norm."""
        return _norm(self.residual, self.bound)

    @property
    def remaining(self) -> float:
        """The residual norm still to spend before a retrain: ``budget − spent``."""
        return self.budget - self.spent

    def fits(self, spent: float) -> bool:
        """Whether a residual bound of ``spent`` is within what the noise hides."""
        return spent <= self.budget

    def spent_after(self, *, residual: torch.Tensor, added: torch.Tensor) -> float:
        """What :attr:`spent` would be after :meth:`step` with these arguments."""
        return _norm(_cpu(residual), self.bound + _cpu(added))

    def start(self, residual: torch.Tensor) -> None:
        """A fresh optimum (with fresh noise): only its known ``residual`` norms, no bound."""
        self.residual = _cpu(residual)
        self.bound = torch.zeros_like(self.residual)
        self.removals_since_retrain = 0
        self.training_residual = self.spent

    def step(self, *, residual: torch.Tensor, added: torch.Tensor, removed: int) -> None:
        """Account for a Newton step removing ``removed`` samples.

        ``residual``: the per-output norms of the residual now known exactly; ``added``:
        the per-output bound on the step's second-order remainder. Going over the budget
        raises and changes nothing: retrain instead (:meth:`record_retrain`).
        """
        spent = self.spent_after(residual=residual, added=added)
        if not self.fits(spent):
            raise InvalidParameterError(
                f"Removing {removed} samples would spend a gradient residual of {spent:.3g}, "
                f"above the budget {self.budget:.3g} (sigma={self.sigma:g}, epsilon="
                f"{self.epsilon:g}, delta={self.delta:g}); retrain on the remaining data instead."
            )
        self.residual = _cpu(residual)
        self.bound = self.bound + _cpu(added)
        self.removals_since_retrain += removed
        self.removed_total += removed

    def record_retrain(self, *, removed: int, would_spend: float) -> None:
        """Log a retrain forced by a removal of ``removed`` samples that would spend
        ``would_spend``; call :meth:`start` once the new model is trained."""
        self.removed_total += removed
        self.retrain_log.append(
            {
                "after_removals": self.removals_since_retrain + removed,
                "removed_total": self.removed_total,
                "spent_before": self.spent,
                "would_spend": would_spend,
            }
        )
        self.retrains += 1

    def get_epsilon(self, delta: float) -> float:
        """The ε at which the noise hides the residual spent so far, at ``delta``.

        At the target δ this is at most the target ε (the model retrains rather than go
        over); Theorem 3 covers ε ≤ 1 only.
        """
        validate_params({"delta": delta}, self._parameter_constraints, "get_epsilon")
        return epsilon_of_residual(self.spent, sigma=self.sigma, delta=delta)

    def _state(self) -> dict[str, Any]:
        return {
            "residual": [float(v) for v in self.residual],
            "bound": [float(v) for v in self.bound],
            "removals_since_retrain": self.removals_since_retrain,
            "removed_total": self.removed_total,
            "retrains": self.retrains,
            "retrain_log": [dict(event) for event in self.retrain_log],
            "training_residual": self.training_residual,
        }

    def _load(self, state: dict[str, Any]) -> None:
        residual = torch.tensor(state["residual"], dtype=torch.float64)
        bound = torch.tensor(state["bound"], dtype=torch.float64)
        if residual.shape != bound.shape or residual.dim() != 1:
            raise ValueError("'residual' and 'bound' must be lists of the same length")
        self.residual, self.bound = residual, bound
        self.removals_since_retrain = int(state["removals_since_retrain"])
        self.removed_total = int(state["removed_total"])
        self.retrains = int(state["retrains"])
        self.retrain_log = [dict(event) for event in state["retrain_log"]]
        self.training_residual = float(state["training_residual"])


def _cpu(values: torch.Tensor) -> torch.Tensor:
    return values.detach().to("cpu", torch.float64)


def _norm(residual: torch.Tensor, bound: torch.Tensor) -> float:
    """The Euclidean norm over outputs of each output's ``residual + bound``."""
    return float((residual + bound).norm())
