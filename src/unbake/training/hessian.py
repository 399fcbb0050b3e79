"""Second-order building blocks: Hessian-vector products, conjugate gradient and LiSSA.

Pure functions over tensors, kept apart from any model or method state so they can be
tested against closed-form answers (see ``tests/test_hessian.py``):

* :func:`hessian_vector_product` and :func:`hvp_operator`: ``H v`` by double
  backpropagation (Pearlmutter, "Fast Exact Multiplication by the Hessian", 1994),
  never forming ``H``;
* :func:`conjugate_gradient`: (preconditioned) CG for ``A x = b`` with ``A`` symmetric
  positive definite, batched over independent systems;
* :func:`lissa`: the stochastic inverse-HVP recursion of Agarwal, Bullins and Hazan,
  "Second-Order Stochastic Optimization for Machine Learning in Linear Time" (JMLR
  2017), as used for influence functions by Koh and Liang, "Understanding Black-box
  Predictions via Influence Functions" (ICML 2017).

>>> import torch
>>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
>>> b = torch.tensor([1.0, 2.0], dtype=torch.float64)
>>> result = conjugate_gradient(lambda v: A @ v, b, rtol=1e-12)
>>> torch.allclose(A @ result.x, b)
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from unbake._budget import check_time_budget
from unbake.exceptions import NotPositiveDefiniteError

__all__ = [
    "CGResult",
    "conjugate_gradient",
    "flatten",
    "hessian_vector_product",
    "hvp_operator",
    "lissa",
    "top_eigenvalue",
    "unflatten",
]

MatVec = Callable[[torch.Tensor], torch.Tensor]


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate ``tensors`` into one flat vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat ``vector`` back into tensors shaped like ``like``."""
    out, start = [], 0
    for t in like:
        out.append(vector[start : start + t.numel()].view_as(t))
        start += t.numel()
    return out


def hvp_operator(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> MatVec:
    """The map ``v ↦ H v`` for the Hessian of scalar ``loss`` in ``params`` (flat vectors).

    The gradient graph is built once (``create_graph=True``); each call is one extra
    backward pass through it.
    """
    params = list(params)
    grads = torch.autograd.grad(loss, params, create_graph=True)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        check_time_budget()  # each product is one backward pass: a solver's step
        hv = torch.autograd.grad(
            grads, params, grad_outputs=unflatten(v, params), retain_graph=True, allow_unused=True
        )
        return flatten(
            [torch.zeros_like(p) if h is None else h for h, p in zip(hv, params, strict=True)]
        )

    return matvec


def hessian_vector_product(
    loss: torch.Tensor, params: Sequence[torch.Tensor], vector: torch.Tensor
) -> torch.Tensor:
    """``H v`` for the Hessian of scalar ``loss`` with respect to ``params`` (flat ``v``).

    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> loss = (x**3).sum()  # H = diag(6 x)
    >>> hessian_vector_product(loss, [x], torch.tensor([1.0, 1.0]))
    tensor([ 6., 12.])
    """
    return hvp_operator(loss, params)(vector)


@dataclass(frozen=True)
class CGResult:
    """The solution, its residual ``b − A x`` (and norms) per system, and the iterations."""

    x: torch.Tensor
    residual: torch.Tensor
    residual_norm: torch.Tensor
    iterations: int
    converged: bool
    #: ``L x`` when ``matvec`` returned pairs ``(A v, L v)`` (else ``None``).
    aux: torch.Tensor | None = None


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1, keepdim=True)


def conjugate_gradient(
    matvec: MatVec | Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    b: torch.Tensor,
    *,
    precondition: MatVec | None = None,
    rtol: float = 1e-8,
    atol: float = 0.0,
    max_iter: int | None = None,
) -> CGResult:
    """Solve ``A x = b`` for symmetric positive definite ``A`` given only ``v ↦ A v``.

    ``b`` has shape ``(..., d)``: every leading index is an independent system, and
    ``matvec``/``precondition`` map tensors of that shape to the same shape. A system
    stops once ``‖r‖ ≤ max(rtol ‖b‖, atol)``. Raises :class:`NotPositiveDefiniteError`
    on a direction of non-positive curvature, where no SPD solution exists.

    ``matvec`` may instead return a pair ``(A v, L v)`` for any linear map ``L`` whose
    output has the same leading dimensions; the result then carries ``aux = L x``,
    accumulated from the search directions without applying ``L`` again.
    """
    if max_iter is None:
        max_iter = 10 * b.shape[-1]
    x = torch.zeros_like(b)
    r = b.clone()
    limit = torch.clamp(rtol * r.norm(dim=-1, keepdim=True), min=atol)
    z = precondition(r) if precondition is not None else r
    p = z.clone()
    rz = _dot(r, z)
    iterations = 0
    aux = None
    active = r.norm(dim=-1, keepdim=True) > limit
    while bool(active.any()) and iterations < max_iter:
        ap = matvec(p)
        if isinstance(ap, tuple):
            ap, aux_p = ap
        else:
            aux_p = None
        curvature = _dot(p, ap)
        if bool(((curvature <= 0) & active).any()):
            raise NotPositiveDefiniteError(
                "conjugate gradient met non-positive curvature: the matrix is singular or "
                "indefinite"
            )
        alpha = torch.where(active, rz / torch.where(active, curvature, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        if aux_p is not None:
            aux = alpha * aux_p if aux is None else aux + alpha * aux_p
        iterations += 1
        active = r.norm(dim=-1, keepdim=True) > limit
        if not bool(active.any()):
            break
        z = precondition(r) if precondition is not None else r
        rz_new = _dot(r, z)
        beta = torch.where(active, rz_new / torch.where(rz == 0, 1.0, rz), 0.0)
        p = torch.where(active, z + beta * p, p)
        rz = rz_new
    norms = r.norm(dim=-1)
    if not bool(torch.isfinite(x).all()):
        raise NotPositiveDefiniteError("conjugate gradient diverged: the matrix is singular")
    return CGResult(x, r, norms, iterations, not bool(active.any()), aux)


def top_eigenvalue(
    matvec: MatVec,
    dim: int,
    *,
    generator: torch.Generator,
    iterations: int = 20,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> float:
    """Largest-magnitude eigenvalue of a symmetric operator, by power iteration."""
    v = torch.randn(dim, generator=generator, dtype=dtype).to(device)
    v = v / v.norm()
    value = 0.0
    for _ in range(iterations):
        w = matvec(v)
        value = float(torch.dot(v, w))
        norm = w.norm()
        if float(norm) == 0.0:
            return 0.0
        v = w / norm
    return abs(value)


def lissa(
    matvec: MatVec,
    b: torch.Tensor,
    *,
    damping: float = 0.0,
    scale: float = 1.0,
    depth: int = 100,
) -> torch.Tensor:
    """Estimate ``(H + damping·I)⁻¹ b`` by the LiSSA recursion (Agarwal et al. 2017).

    ``h₀ = b``, ``hₜ = b + hₜ₋₁ − (H + damping·I) hₜ₋₁ / scale``, returning
    ``h_depth / scale``: the truncated Neumann series of ``((H + damping·I)/scale)⁻¹``,
    which converges when ``scale`` exceeds the largest eigenvalue of ``H + damping·I``
    and that matrix is positive definite. ``matvec`` may be stochastic (a fresh
    minibatch Hessian each call), which is what makes LiSSA linear-time. Raises
    :class:`NotPositiveDefiniteError` when the recursion diverges.
    """
    h = b.clone()
    # While the iteration matrix has spectral radius ≤ 1, ‖hₜ‖ ≤ (t + 1)‖b‖.
    bound = 10.0 * (depth + 1) * float(b.norm())
    for _ in range(depth):
        h = b + h - (matvec(h) + damping * h) / scale
        norm = float(h.norm())
        if not torch.isfinite(h).all() or norm > bound:
            raise NotPositiveDefiniteError(
                f"LiSSA diverged (‖h‖ reached {norm:.3g}): the damped Hessian is indefinite "
                "or its largest eigenvalue exceeds the scale"
            )
    return h / scale
