# SPDX-License-Identifier: Apache-2.0
"""Remove the relative rotations between time steps that the prior barely fixes.

Every local loss is invariant under ``X_t -> X_t R_t`` with orthogonal ``R_t``; only the
quadratic prior

.. math::

    \\ell_\\mathrm{prior}(X R) = \\frac12 \\sum_{(t, t')} A_{tt'}
        \\|X_t R_t - X_{t'} R_{t'}\\|_F^2
    = \\mathrm{const} - \\sum_{(t, t')} A_{tt'} \\mathrm{tr}(R_t^\\top M_{tt'} R_{t'})

depends on them, and only through the ``d x d`` overlaps ``S_t = X_t^T X_t`` and
``M_tt' = X_t^T X_t'``. A gauge phase computes the overlaps once (``O(|E| N d^2)``),
finds rotations that lower the prior with work that does not depend on ``N``
(:func:`solve_gauge`), and applies them (:func:`rotate_`), which leaves every local loss
unchanged.

Embeddings ``X`` are one tensor of shape ``(T, N, d)`` or a sequence of tensors of
shapes ``(T, N_k, d)`` that share one rotation per time step (users and items, words
and contexts). Everything follows the device and dtype of ``X``; the small ``d x d``
problems are solved in at least single precision.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager
from typing import NamedTuple, Optional, Union

import torch

from pyro_goldstone._natural_gradient import (
    build_problem,
    natural_gradient,
    rotation_energy_change,
    taylor_natural_gradient,
)
from pyro_goldstone._procrustes import tree_rotations
from pyro_goldstone.coupling import Coupling

__all__ = [
    "GaugeResult",
    "energy_from_overlaps",
    "optimal_rotations",
    "overlaps",
    "prior_energy",
    "rotate",
    "rotate_",
    "rotate_first_order",
    "solve_gauge",
]

logger = logging.getLogger(__name__)

Embeddings = Union[torch.Tensor, Sequence]

METHODS = ("natural_gradient", "taylor", "procrustes")

#: natural-gradient steps per phase when ``num_steps=None``; on the synthetic problem
#: (d = 3, T = 100) and at d = 100 the phase has converged to rounding after 3-8 steps
DEFAULT_NUM_STEPS = 10

# number of elements of the temporary blocks gathered from X (bounds extra memory)
_BLOCK_ELEMENTS = 2**24


class GaugeResult(NamedTuple):
    """The outcome of one gauge phase (:func:`solve_gauge`).

    :ivar torch.Tensor rotations: ``(T, d, d)``, to be applied as ``X_t R_t``.
    :ivar gauge_fields: ``(T, d, d)`` skew gauge fields ``G`` to warm-start the next
        phase, or ``None`` for ``"procrustes"``.
    :ivar torch.Tensor energy_before: prior energy of ``X`` (0-dim).
    :ivar torch.Tensor energy_after: prior energy of ``X`` after the rotations (0-dim),
        never larger than ``energy_before``.
    """

    rotations: torch.Tensor
    gauge_fields: Optional[torch.Tensor]
    energy_before: torch.Tensor
    energy_after: torch.Tensor


# ----- input checks -----


def _as_tensors(X: Embeddings, name: str = "X") -> list[torch.Tensor]:
    """Check the structure of ``X`` and return its tensors as a list."""
    if isinstance(X, torch.Tensor):
        tensors, names = [X], [name]
    elif isinstance(X, Sequence) and not isinstance(X, str):
        tensors, names = list(X), [f"{name}[{k}]" for k in range(len(X))]
        if not tensors:
            raise ValueError(f"{name} must hold at least one tensor, but it is empty")
    else:
        raise TypeError(
            f"{name} must be a tensor or a sequence of tensors, "
            f"but got {type(X).__name__}"
        )
    for x, label in zip(tensors, names):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{label} must be a tensor, but got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{label} must be floating point, but has dtype {x.dtype}")
        if x.dim() != 3:
            raise ValueError(
                f"{label} must have shape (T, N, d), but got shape {tuple(x.shape)}"
            )
    first = tensors[0]
    for x, label in zip(tensors[1:], names[1:]):
        if x.shape[0] != first.shape[0] or x.shape[-1] != first.shape[-1]:
            raise ValueError(
                f"{label} has shape {tuple(x.shape)}, but {names[0]} has shape "
                f"{tuple(first.shape)}; T and d must agree"
            )
        if x.dtype != first.dtype or x.device != first.device:
            raise ValueError(
                f"{label} is {x.dtype} on {x.device}, but {names[0]} is "
                f"{first.dtype} on {first.device}"
            )
    return tensors


def _restructure(X: Embeddings, tensors: list[torch.Tensor]) -> Embeddings:
    if isinstance(X, torch.Tensor):
        return tensors[0]
    return tuple(tensors) if isinstance(X, tuple) else list(tensors)


def _check_coupling(coupling, num_steps: int) -> None:
    if not isinstance(coupling, Coupling):
        raise TypeError(
            f"coupling must be a Coupling, but got {type(coupling).__name__}"
        )
    coupling.check_num_steps(num_steps, "X")


def _check_matrices(value, shape: tuple, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, but got {type(value).__name__}")
    if tuple(value.shape) != shape:
        raise ValueError(
            f"{name} must have shape {shape}, but got shape {tuple(value.shape)}"
        )
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} must be finite, but it has NaN or infinite entries")
    return value


def _raise_non_finite(tensors: list[torch.Tensor], single: bool) -> None:
    """Name the first non-finite entry of ``X`` (only called once a check failed)."""
    for k, x in enumerate(tensors):
        bad = ~torch.isfinite(x)
        if bad.any():
            where = tuple(bad.nonzero()[0].tolist())
            label = "X" if single else f"X[{k}]"
            raise ValueError(
                f"{label} must be finite, but {label}{list(where)} is {x[where]}"
            )
    raise ValueError(
        "X is too large: its overlaps X_t^T X_t overflow in " + str(tensors[0].dtype)
    )


# ----- energies and overlaps -----


def _edge_blocks(x: torch.Tensor, coupling: Coupling):
    """Yield ``(first, second, edges)``: the rows ``x[t]`` and ``x[t']`` of edge blocks.

    On a chain the blocks are views of ``x``; otherwise they are gathered copies whose
    size is bounded by ``_BLOCK_ELEMENTS``.
    """
    T, N, d = x.shape
    size = max(1, _BLOCK_ELEMENTS // max(1, N * d))
    edges = coupling.edges
    chain = coupling.is_chain
    if not chain:
        edges = edges.to(x.device)
    for start in range(0, coupling.num_edges, size):
        block = slice(start, min(start + size, coupling.num_edges))
        if chain:
            yield x[block], x[block.start + 1 : block.stop + 1], block
        else:
            src, dst = edges[block, 0], edges[block, 1]
            yield x.index_select(0, src), x.index_select(0, dst), block


def prior_energy(X: Embeddings, coupling: Coupling) -> torch.Tensor:
    """The prior energy ``1/2 sum_(t, t') A_tt' ||X_t - X_t'||_F^2``.

    Differentiable; summed over all tensors of ``X``.

    :param X: embeddings, a tensor ``(T, N, d)`` or a sequence of ``(T, N_k, d)``.
    :param Coupling coupling: the coupling graph over the ``T`` time steps.
    :returns: 0-dim tensor on the device and in the dtype of ``X``.
    :rtype: torch.Tensor
    :raises ValueError: if the shapes of ``X`` or its number of time steps are wrong.
    """
    tensors = _as_tensors(X)
    _check_coupling(coupling, tensors[0].shape[0])
    first = tensors[0]
    weights = coupling.weights.to(first.device, first.dtype)
    energy = first.new_zeros(())
    for x in tensors:
        for a, b, block in _edge_blocks(x, coupling):
            squares = (a - b).square().sum((1, 2))
            energy = energy + 0.5 * (weights[block] * squares).sum()
    return energy


def overlaps(X: Embeddings, coupling: Coupling) -> tuple[torch.Tensor, torch.Tensor]:
    """The overlaps ``S_t = X_t^T X_t`` and ``M_e = X_t^T X_t'`` for every edge.

    Both are summed over the tensors of ``X``. Cost ``O((T + |E|) N d^2)``.

    :param X: embeddings, a tensor ``(T, N, d)`` or a sequence of ``(T, N_k, d)``.
    :param Coupling coupling: the coupling graph; ``M`` follows ``coupling.edges``.
    :returns: ``(S, M)`` of shapes ``(T, d, d)`` and ``(E, d, d)``.
    :rtype: tuple
    :raises ValueError: if the shapes of ``X`` or its number of time steps are wrong.
    """
    tensors = _as_tensors(X)
    _check_coupling(coupling, tensors[0].shape[0])
    return _overlaps(tensors, coupling)


def _overlaps(tensors: list[torch.Tensor], coupling: Coupling):
    d = tensors[0].shape[-1]
    S = sum(x.mT @ x for x in tensors)
    M = tensors[0].new_zeros(coupling.num_edges, d, d)
    for x in tensors:
        for a, b, block in _edge_blocks(x, coupling):
            M[block] += a.mT @ b
    return S, M


def energy_from_overlaps(
    S: torch.Tensor,
    M: torch.Tensor,
    coupling: Coupling,
    rotations: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The prior energy of ``X_t A_t`` computed from the overlaps of ``X`` alone.

    Uses ``||X_t A_t - X_t' A_t'||^2 = tr(A_t^T S_t A_t) + tr(A_t'^T S_t' A_t')
    - 2 tr(A_t^T M_e A_t')``, so ``A_t`` need not be orthogonal. The result is clamped at
    zero against rounding.

    :param torch.Tensor S: ``(T, d, d)`` overlaps ``X_t^T X_t``.
    :param torch.Tensor M: ``(E, d, d)`` overlaps ``X_t^T X_t'`` of ``coupling.edges``.
    :param Coupling coupling: the coupling graph.
    :param rotations: optional ``(T, d, d)`` matrices ``A_t`` (default: identity).
    :returns: 0-dim tensor.
    :rtype: torch.Tensor
    :raises ValueError: if a shape does not match the coupling.
    """
    if not isinstance(S, torch.Tensor) or S.dim() != 3:
        raise ValueError("S must be a tensor of shape (T, d, d)")
    _check_coupling(coupling, S.shape[0])
    T, d = S.shape[0], S.shape[-1]
    _check_matrices(M, (coupling.num_edges, d, d), "M")
    edges = coupling.edges.to(S.device)
    if rotations is not None:
        A = _check_matrices(rotations, (T, d, d), "rotations").to(S.dtype)
        S = A.mT @ S @ A
        M = A[edges[:, 0]].mT @ M @ A[edges[:, 1]]
    weights = coupling.weights.to(S.device, S.dtype)
    traces_S = S.diagonal(dim1=-2, dim2=-1).sum(-1)
    traces_M = M.diagonal(dim1=-2, dim2=-1).sum(-1)
    pairs = traces_S[edges[:, 0]] + traces_S[edges[:, 1]] - 2 * traces_M
    return (0.5 * (weights * pairs).sum()).clamp(min=0)


# ----- the gauge phase -----


@contextmanager
def _one_cpu_thread(device: torch.device):
    """Run the ``d x d`` stage of a phase on one CPU thread, then restore the setting.

    Batched linear algebra on small matrices gains nothing from threads, and when the
    cores are oversubscribed (other processes, or the data loader) every threaded LAPACK
    call waits at a barrier: on two shared cores a Procrustes phase at ``d = 100``,
    ``T = 50`` took 22 s with two threads against 0.9 s with one.
    """
    previous = torch.get_num_threads()
    if device.type != "cpu" or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_options(method, allow_reflections, gauge_fields, num_steps, coupling):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, but got {method!r}")
    if not isinstance(allow_reflections, bool):
        raise TypeError(
            f"allow_reflections must be a bool, but got {allow_reflections!r}"
        )
    if method == "procrustes":
        if gauge_fields is not None or num_steps is not None:
            raise ValueError(
                "gauge_fields and num_steps belong to the iterative methods; "
                "method='procrustes' takes neither"
            )
        if not coupling.is_tree:
            raise ValueError(
                "method='procrustes' is exact only on trees (chains included), but the "
                "coupling graph has a cycle; use method='natural_gradient' (with "
                "allow_reflections=True to start from a spanning-tree sweep)"
            )
    if method == "taylor" and allow_reflections:
        raise ValueError(
            "method='taylor' (the paper's first-order update) cannot remove "
            "reflections; use 'procrustes' or 'natural_gradient' with "
            "allow_reflections=True"
        )
    if num_steps is not None and (
        isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0
    ):
        raise ValueError(f"num_steps must be a non-negative int, but got {num_steps!r}")


def solve_gauge(
    X: Embeddings,
    coupling: Coupling,
    method: str = "natural_gradient",
    *,
    allow_reflections: bool = False,
    gauge_fields: Optional[torch.Tensor] = None,
    num_steps: Optional[int] = None,
    overlaps: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> GaugeResult:
    """One gauge phase: rotations ``R_t`` that lower the prior energy of ``X_t R_t``.

    Methods:

    - ``"natural_gradient"`` (any graph): descent on the exact auxiliary loss
      ``f(G) = l_prior(X expm(G - G^T)) - l_prior(X)`` along
      ``-Lap^+ grad f``, preconditioned per rotation plane ``(i, j)`` by
      ``1 / (2 (s_i + s_j))`` with ``s`` the spectrum of the average ``S_t`` (the Newton
      step of an aligned optimum), with a backtracking (Armijo) line search on the exact
      ``f`` from step size 1. It starts from ``gauge_fields`` if they lower the energy,
      else from ``G = 0``. With ``allow_reflections=True`` it first runs a Procrustes
      sweep over ``O(d)`` along a maximum-weight spanning tree (kept only if it lowers
      the energy), which fixes reflection sectors and large twists, then polishes.
    - ``"taylor"``: the paper's variant, the same descent on the second-order expansion
      of ``f``, applied to first order as ``A_t = I + Omega_t``; ``A_t`` is not
      orthogonal. The update is damped by the largest ``2^-k`` that lowers the exact
      energy (undamped it can diverge).
    - ``"procrustes"`` (trees and chains only): the exact minimum in one sweep of
      Procrustes problems, followed by the common rotation that moves the embeddings
      least (it minimises ``sum_t ||X_t R_t Q - X_t||_F^2``).

    Only the overlaps are computed from ``X`` (``O(|E| N d^2)``); all later work is
    ``O(T d^3 + T^2 d^2)`` and runs on one CPU thread (threads do not pay off on
    ``d x d`` matrices and stall badly on oversubscribed cores); the setting of
    :func:`torch.set_num_threads` is restored afterwards. If a method cannot lower the
    energy by more than rounding, the rotations are exactly the identity.

    :param X: embeddings, a tensor ``(T, N, d)`` or a sequence of ``(T, N_k, d)``.
    :param Coupling coupling: the coupling graph over the ``T`` time steps.
    :param str method: ``"natural_gradient"``, ``"taylor"`` or ``"procrustes"``.
    :param bool allow_reflections: allow ``det R_t = -1`` (default: ``False``, every
        ``R_t`` in ``SO(d)``).
    :param gauge_fields: ``(T, d, d)`` warm start for the iterative methods, usually the
        ``gauge_fields`` of the previous phase.
    :param int num_steps: steps of the iterative methods (default: 10).
    :param tuple overlaps: ``(S, M)`` from :func:`overlaps`, if already computed.
    :returns: rotations ``(T, d, d)`` in the dtype of ``X``, new gauge fields, and the
        prior energy before and after.
    :rtype: GaugeResult
    :raises ValueError: on malformed input, non-finite values (the first one is named),
        or ``method="procrustes"`` on a graph with a cycle.
    """
    tensors = _as_tensors(X)
    T, _, d = tensors[0].shape
    dtype, device = tensors[0].dtype, tensors[0].device
    _check_coupling(coupling, T)
    _check_options(method, allow_reflections, gauge_fields, num_steps, coupling)
    work_dtype = torch.promote_types(dtype, torch.float32)
    if gauge_fields is not None:
        gauge_fields = _check_matrices(gauge_fields, (T, d, d), "gauge_fields")
        gauge_fields = gauge_fields.detach().to(device, work_dtype)
    num_steps = DEFAULT_NUM_STEPS if num_steps is None else num_steps

    if overlaps is None:
        with torch.no_grad():
            S, M = _overlaps(tensors, coupling)
        if not torch.isfinite(S).all():
            _raise_non_finite(tensors, isinstance(X, torch.Tensor))
    else:
        if not isinstance(overlaps, (tuple, list)) or len(overlaps) != 2:
            raise TypeError("overlaps must be a pair (S, M) from overlaps(X, coupling)")
        S = _check_matrices(overlaps[0], (T, d, d), "overlaps[0]")
        M = _check_matrices(overlaps[1], (coupling.num_edges, d, d), "overlaps[1]")
    S = S.detach().to(device, work_dtype)
    M = M.detach().to(device, work_dtype)
    with _one_cpu_thread(S.device):
        return _solve(
            S, M, coupling, method, dtype, allow_reflections, gauge_fields, num_steps
        )


def _solve(S, M, coupling, method, dtype, allow_reflections, gauge_fields, num_steps):
    """The part of :func:`solve_gauge` after the overlaps, ``O(T d^3 + T^2 d^2)``.

    Works in the dtype of ``S``; the result is returned in ``dtype``.
    """
    T, d = S.shape[0], S.shape[-1]
    device, work_dtype = S.device, S.dtype
    energy_before = energy_from_overlaps(S, M, coupling)

    eye = torch.eye(d, dtype=work_dtype, device=device).expand(T, d, d)
    fields = None if method == "procrustes" else torch.zeros_like(eye)
    rotations, change = eye, energy_before.new_zeros(())
    if T > 1 and (d > 1 or allow_reflections):
        problem = build_problem(S, M, coupling)
        if method == "procrustes":
            R = tree_rotations(S, M, coupling, allow_reflections)
            delta = rotation_energy_change(problem, R)
        elif method == "taylor":
            G, R, delta = taylor_natural_gradient(problem, gauge_fields, num_steps)
        else:
            G, R, delta = natural_gradient(
                problem, coupling, gauge_fields, num_steps, allow_reflections
            )
        if delta.item() < -problem.tol:
            rotations, change = R, delta
            fields = None if method == "procrustes" else G

    energy_after = (energy_before + change).clamp(min=0)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "gauge phase (%s): prior energy %.6g -> %.6g",
            method,
            energy_before.item(),
            energy_after.item(),
        )
    return GaugeResult(
        rotations=rotations.to(dtype).contiguous(),
        gauge_fields=None if fields is None else fields.to(dtype),
        energy_before=energy_before.to(dtype),
        energy_after=energy_after.to(dtype),
    )


def optimal_rotations(
    X: Embeddings, coupling: Coupling, method: str = "natural_gradient", **kwargs
) -> torch.Tensor:
    """The rotations of :func:`solve_gauge`, shape ``(T, d, d)``.

    :param X: embeddings, a tensor ``(T, N, d)`` or a sequence of ``(T, N_k, d)``.
    :param Coupling coupling: the coupling graph over the ``T`` time steps.
    :param str method: ``"natural_gradient"``, ``"taylor"`` or ``"procrustes"``.
    :param kwargs: keyword options of :func:`solve_gauge`.
    :rtype: torch.Tensor
    """
    return solve_gauge(X, coupling, method, **kwargs).rotations


# ----- applying rotations -----


def _check_transforms(tensors, rotations, name: str) -> torch.Tensor:
    T, _, d = tensors[0].shape
    _check_matrices(rotations, (T, d, d), name)
    return rotations.to(tensors[0].device, tensors[0].dtype)


def rotate(X: Embeddings, rotations: torch.Tensor) -> Embeddings:
    """``X_t R_t`` for every time step, out of place.

    :param X: embeddings, a tensor ``(T, N, d)`` or a sequence of ``(T, N_k, d)``.
    :param torch.Tensor rotations: ``(T, d, d)``.
    :returns: the same structure as ``X``.
    :raises ValueError: if ``rotations`` has the wrong shape or is not finite.
    """
    tensors = _as_tensors(X)
    R = _check_transforms(tensors, rotations, "rotations")
    return _restructure(X, [x @ R for x in tensors])


def rotate_first_order(X: Embeddings, gauge_fields: torch.Tensor) -> Embeddings:
    """The paper's first-order update ``X_t (I + G_t - G_t^T)``, out of place.

    Unlike :func:`rotate` it does not preserve the local losses exactly: ``I + Omega``
    stretches the embeddings by ``I - Omega^2``.

    :param X: embeddings, a tensor ``(T, N, d)`` or a sequence of ``(T, N_k, d)``.
    :param torch.Tensor gauge_fields: ``(T, d, d)``.
    :returns: the same structure as ``X``.
    :raises ValueError: if ``gauge_fields`` has the wrong shape or is not finite.
    """
    tensors = _as_tensors(X)
    G = _check_transforms(tensors, gauge_fields, "gauge_fields")
    return _restructure(X, [x + x @ (G - G.mT) for x in tensors])


def rotate_(X: Embeddings, rotations: torch.Tensor) -> None:
    """``X_t <- X_t R_t`` in place, keeping the tensor objects (for parameters).

    Runs under :func:`torch.no_grad` in blocks of time steps, so the extra memory is a
    small fraction of ``X``.

    :param X: embeddings, a tensor ``(T, N, d)`` or a sequence of ``(T, N_k, d)``.
    :param torch.Tensor rotations: ``(T, d, d)``.
    :raises ValueError: if ``rotations`` has the wrong shape or is not finite; ``X`` is
        then unchanged.
    """
    tensors = _as_tensors(X)
    R = _check_transforms(tensors, rotations, "rotations")
    with torch.no_grad():
        for x in tensors:
            size = max(1, _BLOCK_ELEMENTS // max(1, x.shape[1] * x.shape[2]))
            for start in range(0, x.shape[0], size):
                block = slice(start, start + size)
                x[block] = x[block] @ R[block]
