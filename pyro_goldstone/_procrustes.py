# SPDX-License-Identifier: Apache-2.0
"""Exact gauge fixing on trees by one sweep of orthogonal Procrustes problems (internal).

On a tree every edge term ``w_e tr(R_t^T M_e R_t')`` depends only on the relative
rotation ``R_t' R_t^T`` of its edge, and the relative rotations of different edges can
be chosen independently. Each one is the solution of its own Procrustes problem, so all
SVDs are one batched call; only the composition from the root outwards is sequential
(``T - 1`` products of ``d x d`` matrices).
"""

from __future__ import annotations

import torch

__all__ = ["common_rotation", "procrustes", "tree_rotations", "tree_sweep"]


def procrustes(matrices: torch.Tensor, allow_reflections: bool) -> torch.Tensor:
    """The orthogonal ``Q`` that maximises ``tr(A Q)`` for each matrix ``A``.

    With ``A = U diag(s) V^T`` the maximiser over ``O(d)`` is ``Q = V U^T``; over
    ``SO(d)`` the column of ``V`` that belongs to the smallest singular value changes
    sign when ``det(V U^T) = -1``.

    :param torch.Tensor matrices: shape ``(..., d, d)``.
    :param bool allow_reflections: maximise over ``O(d)`` instead of ``SO(d)``.
    :rtype: torch.Tensor
    """
    U, _, Vh = torch.linalg.svd(matrices)
    V = Vh.mT
    if not allow_reflections:
        signs = torch.ones(matrices.shape[:-1], dtype=matrices.dtype, device=V.device)
        signs[..., -1] = torch.linalg.det(V @ U.mT).sign()
        V = V * signs.unsqueeze(-2)
    return V @ U.mT


def common_rotation(S: torch.Tensor, rotations: torch.Tensor, allow_reflections: bool):
    """The common ``Q`` that moves the embeddings least under ``X_t -> X_t R_t Q``.

    It minimises ``sum_t ||X_t R_t Q - X_t||_F^2``, that is, it maximises
    ``tr(sum_t S_t R_t Q)``; the prior energy does not depend on it.

    :returns: ``rotations @ Q``, shape ``(T, d, d)``.
    """
    Q = procrustes((S @ rotations).sum(0), allow_reflections)
    return rotations @ Q


def tree_sweep(
    M: torch.Tensor,
    edges: torch.Tensor,
    tree: tuple[torch.Tensor, torch.Tensor],
    num_steps: int,
    allow_reflections: bool,
) -> torch.Tensor:
    """Rotations ``R_t`` that maximise ``sum_e tr(R_t^T M_e R_t')`` over a tree.

    :param torch.Tensor M: overlaps ``X_t^T X_t'`` of the coupling's edges, ``(E, d, d)``.
    :param torch.Tensor edges: the coupling's edges ``(t, t')`` with ``t < t'``, a CPU
        tensor of shape ``(E, 2)``.
    :param tuple tree: ``(parents, children)`` in breadth-first order from time step 0,
        CPU tensors of shape ``(T - 1,)``, every pair an edge of ``edges``.
    :param int num_steps: ``T``.
    :param bool allow_reflections: whether the relative transformations may be
        reflections.
    :returns: rotations of shape ``(T, d, d)`` with ``R_0 = I``.
    :rtype: torch.Tensor
    """
    parents, children = (t.tolist() for t in tree)
    position = {tuple(edge): i for i, edge in enumerate(edges.tolist())}
    index = [position[(min(p, c), max(p, c))] for p, c in zip(parents, children)]
    index = torch.tensor(index, dtype=torch.long, device=M.device)

    # R_t' = Q_e R_t for the edge (t, t'), and R_t = Q_e^T R_t' when t' is the parent
    relative = procrustes(M[index], allow_reflections)
    downward = torch.tensor(
        [p < c for p, c in zip(parents, children)], device=M.device
    ).view(-1, 1, 1)
    relative = torch.where(downward, relative, relative.mT)

    d = M.shape[-1]
    rotations = torch.empty(num_steps, d, d, dtype=M.dtype, device=M.device)
    rotations[0] = torch.eye(d, dtype=M.dtype, device=M.device)
    for i, (parent, child) in enumerate(zip(parents, children)):
        rotations[child] = relative[i] @ rotations[parent]
    return rotations


def tree_rotations(S, M, coupling, allow_reflections: bool) -> torch.Tensor:
    """Sweep a maximum-weight spanning tree of ``coupling``, then the common rotation.

    On a tree this is the exact minimiser of the prior energy; on a graph with cycles it
    ignores the edges off the tree.

    :param torch.Tensor S: ``(T, d, d)`` overlaps ``X_t^T X_t``.
    :param torch.Tensor M: ``(E, d, d)`` overlaps ``X_t^T X_t'`` of ``coupling.edges``.
    :param coupling: the :class:`~pyro_goldstone.coupling.Coupling` graph.
    :param bool allow_reflections: allow ``det R_t = -1``.
    :returns: rotations of shape ``(T, d, d)``.
    :rtype: torch.Tensor
    """
    tree = coupling.spanning_tree()[:2]
    R = tree_sweep(M, coupling.edges, tree, coupling.num_steps, allow_reflections)
    return common_rotation(S, R, allow_reflections)
