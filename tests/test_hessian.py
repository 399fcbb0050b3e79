"""The pure second-order routines against closed-form answers."""

import pytest
import torch

from unbake.exceptions import InvalidParameterError, NotPositiveDefiniteError
from unbake.training.hessian import (
    conjugate_gradient,
    flatten,
    hessian_vector_product,
    hvp_operator,
    lissa,
    top_eigenvalue,
    unflatten,
)

DT = torch.float64


def _spd(d: int, seed: int, floor: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(d, d, generator=g, dtype=DT)
    return M @ M.T / d + floor * torch.eye(d, dtype=DT)


def _logistic_problem(n: int = 60, d: int = 5, lam: float = 0.1):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(n, d, generator=g, dtype=DT)
    y = (torch.rand(n, generator=g, dtype=DT) < 0.5).to(DT) * 2 - 1
    w = torch.randn(d, generator=g, dtype=DT, requires_grad=True)

    def loss_fn(w):
        return torch.nn.functional.softplus(-y * (X @ w)).mean() + lam / 2 * (w * w).sum()

    s = torch.sigmoid(X @ w.detach())
    H = X.T @ (X * (s * (1 - s)).unsqueeze(1)) / n + lam * torch.eye(d, dtype=DT)
    return loss_fn, w, H


def test_flatten_roundtrip():
    parts = [torch.arange(6.0).view(2, 3), torch.tensor([7.0])]
    flat = flatten(parts)
    assert flat.tolist() == [0, 1, 2, 3, 4, 5, 7]
    back = unflatten(flat, parts)
    assert all(torch.equal(a, b) for a, b in zip(back, parts, strict=True))


def test_hvp_on_a_quadratic_is_the_matrix_product():
    A = _spd(6, 0)
    b = torch.ones(6, dtype=DT)
    x = torch.zeros(6, dtype=DT, requires_grad=True)
    loss = 0.5 * x @ A @ x + b @ x
    v = torch.linspace(-1, 1, 6, dtype=DT)
    assert torch.allclose(hessian_vector_product(loss, [x], v), A @ v, atol=1e-12)


def test_hvp_on_logistic_regression_matches_the_closed_form_hessian():
    loss_fn, w, H = _logistic_problem()
    hvp = hvp_operator(loss_fn(w), [w])
    for i in range(H.shape[0]):
        e = torch.zeros(H.shape[0], dtype=DT)
        e[i] = 1
        assert torch.allclose(hvp(e), H[:, i], atol=1e-12)


def test_hvp_over_several_parameter_tensors():
    w1 = torch.tensor([1.0, 2.0], dtype=DT, requires_grad=True)
    w2 = torch.tensor([3.0], dtype=DT, requires_grad=True)
    loss = (w1 * w1).sum() * w2[0]  # H = [[2 w2, 0, 2 w1_0], [0, 2 w2, 2 w1_1], [.., .., 0]]
    H = torch.tensor([[6.0, 0.0, 2.0], [0.0, 6.0, 4.0], [2.0, 4.0, 0.0]], dtype=DT)
    v = torch.tensor([1.0, -1.0, 0.5], dtype=DT)
    assert torch.allclose(hessian_vector_product(loss, [w1, w2], v), H @ v)


def test_conjugate_gradient_solves_an_spd_system():
    A = _spd(20, 1)
    b = torch.linspace(0, 1, 20, dtype=DT)
    result = conjugate_gradient(lambda v: A @ v, b, rtol=1e-12)
    assert result.converged
    assert result.iterations <= 25  # n steps in exact arithmetic, a few more in floats
    assert torch.allclose(result.x, torch.linalg.solve(A, b), atol=1e-9)
    assert torch.allclose(result.residual, b - A @ result.x, atol=1e-9)


def test_conjugate_gradient_solves_independent_systems_in_a_batch():
    A = torch.stack([_spd(8, s) for s in range(3)])
    b = torch.stack([torch.full((8,), float(k + 1), dtype=DT) for k in range(3)])
    b[1] = 0.0  # a zero right-hand side stays exactly zero
    result = conjugate_gradient(lambda V: (A @ V.unsqueeze(-1)).squeeze(-1), b, rtol=1e-12)
    expected = torch.linalg.solve(A, b.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(result.x, expected, atol=1e-9)
    assert torch.equal(result.x[1], torch.zeros(8, dtype=DT))


def test_exact_preconditioner_converges_in_one_iteration():
    A = _spd(30, 2, floor=1e-3)
    A_inv = torch.linalg.inv(A)
    b = torch.ones(30, dtype=DT)
    result = conjugate_gradient(lambda v: A @ v, b, precondition=lambda r: A_inv @ r, rtol=1e-10)
    assert result.iterations == 1
    assert torch.allclose(A @ result.x, b, atol=1e-8)


def test_conjugate_gradient_rejects_an_indefinite_matrix():
    A = torch.diag(torch.tensor([1.0, -2.0, 3.0], dtype=DT))
    with pytest.raises(NotPositiveDefiniteError):
        conjugate_gradient(lambda v: A @ v, torch.ones(3, dtype=DT))
    assert issubclass(NotPositiveDefiniteError, InvalidParameterError)


def test_lissa_matches_the_damped_inverse_on_a_quadratic():
    A = _spd(6, 4)
    b = torch.linspace(1, 2, 6, dtype=DT)
    damping = 0.1
    top = float(torch.linalg.eigvalsh(A)[-1])
    estimate = lissa(lambda v: A @ v, b, damping=damping, scale=top + damping + 1, depth=2000)
    exact = torch.linalg.solve(A + damping * torch.eye(6, dtype=DT), b)
    assert torch.allclose(estimate, exact, rtol=1e-6, atol=1e-8)


def test_lissa_agrees_with_cg_on_logistic_regression():
    loss_fn, w, H = _logistic_problem()
    hvp = hvp_operator(loss_fn(w), [w])
    b = torch.ones(H.shape[0], dtype=DT)
    exact = torch.linalg.solve(H, b)
    via_cg = conjugate_gradient(hvp, b, rtol=1e-12).x
    via_lissa = lissa(hvp, b, scale=2.0 * float(torch.linalg.eigvalsh(H)[-1]), depth=3000)
    assert torch.allclose(via_cg, exact, atol=1e-9)
    assert torch.allclose(via_lissa, exact, rtol=1e-5, atol=1e-7)


def test_lissa_raises_when_the_scale_is_too_small():
    A = torch.diag(torch.tensor([1.0, 10.0], dtype=DT))
    with pytest.raises(NotPositiveDefiniteError, match="scale"):
        lissa(lambda v: A @ v, torch.ones(2, dtype=DT), scale=2.0, depth=200)


def test_top_eigenvalue_by_power_iteration():
    A = torch.diag(torch.tensor([0.5, 2.0, 7.0], dtype=DT))
    g = torch.Generator().manual_seed(0)
    top = top_eigenvalue(lambda v: A @ v, 3, generator=g, iterations=200, dtype=DT)
    assert top == pytest.approx(7.0, rel=1e-8)
