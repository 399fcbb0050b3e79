"""Influence-function unlearning: one damped Newton step towards the retain-set optimum."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from unbake._budget import check_time_budget
from unbake._validation import Interval, Options, hyperparameter
from unbake.exceptions import (
    InvalidParameterError,
    NotPositiveDefiniteError,
    UnsupportedModelError,
)
from unbake.methods.base import (
    Knob,
    MethodTags,
    Unlearner,
    UnlearnTask,
    copy_model,
    register_method,
)
from unbake.training import resolve_device
from unbake.training.hessian import (
    conjugate_gradient,
    flatten,
    hessian_vector_product,
    hvp_operator,
    lissa,
    top_eigenvalue,
    unflatten,
)

__all__ = ["InfluenceNewton", "select_parameters"]

_CHUNK = 1024


def select_parameters(module: nn.Module, which: str) -> list[nn.Parameter]:
    """``"all"`` trainable parameters, or the ``"head"``: ``module.head`` if it has one,
    else its last ``nn.Linear``."""
    if which == "all":
        return [p for p in module.parameters() if p.requires_grad]
    head = getattr(module, "head", None)
    if not isinstance(head, nn.Module):
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise UnsupportedModelError(
                f"{type(module).__name__} has no .head and no nn.Linear layer to restrict "
                "the update to; use params='all'."
            )
        head = linears[-1]
    return [p for p in head.parameters() if p.requires_grad]


def _summed_gradient(
    module: nn.Module, X: torch.Tensor, y: torch.Tensor, params: list[nn.Parameter], device
) -> torch.Tensor:
    """``Σᵢ ∇ℓᵢ`` over ``(X, y)``, in chunks to bound memory."""
    total = torch.zeros(sum(p.numel() for p in params), device=device)
    for i in range(0, len(y), _CHUNK):
        check_time_budget()
        xb, yb = X[i : i + _CHUNK].to(device), y[i : i + _CHUNK].to(device)
        loss = F.cross_entropy(module(xb), yb, reduction="sum")
        total += flatten(torch.autograd.grad(loss, params))
    return total


@register_method
class InfluenceNewton(Unlearner):
    """Influence-function unlearning: one damped Newton step with inverse-HVPs.

    Koh and Liang, "Understanding Black-box Predictions via Influence Functions" (ICML
    2017): removing the forget set ``F`` moves the retain-set optimum by approximately

        Δθ = (H_r + λI)⁻¹ · (1/n_r) Σ_{j∈F} ∇ℓ(x_j; θ),

    with ``H_r`` the Hessian of the mean retain loss (on ``hessian_samples`` retain
    rows), ``λ`` the ``damping`` plus the original's weight decay ``wd`` (which also adds
    ``wd·θ`` to each removed sample's gradient). ``(H_r + λI)⁻¹g``
    is found without forming ``H_r``, from Hessian-vector products by double
    backpropagation, either by conjugate gradient (``solver="cg"``, ``iterations`` is
    its cap) or by LiSSA (``solver="lissa"``: Agarwal, Bullins and Hazan, JMLR 2017,
    ``iterations`` minibatches of ``batch_size``, ``scale`` estimated by power
    iteration when ``None``). ``params="head"`` restricts the step to the last layer,
    where the loss is convex and the cost small. Approximate: no guarantee for deep
    networks, so it is measured against retraining.

    When to use: convex or linear-head models. A memorised sample's trace lives in the
    hidden layers, which a head-only step does not touch.
    """

    name = "influence"
    tags = MethodTags(
        cost="one gradient over the forget set and a CG/LiSSA solve of Hessian-vector "
        "products on up to `hessian_samples` retain rows",
        limits="random forgetting on deep networks (avg gap = doing nothing's at its "
        "default damping, within its spread of it tuned); partial on class-wise, at "
        "5 points of test accuracy",
    )
    search_space = {"damping": Knob(1e-4, 1.0, log=True), "solver": Knob(choices=("cg", "lissa"))}

    solver: str = hyperparameter(
        "cg",
        help="How (H_r + λI)⁻¹g is solved: conjugate gradient or LiSSA.",
        constraints=[Options({"cg", "lissa"})],
    )
    params: str = hyperparameter(
        "head",
        help="The parameters the step moves: all trainable ones, or the last layer's.",
        constraints=[Options({"all", "head"})],
    )
    damping: float = hyperparameter(
        0.01,
        help="Damping added to the Hessian's diagonal (besides the original's weight decay).",
        constraints=[Interval(float, 0, None, closed="left")],
    )
    hessian_samples: int | None = hyperparameter(
        2048,
        help="Seeded retain rows the Hessian is taken on (None: all of them).",
        constraints=[Interval(int, 1, None, closed="left"), None],
    )
    iterations: int = hyperparameter(
        100,
        help="The CG iteration cap, or LiSSA's recursion depth.",
        constraints=[Interval(int, 1, None, closed="left")],
    )
    batch_size: int = hyperparameter(
        256,
        help="Rows per LiSSA minibatch.",
        constraints=[Interval(int, 1, None, closed="left")],
    )
    scale: float | None = hyperparameter(
        None,
        help="LiSSA's scale (None: estimated by power iteration).",
        constraints=[Interval(float, 0, None, closed="neither"), None],
    )

    def _unlearn(self, task: UnlearnTask, seed: int):
        device = resolve_device(task.device)
        model = copy_model(task.original, device=device)
        module = model.module.eval()
        params = select_parameters(module, self.params)
        Xr, yr = task.retain.tensors()
        Xf, yf = task.forget.tensors()
        n_r = len(yr)  # never 0: Unlearner.unlearn refuses that for methods reading retain
        generator = torch.Generator().manual_seed(int(seed))
        decay = task.original.config.weight_decay
        damping = self.damping + decay
        # ∇ of the retain objective at θ, given the full objective's gradient is zero:
        # (Σ_F ∇ℓ_j + |F|·decay·θ) / n_r (the weight decay of the removed samples' share).
        theta = flatten([p.detach() for p in params])
        g = (_summed_gradient(module, Xf, yf, params, device) + len(yf) * decay * theta) / n_r
        info: dict[str, Any] = {"solver": self.solver, "n_params": int(g.numel())}
        try:
            if self.solver == "cg":
                step = self._cg(module, params, Xr, yr, g, damping, generator, device, info)
            else:
                step = self._lissa(module, params, Xr, yr, g, damping, generator, device, info)
        except NotPositiveDefiniteError as exc:
            raise InvalidParameterError(
                f"The damped Hessian is singular or indefinite at this model ({exc}); raise "
                f"damping above {self.damping:g} (e.g. {max(10 * self.damping, 0.1):g}) or "
                "use params='head'."
            ) from None
        with torch.no_grad():
            for p, delta in zip(params, unflatten(step, params), strict=True):
                p.add_(delta)
        info["step_norm"] = float(step.norm())
        return model, info

    def _hessian_rows(self, n: int, generator: torch.Generator) -> torch.Tensor:
        order = torch.randperm(n, generator=generator)
        return order if self.hessian_samples is None else order[: self.hessian_samples]

    def _cg(self, module, params, Xr, yr, g, damping, generator, device, info):
        rows = self._hessian_rows(len(yr), generator)
        loss = F.cross_entropy(module(Xr[rows].to(device)), yr[rows].to(device))
        hvp = hvp_operator(loss, params)
        result = conjugate_gradient(
            lambda v: hvp(v) + damping * v, g, rtol=1e-4, max_iter=self.iterations
        )
        info.update(
            iterations=result.iterations,
            converged=result.converged,
            relative_residual=float(result.residual_norm) / max(float(g.norm()), 1e-30),
        )
        return result.x

    def _lissa(self, module, params, Xr, yr, g, damping, generator, device, info):
        n = len(yr)

        def minibatch_hvp(v: torch.Tensor) -> torch.Tensor:
            rows = torch.randint(n, (min(self.batch_size, n),), generator=generator)
            loss = F.cross_entropy(module(Xr[rows].to(device)), yr[rows].to(device))
            return hessian_vector_product(loss, params, v)

        scale = self.scale
        if scale is None:
            rows = self._hessian_rows(n, generator)
            loss = F.cross_entropy(module(Xr[rows].to(device)), yr[rows].to(device))
            hvp = hvp_operator(loss, params)
            top = top_eigenvalue(hvp, g.numel(), generator=generator, dtype=g.dtype, device=device)
            scale = 2.0 * (top + damping) + 1e-8
        info.update(scale=scale, iterations=self.iterations)
        return lissa(minibatch_hvp, g, damping=damping, scale=scale, depth=self.iterations)
