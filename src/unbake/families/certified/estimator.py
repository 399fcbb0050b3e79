"""Certified removal for L2-regularised logistic regression (Guo et al., ICML 2020).

Guo, Goldstein, Hannun and van der Maaten, "Certified Data Removal from Machine
Learning Models" (ICML 2020). Training minimises, for each one-vs-rest output ``k``,
the *sum-form* objective on the ``n`` remaining samples

    F_k(w) = Σᵢ log(1 + exp(−yᵢₖ wᵀφᵢ)) + λn/2 ‖w‖² + b_kᵀw,   b_k ~ N(0, σ² I),

(L-BFGS on the equivalent mean form, ``… + b·w/n``, then Newton polishing). Removing
samples ``R`` is one Newton step on the remaining data, ``w ← w + H⁻¹Δ`` with
``Δ = Σ_{j∈R} ∇ℓⱼ(w) + λ|R| w`` and ``H`` the Hessian of ``F`` on the remaining data.
The step leaves a gradient residual ``∇F(w)``; by Theorem 3 of the paper the result
is (ε, δ)-indistinguishable from training from scratch while the residual stays
below ``σε/c`` with ``c = √(2 ln(1.5/δ))``. The model keeps a running bound on that
residual and, when the next removal would exceed it, retrains on the remaining data
with fresh noise instead.

The residual bound is the paper's data-dependent one (Corollary 1), tightened: for
``v = H⁻¹Δ`` and data matrix ``Φ`` (rows ``φᵢ``), the integral form of Taylor's theorem
bounds sample ``i``'s second-order remainder by ``γ/2 · (φᵢᵀv)²``, so the remainder's
norm is at most ``γ/2 · ‖Φ‖₂ · ‖(Φv)∘(Φv)‖₂`` (the paper relaxes the last factor to
``‖v‖ ‖Φv‖₂`` for ``‖φᵢ‖ ≤ 1``), where ``γ = 1/(6√3)`` is the Lipschitz constant of the
logistic loss's second derivative (the paper uses 1/4).

Two refinements keep the bound tight and the step cheap. ``H`` is applied by exact
Hessian-vector products and inverted by conjugate gradient, preconditioned by a cached
inverse Hessian from which each removed row's curvature is taken out by
Sherman–Morrison. The part of the residual known exactly (the optimiser's and the
linear solve's) is measured, counted in the certificate, and folded into the next
Newton step's right-hand side, so only the bounded second-order remainders
accumulate. Residuals of the one-vs-rest outputs combine in the Euclidean norm, as
the outputs' noise vectors together form one Gaussian vector.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from unbake._validation import Interval, declared, hyperparameter, validate_params
from unbake.exceptions import (
    EmptyRequestError,
    IntegrityError,
    InvalidParameterError,
    NotFittedError,
    NotPositiveDefiniteError,
    UnknownSampleError,
)
from unbake.families.certified.accountant import (
    GradientResidualAccountant,
    create_accountant,
    residual_budget,
)
from unbake.training import get_params, resolve_device, set_params
from unbake.training.hessian import conjugate_gradient

__all__ = [
    "GAMMA",
    "CertifiedLinear",
    "CertifiedLogisticRegression",
    "CertifiedParams",
]

#: Lipschitz constant of ℓ''(z) = s(z)(1 − s(z)) for the logistic loss: max |s(1−s)(1−2s)|.
GAMMA = 1.0 / (6.0 * math.sqrt(3.0))
#: Largest condition number (upper bound) of the Hessian that the solver accepts.
MAX_CONDITION = 1e10
_CHUNK = 4096
_ACCOUNTANT_CONSTRAINTS = GradientResidualAccountant._parameter_constraints


@declared
class CertifiedParams:
    """The hyperparameters that the ``certified`` strategy and the estimator share.

    Declared once, with their help and constraints: :class:`CertifiedLogisticRegression`
    and :class:`~unbake.families.certified.strategy.CertifiedStrategy` both extend this
    class, so their constructors, defaults and checks cannot drift apart. ``sigma``,
    ``epsilon`` and ``delta`` are checked as the accountant checks them.
    """

    lam: float = hyperparameter(
        1e-3,
        help="L2 strength λ of the mean-form objective (sum form: λn/2 ‖w‖²).",
        constraints=[Interval(float, 0, None, closed="neither")],
    )
    sigma: float = hyperparameter(
        1.0,
        help="Standard deviation σ of the objective-perturbation noise b.",
        constraints=_ACCOUNTANT_CONSTRAINTS["sigma"],
    )
    epsilon: float = hyperparameter(
        1.0,
        help="The certificate's ε, in (0, 1].",
        constraints=_ACCOUNTANT_CONSTRAINTS["epsilon"],
    )
    delta: float = hyperparameter(
        1e-5,
        help="The certificate's δ, in (0, 1).",
        constraints=_ACCOUNTANT_CONSTRAINTS["delta"],
    )
    normalize: bool = hyperparameter(
        True, help="L2-normalise each feature row (as in the paper).", constraints=[bool]
    )
    max_iter: int = hyperparameter(
        500,
        help="L-BFGS iteration cap per fit (Newton steps then polish the optimum).",
        constraints=[Interval(int, 1, None, closed="left")],
    )


class CertifiedLinear(nn.Module):
    """The served form of a certified model: frozen features, then one-vs-rest logits.

    ``forward`` returns ``log σ(z_k)`` (binary: ``[log σ(−z), log σ(z)]``), so a softmax
    of the output gives scikit-learn's normalised one-vs-rest probabilities.
    """

    def __init__(
        self,
        in_features: int,
        n_outputs: int,
        *,
        extractor: nn.Module | None = None,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.extractor = extractor if extractor is not None else nn.Flatten()
        for p in self.extractor.parameters():
            p.requires_grad_(False)
        self.normalize = normalize
        self.linear = nn.Linear(in_features, n_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.extractor(x).flatten(1)
        if self.normalize:
            f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(self.features(x))
        if z.shape[1] == 1:
            return torch.cat([F.logsigmoid(-z), F.logsigmoid(z)], dim=1)
        return F.logsigmoid(z)


@declared
class CertifiedLogisticRegression(CertifiedParams):
    """L2-regularised logistic regression with certified removal (Guo et al., ICML 2020).

    Binary for two classes, one-vs-rest otherwise; fitted in float64 with L-BFGS then
    Newton steps, on CPU or GPU. ``feature_extractor`` (a frozen ``nn.Module``, e.g. the
    penultimate layers of a network trained on public data) makes this certified
    removal for the last layer; the extractor itself must not depend on the data to be
    removed. Rows are L2-normalised when ``normalize`` (as in the paper).

    Parameters: those of :class:`CertifiedParams` (``lam``, ``sigma``, ``epsilon``,
    ``delta``, ``normalize``, ``max_iter``), then ``fit_intercept``,
    ``feature_extractor``, ``device`` and ``random_state``, each with its help below.
    The (ε, δ) budget is kept by a :mod:`~unbake.families.certified.accountant`
    (``accountant_``), saved with the model.

    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = CertifiedLogisticRegression(lam=1e-3, sigma=1.0).fit(X, y)
    >>> info = clf.remove(["0", "1"])
    >>> clf.certificate()["removals_since_retrain"]
    2
    """

    name: ClassVar[str] = "CertifiedLogisticRegression"
    #: The registered accountant (mechanism) that keeps the (ε, δ) budget.
    mechanism: ClassVar[str] = GradientResidualAccountant.mechanism

    fit_intercept: bool = hyperparameter(
        True,
        help="Append a constant feature: an intercept, regularised like the weights.",
        constraints=[bool],
    )
    feature_extractor: nn.Module | None = hyperparameter(
        None,
        help="A frozen feature network applied before the linear model (None: raw inputs).",
        constraints=[nn.Module, None],
    )
    device: str | torch.device | None = hyperparameter(
        None, help="Where to fit (None: the CPU).", constraints=[str, torch.device, None]
    )
    random_state: int = hyperparameter(
        0,
        help="Seed of the noise; the i-th retrain draws fresh noise from (random_state, i).",
        constraints=[Interval(int, 0, None, closed="left")],
    )

    # --- scikit-learn surface -----------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return get_params(self)

    def set_params(self, **params: Any) -> CertifiedLogisticRegression:
        set_params(self, params, self.name)
        return self

    @property
    def budget(self) -> float:
        """The gradient residual norm the noise can hide at (ε, δ): ``σε/c``."""
        return residual_budget(sigma=self.sigma, epsilon=self.epsilon, delta=self.delta)

    def fit(
        self,
        X: Any,
        y: Any,
        *,
        ids: Sequence[str] | np.ndarray | None = None,
        classes: Sequence[int] | np.ndarray | None = None,
    ) -> CertifiedLogisticRegression:
        """Fit on ``(X, y)``. ``ids`` name the rows for :meth:`remove` (default ``"0"…``);
        ``classes`` fixes the label set (default: the labels present)."""
        validate_params(self.get_params(), self._parameter_constraints, self.name)
        y_arr = np.asarray(y).astype(np.int64).reshape(-1)
        classes_arr = np.unique(y_arr) if classes is None else np.asarray(classes, np.int64)
        if len(classes_arr) < 2:
            raise InvalidParameterError(
                f"{self.name} needs at least two classes, got {len(classes_arr)}; "
                "give data with two or more labels (or pass classes=...)."
            )
        missing = np.setdiff1d(y_arr, classes_arr)
        if len(missing):
            raise InvalidParameterError(
                f"Labels {missing[:5].tolist()} are not among classes {classes_arr.tolist()}; "
                "pass every label in classes=."
            )
        self._setup(X, y_arr, ids, classes_arr)
        self.accountant_ = self._new_accountant()
        self._train()
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """One-vs-rest scores ``z = wᵀφ(x)``, shape ``(n,)`` when binary else ``(n, K)``."""
        self._check_fitted()
        z = self._features(X) @ self.W_.T
        z = z.cpu().numpy()
        return z[:, 0] if z.shape[1] == 1 else z

    def predict_proba(self, X: Any) -> np.ndarray:
        """Normalised one-vs-rest probabilities (binary: ``[1 − p, p]``)."""
        self._check_fitted()
        z = self._features(X) @ self.W_.T
        p = torch.sigmoid(z)
        p = torch.cat([1 - p, p], dim=1) if p.shape[1] == 1 else p / p.sum(dim=1, keepdim=True)
        return p.cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        self._check_fitted()
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def score(self, X: Any, y: Any) -> float:
        """Accuracy on ``(X, y)``, as a fraction."""
        return float(np.mean(self.predict(X) == np.asarray(y).reshape(-1)))

    @property
    def coef_(self) -> np.ndarray:
        self._check_fitted()
        return self.W_[:, : self.n_features_].cpu().numpy()

    @property
    def intercept_(self) -> np.ndarray:
        self._check_fitted()
        if not self.fit_intercept:
            return np.zeros(self.W_.shape[0])
        return self.W_[:, -1].cpu().numpy()

    # --- removal and the certificate ----------------------------------------------

    def remove(self, ids: Sequence[str] | np.ndarray) -> dict[str, Any]:
        """Remove the rows named ``ids`` with one Newton step, or retrain if over budget.

        Returns what happened: rows removed, whether it retrained, the residual bound
        this step added, the budget spent afterwards and the seconds taken.
        """
        self._check_fitted()
        start = time.perf_counter()
        rows = self._rows_of(ids)
        n_active = int(self.active_.sum())
        m = len(rows)
        if m >= n_active:
            raise InvalidParameterError(
                f"Cannot remove {m} samples when {n_active} remain: at least one must stay; "
                "remove fewer, or train a new model on the data you keep."
            )
        rows_t = torch.as_tensor(rows, device=self.X_.device)
        phi, yy, z = self.X_[rows_t], self.Y_[rows_t], self.Z_[rows_t]
        delta_grad = (-yy * torch.sigmoid(-yy * z)).T @ phi + self.lam * m * self.W_
        self._drop(rows)
        try:
            self._downdate_preconditioner(rows, phi)
            # Newton step on the remaining data's gradient −Δ + E, where E is the exactly
            # known part of the current residual (optimiser and earlier solves): folding E
            # in keeps it from accumulating; only the bounded remainders accumulate.
            solve = self._solve(delta_grad - self.known_residual_, n_active - m)
        except BaseException:
            self._undrop(rows, phi, z)
            raise
        step = solve.x
        phi_step = self._image(solve)
        added = GAMMA / 2 * self.feature_norm_ * phi_step.square().norm(dim=0)
        known = -solve.residual
        known_norms = known.norm(dim=1)
        accountant = self.accountant_
        spent = accountant.spent_after(residual=known_norms, added=added)
        retrained = not accountant.fits(spent)
        if retrained:
            accountant.record_retrain(removed=m, would_spend=spent)
            self._compact()
            self._train()
        else:
            accountant.step(residual=known_norms, added=added, removed=m)
            self.W_ = self.W_ + step
            self.Z_ = self.Z_ + phi_step
            self.known_residual_ = known
        if self.X_.is_cuda:
            torch.cuda.synchronize()
        return {
            "removed": m,
            "retrained": retrained,
            "bound_added": float(added.norm()),
            "cg_iterations": solve.iterations,
            "budget_spent": accountant.spent,
            "budget": accountant.budget,
            "seconds": time.perf_counter() - start,
        }

    def certificate(self) -> dict[str, Any]:
        """ε, δ, σ, the residual budget and how much of it is spent, and the removals since
        the last retrain, from the accountant. ``epsilon_spent`` is the ε the current
        residual alone needs at δ."""
        self._check_fitted()
        accountant = self.accountant_
        return {
            "mechanism": accountant.mechanism,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "sigma": self.sigma,
            "lam": self.lam,
            "budget": accountant.budget,
            "budget_spent": accountant.spent,
            "budget_fraction": accountant.spent / accountant.budget,
            "epsilon_spent": accountant.get_epsilon(self.delta),
            "removals_since_retrain": accountant.removals_since_retrain,
            "removed_total": accountant.removed_total,
            "retrains": accountant.retrains,
            "n_samples": int(self.active_.sum()),
        }

    def gradient_residual(self) -> torch.Tensor:
        """The exact sum-form gradient ``∇F(w)`` on the remaining data, one row per output.

        Its norm is what the certificate bounds (``certificate()['budget_spent']``).
        """
        self._check_fitted()
        return self._gradient(self.W_, self.Z_, int(self.active_.sum()))

    # --- unbake models ---------------------------------------------------------------

    def to_module(self) -> CertifiedLinear:
        """The fitted model as a :class:`CertifiedLinear` (float32, on the CPU)."""
        self._check_fitted()
        extractor = (
            None if self.feature_extractor is None else copy.deepcopy(self.feature_extractor)
        )
        module = CertifiedLinear(
            self.n_features_, self.W_.shape[0], extractor=extractor, normalize=self.normalize
        )
        with torch.no_grad():
            module.linear.weight.copy_(self.W_[:, : self.n_features_].float().cpu())
            bias = self.W_[:, -1] if self.fit_intercept else torch.zeros(self.W_.shape[0])
            module.linear.bias.copy_(bias.float().cpu())
        return module.eval()

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``(artifacts, meta)``: the tensors and JSON state needed to continue removing."""
        self._check_fitted()
        artifacts = {
            "weights": self.W_.detach().cpu().clone(),
            "noise": self.noise_.detach().cpu().clone(),
            "residual": self.known_residual_.detach().cpu().clone(),
        }
        meta = {
            "certified": {
                "classes": [int(c) for c in self.classes_],
                "n_train": int(self.active_.sum()),
                "accountant": self.accountant_.state_dict(),
            }
        }
        return artifacts, meta

    def restore(
        self,
        X: Any,
        y: Any,
        *,
        ids: Sequence[str] | np.ndarray,
        artifacts: dict[str, torch.Tensor],
        meta: dict[str, Any],
    ) -> CertifiedLogisticRegression:
        """Rebuild a fitted model from :meth:`state` and the data it currently holds."""
        validate_params(self.get_params(), self._parameter_constraints, self.name)
        state = meta.get("certified", {})
        if "accountant" not in state:
            raise IntegrityError(
                "The certified model's metadata has no accountant state (meta['certified']"
                "['accountant'] is missing; an older unbake wrote it); retrain the model."
            )
        if len(y) != state["n_train"]:
            raise InvalidParameterError(
                f"The certified model holds {state['n_train']} samples but {len(y)} were given; "
                "pass exactly the samples the model was trained on and has not removed."
            )
        # The budget's state is checked (mechanism, parameters) before any work on the data.
        accountant = self._new_accountant()
        accountant.load_state_dict(state["accountant"])
        self._setup(X, np.asarray(y).astype(np.int64), ids, np.asarray(state["classes"]))
        self.accountant_ = accountant
        dev = self.X_.device
        self.W_ = artifacts["weights"].to(dev, torch.float64)
        if len(accountant.bound) != self.W_.shape[0]:
            raise IntegrityError(
                f"The certified model's accountant tracks {len(accountant.bound)} outputs but "
                f"its weights have {self.W_.shape[0]}; the checkpoint is inconsistent: retrain "
                "the model."
            )
        self.noise_ = artifacts["noise"].to(dev, torch.float64)
        self.known_residual_ = artifacts["residual"].to(dev, torch.float64)
        self.Z_ = self.X_ @ self.W_.T
        self._precond = None
        return self

    # --- internals ---------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "W_"):
            raise NotFittedError(f"This {self.name} is not fitted yet; call fit(X, y) first.")

    @torch.no_grad()
    def _features(self, X: Any) -> torch.Tensor:
        dev = resolve_device(self.device) if self.device is not None else torch.device("cpu")
        X = torch.as_tensor(np.asarray(X) if not isinstance(X, torch.Tensor) else X)
        if self.feature_extractor is not None:
            ext = self.feature_extractor.eval()
            ext_dev = next(iter(ext.parameters()), torch.empty(0)).device
            parts = [
                ext(X[i : i + _CHUNK].to(ext_dev, torch.float32)).flatten(1).to(dev)
                for i in range(0, len(X), _CHUNK)
            ]
            f = torch.cat(parts).double() if parts else torch.empty(0, 0, dtype=torch.float64)
        else:
            f = X.reshape(len(X), -1).to(dev, torch.float64)
        if self.normalize:
            f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if self.fit_intercept:
            f = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype, device=dev)], dim=1)
        return f

    def _setup(self, X: Any, y: np.ndarray, ids: Any, classes: np.ndarray) -> None:
        n = len(y)
        if n == 0:
            raise EmptyRequestError(f"{self.name} got no training samples; pass at least two.")
        ids_arr = np.array(
            [str(i) for i in (range(n) if ids is None else ids)], dtype=object
        ).astype(str)
        if len(ids_arr) != n or len(np.unique(ids_arr)) != n:
            raise InvalidParameterError(
                f"ids must name each of the {n} rows exactly once; pass unique IDs, one per row."
            )
        self.classes_ = classes
        self.ids_ = ids_arr
        self.index_ = {sid: i for i, sid in enumerate(ids_arr)}
        self.X_ = self._features(X)
        self.n_features_ = self.X_.shape[1] - int(self.fit_intercept)
        dev = self.X_.device
        label_pos = torch.as_tensor(np.searchsorted(classes, y), device=dev)
        n_out = 1 if len(classes) == 2 else len(classes)
        if n_out == 1:
            Y = (label_pos == 1).double().unsqueeze(1) * 2 - 1
        else:
            Y = -torch.ones(n, n_out, dtype=torch.float64, device=dev)
            Y[torch.arange(n, device=dev), label_pos] = 1.0
        self.Y_ = Y
        self.active_ = np.ones(n, dtype=bool)
        self.removed_ids_: set[str] = set()
        gram = self.X_.T @ self.X_
        self.feature_norm_ = math.sqrt(float(torch.linalg.eigvalsh(gram)[-1]) * (1 + 1e-9))
        self._precond: torch.Tensor | None = None

    def _rows_of(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        wanted = [str(i) for i in (ids.tolist() if isinstance(ids, np.ndarray) else ids)]
        if not wanted:
            raise EmptyRequestError("The removal request names no samples; name at least one ID.")
        gone = [i for i in wanted if i in self.removed_ids_]
        if gone:
            raise UnknownSampleError(
                f"Sample IDs {gone[:5]} were already removed; drop them from the request."
            )
        unknown = [i for i in wanted if i not in self.index_]
        if unknown:
            raise UnknownSampleError(
                f"Unknown sample IDs {unknown[:5]} ({len(unknown)} in all); "
                "pass IDs given to fit()."
            )
        return np.array([self.index_[i] for i in dict.fromkeys(wanted)], dtype=np.int64)

    def _drop(self, rows: np.ndarray) -> None:
        """Erase removed rows: a zero row contributes nothing to any sum below."""
        self.active_[rows] = False
        self.removed_ids_.update(self.ids_[rows].tolist())
        idx = torch.as_tensor(rows, device=self.X_.device)
        self.X_[idx] = 0.0
        self.Z_[idx] = 0.0

    def _undrop(self, rows: np.ndarray, phi: torch.Tensor, z: torch.Tensor) -> None:
        """Undo :meth:`_drop` after a failed removal, leaving the model as it was."""
        self.active_[rows] = True
        self.removed_ids_.difference_update(self.ids_[rows].tolist())
        idx = torch.as_tensor(rows, device=self.X_.device)
        self.X_[idx] = phi
        self.Z_[idx] = z
        self._precond = None

    def _compact(self) -> None:
        keep = np.flatnonzero(self.active_)
        idx = torch.as_tensor(keep, device=self.X_.device)
        self.X_, self.Y_ = self.X_[idx], self.Y_[idx]
        self.ids_ = self.ids_[keep]
        self.index_ = {sid: i for i, sid in enumerate(self.ids_)}
        self.active_ = np.ones(len(keep), dtype=bool)

    def _noise(self) -> torch.Tensor:
        seed = int(
            np.random.SeedSequence([self.random_state, self.accountant_.retrains]).generate_state(
                1
            )[0]
        )
        gen = torch.Generator().manual_seed(seed)
        shape = (self.Y_.shape[1], self.X_.shape[1])
        return (self.sigma * torch.randn(shape, generator=gen, dtype=torch.float64)).to(
            self.X_.device
        )

    def _gradient(self, W: torch.Tensor, Z: torch.Tensor, n: int) -> torch.Tensor:
        """Sum-form gradient ``Σ ∇ℓᵢ + λ n w + b`` (zeroed rows contribute nothing)."""
        return (-self.Y_ * torch.sigmoid(-self.Y_ * Z)).T @ self.X_ + self.lam * n * W + self.noise_

    def _check_conditioning(self, n: int) -> None:
        cond = (0.25 * self.feature_norm_**2 + self.lam * n) / (self.lam * n)
        if cond > MAX_CONDITION:
            raise InvalidParameterError(
                f"The Hessian is numerically singular (condition number up to {cond:.1e} with "
                f"lam={self.lam:g}); use a larger lam (at least "
                f"{0.25 * self.feature_norm_**2 / (MAX_CONDITION * n):.1e})."
            )

    def _train(self) -> None:
        """Minimise the perturbed objective on the active rows from zero (fresh noise)."""
        n = int(self.active_.sum())
        self._check_conditioning(n)
        self.noise_ = self._noise()
        X, Y, B, lam = self.X_, self.Y_, self.noise_, self.lam
        W = torch.zeros_like(B, requires_grad=True)

        def closure() -> torch.Tensor:
            with torch.no_grad():
                margin = Y * (X @ W.T)
                loss = (F.softplus(-margin).sum() + (B * W).sum()) / n + lam / 2 * (W * W).sum()
                W.grad = ((-Y * torch.sigmoid(-margin)).T @ X + B) / n + lam * W
            return loss

        opt = torch.optim.LBFGS(
            [W],
            lr=1.0,
            max_iter=self.max_iter,
            tolerance_grad=1e-7,
            tolerance_change=0.0,
            history_size=10,
            line_search_fn="strong_wolfe",
        )
        opt.step(closure)
        W = W.detach()
        self._precond = None
        # Newton polishing: the certificate counts the optimiser's residual, so make it tiny.
        target = 1e-4 * self.budget
        for _ in range(8):
            Z = X @ W.T
            grad = self._gradient(W, Z, n)
            if float(grad.norm()) <= target:
                break
            self.W_, self.Z_ = W, Z
            W = W - self._solve(grad, n, atol=0.1 * target).x
        self.W_, self.Z_ = W, X @ W.T
        self.known_residual_ = self._gradient(self.W_, self.Z_, n)
        self.accountant_.start(self.known_residual_.norm(dim=1))
        spent = self.accountant_.spent
        if not self.accountant_.fits(spent):
            raise InvalidParameterError(
                f"Training left a gradient residual of {spent:.3g}, above the budget "
                f"{self.budget:.3g} that sigma={self.sigma:g} hides at epsilon={self.epsilon:g}; "
                "raise sigma or max_iter."
            )

    def _image(self, solve) -> torch.Tensor:
        """``Φ x`` for a solve's ``x`` (accumulated by CG, or computed when it took no step)."""
        if solve.aux is None:
            return self.X_ @ solve.x.T
        return solve.aux.T

    def _new_accountant(self) -> GradientResidualAccountant:
        return create_accountant(
            self.mechanism, sigma=self.sigma, epsilon=self.epsilon, delta=self.delta
        )

    def _curvature(self) -> torch.Tensor:
        s = torch.sigmoid(self.Z_)
        return s * (1 - s)

    def _build_preconditioner(self, n: int) -> torch.Tensor:
        """Inverse Hessians at the current weights (float32 accumulation, float64 inverse)."""
        S = self._curvature()
        d, k = self.X_.shape[1], S.shape[1]
        H = torch.zeros(k, d, d, dtype=torch.float32, device=self.X_.device)
        for i in range(0, len(S), _CHUNK):
            rows = self.X_[i : i + _CHUNK].float()
            scaled = rows.unsqueeze(0) * S[i : i + _CHUNK].T.sqrt().float().unsqueeze(-1)
            H += scaled.transpose(1, 2) @ scaled
        H = H.double() + self.lam * n * torch.eye(d, dtype=torch.float64, device=H.device)
        L, info = torch.linalg.cholesky_ex(H)
        if bool((info != 0).any()):
            raise InvalidParameterError(
                f"The Hessian is singular or indefinite (lam={self.lam:g}); use a larger lam."
            )
        self._precond_curvature = S
        return torch.cholesky_inverse(L)

    def _downdate_preconditioner(self, rows: np.ndarray, phi: torch.Tensor) -> None:
        """Take removed rows' curvature out of the cached inverse (Sherman–Morrison), so
        it stays close to the Hessian on the remaining data."""
        if self._precond is None:
            return
        M = self._precond
        curvature = self._precond_curvature[torch.as_tensor(rows, device=M.device)]
        for phi_j, s_j in zip(phi, curvature, strict=True):
            u = M @ phi_j  # (outputs, d)
            denominator = 1 - s_j * (u @ phi_j)
            if bool((denominator <= 1e-6).any()):
                self._precond = None  # numerically unsafe: rebuild instead
                return
            M += (s_j / denominator)[:, None, None] * u[:, :, None] * u[:, None, :]

    def _solve(self, rhs: torch.Tensor, n: int, atol: float | None = None):
        """``H⁻¹ rhs`` per output by CG with exact HVPs, preconditioned by a cached inverse."""
        if self._precond is None:
            self._precond = self._build_preconditioner(n)
            self._precond_solves, self._slow_streak = 0, 0
        S, X, lam = self._curvature(), self.X_, self.lam
        precond = self._precond

        def hvp(V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            XV = X @ V.T
            return (S * XV).T @ X + lam * n * V, XV.T

        def apply_precond(R: torch.Tensor) -> torch.Tensor:
            return (precond @ R.unsqueeze(-1)).squeeze(-1)

        try:
            result = conjugate_gradient(
                hvp,
                rhs,
                precondition=apply_precond,
                rtol=1e-12,
                atol=2e-2 * self.budget if atol is None else atol,
                max_iter=50,
            )
        except NotPositiveDefiniteError:
            raise InvalidParameterError(
                f"The Hessian is singular or indefinite (lam={self.lam:g}); use a larger lam."
            ) from None
        # A fresh preconditioner solves in one iteration; as the weights drift, two. Rebuild
        # (at the next removal) when it needs three, or needed two ten times in a row after
        # serving a hundred solves: the rebuild costs about as much as fifty iterations.
        self._precond_solves += 1
        self._slow_streak = self._slow_streak + 1 if result.iterations > 1 else 0
        if result.iterations > 2 or (self._slow_streak >= 10 and self._precond_solves >= 100):
            self._precond = None
        return result
