# SPDX-License-Identifier: Apache-2.0
"""Gauge-field natural gradient on the ``d x d`` overlaps (internal).

Everything here works on a :class:`GaugeProblem`, the overlaps ``S``, ``M`` of one phase
and the coupling graph moved to their device and dtype, so no step touches the
embeddings. Rotations are parameterised as ``R_t = expm(G_t - G_t^T)``; the exponential
of a skew matrix and its exact derivative come from one Hermitian eigendecomposition
(:class:`_SkewExp`), which is several times cheaper than differentiating
:func:`torch.linalg.matrix_exp` at ``d = 100``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from pyro_goldstone._procrustes import tree_rotations

__all__ = [
    "GaugeProblem",
    "build_problem",
    "energy_change",
    "natural_gradient",
    "rotation_energy_change",
    "skew_exp",
    "taylor_natural_gradient",
]

# Armijo constant and the number of halvings of the step before a phase gives up
_ARMIJO = 1e-4
_MAX_BACKTRACKS = 30


class GaugeProblem(NamedTuple):
    """The data of one gauge phase, all on the device and in the work dtype.

    ``src``, ``dst`` and ``weights`` describe the edges ``(t, t')`` with ``t < t'``;
    ``basis`` and ``plane_scale`` precondition each rotation plane; ``tol`` is the size
    of an energy change that rounding alone can produce.
    """

    S: torch.Tensor  # (T, d, d)
    M: torch.Tensor  # (E, d, d)
    src: torch.Tensor  # (E,)
    dst: torch.Tensor  # (E,)
    weights: torch.Tensor  # (E,)
    degrees: torch.Tensor  # (T,)
    lap_pinv: torch.Tensor  # (T, T)
    basis: torch.Tensor  # (d, d)
    plane_scale: torch.Tensor  # (d, d)
    tol: float


def build_problem(S: torch.Tensor, M: torch.Tensor, coupling) -> GaugeProblem:
    """Move the graph to the overlaps' device and dtype and build the preconditioner."""
    dtype, device = S.dtype, S.device
    edges = coupling.edges.to(device)
    weights = coupling.weights.to(device, dtype)
    degrees = torch.zeros(S.shape[0], dtype=dtype, device=device)
    degrees.index_add_(0, edges[:, 0], weights).index_add_(0, edges[:, 1], weights)

    # natural-gradient scale per rotation plane (i, j): 1 / (2 (s_i + s_j)), with s the
    # spectrum of the degree-weighted average of S_t (the Hessian at an aligned optimum)
    mean_S = (degrees.view(-1, 1, 1) * S).sum(0) / degrees.sum()
    spectrum, basis = torch.linalg.eigh(mean_S)
    pair_sums = spectrum.clamp(min=0).unsqueeze(-1) + spectrum.clamp(min=0)
    floor = max(1e-6 * pair_sums.max().item(), torch.finfo(dtype).tiny)
    plane_scale = 0.5 / pair_sums.clamp(min=floor)

    # size of an energy change that rounding alone can produce
    scale = 0.5 * (degrees * S.diagonal(dim1=-2, dim2=-1).sum(-1)).sum().item()
    tol = 4 * math.sqrt(S.shape[-1]) * torch.finfo(dtype).eps * scale
    return GaugeProblem(
        S=S,
        M=M,
        src=edges[:, 0],
        dst=edges[:, 1],
        weights=weights,
        degrees=degrees,
        lap_pinv=coupling.laplacian_pinv(dtype, device),
        basis=basis,
        plane_scale=plane_scale,
        tol=tol,
    )


class _SkewExp(torch.autograd.Function):
    """``expm(Omega)`` for real skew ``Omega``, via the eigenvectors of ``i Omega``.

    The backward pass is the Daleckii-Krein formula: in the eigenbasis, the derivative
    multiplies each entry by the divided difference of ``exp`` between two eigenvalues,
    written with ``sinc`` so that equal eigenvalues need no special case.
    """

    @staticmethod
    def forward(ctx, omega):
        theta, vectors = torch.linalg.eigh(1j * omega)
        phases = torch.polar(torch.ones_like(theta), -theta)
        ctx.save_for_backward(theta, vectors)
        return ((vectors * phases.unsqueeze(-2)) @ vectors.mH).real

    @staticmethod
    def backward(ctx, grad):
        theta, vectors = ctx.saved_tensors
        half_sum = (theta.unsqueeze(-1) + theta.unsqueeze(-2)) / 2
        half_diff = (theta.unsqueeze(-1) - theta.unsqueeze(-2)) / 2
        # complex conjugate of the divided differences of exp at -i theta
        weights = torch.polar(torch.sinc(half_diff / math.pi), half_sum)
        inner = vectors.mH @ grad.to(vectors.dtype) @ vectors
        return (vectors @ (inner * weights) @ vectors.mH).real


def skew_exp(gauge_fields: torch.Tensor) -> torch.Tensor:
    """Rotations ``expm(G - G^T)`` of shape ``(T, d, d)``, differentiable in ``G``."""
    return _SkewExp.apply(gauge_fields - gauge_fields.mT)


def rotation_energy_change(problem: GaugeProblem, rotations: torch.Tensor):
    """Exact change of the prior energy when every ``X_t`` becomes ``X_t R_t``.

    Written as ``-sum_e w_e tr(M_e (R_t' R_t^T - I))`` so that a rotation close to the
    identity gives a change that is accurate relative to itself.
    """
    eye = torch.eye(rotations.shape[-1], dtype=rotations.dtype, device=rotations.device)
    relative = rotations[problem.dst] @ rotations[problem.src].mT - eye
    return -(problem.weights * (problem.M * relative.mT).sum((-2, -1))).sum()


def energy_change(problem: GaugeProblem, transforms: torch.Tensor):
    """Exact change of the prior energy when every ``X_t`` becomes ``X_t A_t``.

    ``A_t`` need not be orthogonal (the paper's first-order update ``I + Omega_t``
    also stretches the embeddings), so the terms in ``S_t`` are kept.
    """
    eye = torch.eye(
        transforms.shape[-1], dtype=transforms.dtype, device=transforms.device
    )
    stretch = transforms @ transforms.mT - eye
    local = 0.5 * (problem.degrees * (problem.S * stretch).sum((-2, -1))).sum()
    return local + rotation_energy_change(problem, transforms)


def _taylor_change(problem: GaugeProblem, gauge_fields: torch.Tensor):
    # second-order expansion of rotation_energy_change(expm(Omega)) around Omega = 0
    omega = gauge_fields - gauge_fields.mT
    a, b, M = omega[problem.src], omega[problem.dst], problem.M
    first = (M * b.mT).sum((-2, -1)) - (a * M.mT).sum((-2, -1))
    second = 0.5 * (M * (b @ b).mT).sum((-2, -1)) + 0.5 * ((a @ a) * M.mT).sum((-2, -1))
    cross = ((a @ M) * b.mT).sum((-2, -1))
    return -(problem.weights * (first + second - cross)).sum()


def _exact_change(problem: GaugeProblem, gauge_fields: torch.Tensor):
    return rotation_energy_change(problem, skew_exp(gauge_fields))


def _precondition(problem: GaugeProblem, grad: torch.Tensor) -> torch.Tensor:
    # per rotation plane (i, j) in the eigenbasis of the average S_t, then Lap^+ on t
    g = problem.basis.mT @ grad @ problem.basis
    g = g * problem.plane_scale
    g = (problem.lap_pinv @ g.reshape(g.shape[0], -1)).reshape(g.shape)
    return problem.basis @ g @ problem.basis.mT


def _minimise(problem, objective, gauge_fields, num_steps):
    """Preconditioned descent with an Armijo line search; never increases ``objective``.

    Starts from ``gauge_fields`` if the objective is negative there, else from zero.
    Returns the skew gauge fields reached, the objective there (0-dim tensor) and the
    number of steps taken.
    """
    zeros = torch.zeros_like(problem.S)
    start = zeros if gauge_fields is None else (gauge_fields - gauge_fields.mT) / 2
    point = start.clone().requires_grad_()
    value = objective(problem, point)
    if gauge_fields is not None and not value.item() < 0:
        point = zeros.clone().requires_grad_()
        value = objective(problem, point)
    # rounding may make the value at zero differ from zero; the line search needs it
    best = torch.zeros_like(value) if not point.detach().any() else value.detach()

    rate, steps = 1.0, 0
    while steps < num_steps:
        (grad,) = torch.autograd.grad(value, point)
        direction = _precondition(problem, grad)
        slope = (grad * direction).sum().item()
        if not slope > problem.tol:
            break  # the possible decrease is below rounding: converged

        # backtracking from twice the last accepted rate, capped at the Newton step
        rate, accepted = min(1.0, 2 * rate), False
        for _ in range(_MAX_BACKTRACKS):
            trial = (point.detach() - rate * direction).requires_grad_()
            trial_value = objective(problem, trial)
            if trial_value.item() <= best.item() - _ARMIJO * rate * slope:
                accepted = True
                break
            rate /= 2
        if not accepted:
            break
        point, value, best = trial, trial_value, trial_value.detach()
        steps += 1
    return point.detach(), best, steps


def _descend(problem: GaugeProblem, gauge_fields, num_steps: int):
    with torch.enable_grad():
        fields, change, _ = _minimise(problem, _exact_change, gauge_fields, num_steps)
    return fields, skew_exp(fields), change


def natural_gradient(
    problem: GaugeProblem,
    coupling,
    gauge_fields,
    num_steps: int,
    allow_reflections: bool,
):
    """Natural-gradient descent on the exact auxiliary loss.

    With ``allow_reflections`` a Procrustes sweep over ``O(d)`` along a spanning tree
    comes first (kept only if it lowers the energy); the gauge fields then describe the
    polishing after the sweep.

    :returns: ``(gauge_fields, rotations, change)``; ``change <= 0`` is the exact
        change of the prior energy under ``rotations``.
    """
    if not allow_reflections:
        return _descend(problem, gauge_fields, num_steps)
    sweep = tree_rotations(problem.S, problem.M, coupling, allow_reflections=True)
    sweep_change = rotation_energy_change(problem, sweep)
    if not sweep_change.item() < -problem.tol:
        return _descend(problem, gauge_fields, num_steps)

    # polish in the frame reached by the sweep
    S = sweep.mT @ problem.S @ sweep
    M = sweep[problem.src].mT @ problem.M @ sweep[problem.dst]
    polish = build_problem(S, M, coupling)
    fields, R, change = _descend(polish, gauge_fields, num_steps)
    return fields, sweep @ R, sweep_change + change


def taylor_natural_gradient(problem: GaugeProblem, gauge_fields, num_steps: int):
    """The paper's variant: natural gradient on the second-order expansion.

    The gauge fields found are applied to first order, ``A_t = I + Omega_t``, scaled by
    the largest damping factor ``2^-k`` for which the exact energy decreases.

    :returns: ``(gauge_fields, transforms, change)`` with ``change <= 0``; the returned
        gauge fields are the damped ones, so ``transforms = I + G - G^T``.
    """
    with torch.enable_grad():
        fields, _, _ = _minimise(problem, _taylor_change, gauge_fields, num_steps)
    eye = torch.eye(fields.shape[-1], dtype=fields.dtype, device=fields.device)
    damping = 1.0
    for _ in range(_MAX_BACKTRACKS):
        transforms = eye + damping * (fields - fields.mT)
        change = energy_change(problem, transforms)
        if change.item() < -problem.tol:
            return damping * fields, transforms, change
        damping /= 2
    zeros = torch.zeros_like(fields)
    return zeros, eye.expand_as(fields).clone(), change.new_zeros(())
