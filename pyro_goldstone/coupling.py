# SPDX-License-Identifier: Apache-2.0
"""Weighted coupling graphs between the time steps (tasks) of an embedding model.

A :class:`Coupling` is the graph of the quadratic prior

.. math::

    \\ell_\\mathrm{prior}(X) = \\frac12 \\sum_{(t, t')} A_{tt'} \\|X_t - X_{t'}\\|_F^2
    = \\frac12 \\sum_{t, t'} \\mathrm{Lap}_{tt'} \\mathrm{tr}(X_t^\\top X_{t'}),

with symmetric non-negative adjacency ``A`` and Laplacian ``Lap = D - A``. The graph is
kept on the CPU in float64; dense matrices derived from it are built on request for the
device and dtype of the embeddings and cached there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import torch

__all__ = ["Coupling"]

_ArrayLike = Union[torch.Tensor, np.ndarray, scipy.sparse.spmatrix, Sequence]


def _to_float64_array(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{name} must be numeric, but got {type(value).__name__}"
        ) from e
    return array


class Coupling:
    """A connected, weighted, undirected graph over ``num_steps`` time steps.

    Build one with :meth:`chain`, :meth:`from_times` or :meth:`from_adjacency`; the
    constructor itself takes the edge list.

    :param int num_steps: number of time steps ``T`` (nodes of the graph).
    :param edges: integer array of shape ``(E, 2)``, each undirected edge once.
    :param weights: positive finite coupling strengths of shape ``(E,)``.
    :raises ValueError: if an edge is out of range, repeated or a self-loop, if a weight is
        not positive and finite, or if the graph is not connected.
    """

    def __init__(self, num_steps: int, edges: _ArrayLike, weights: _ArrayLike):
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
            raise TypeError(f"num_steps must be an int, but got {num_steps!r}")
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, but got {num_steps}")
        edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
        weights = _to_float64_array(weights, "weights").reshape(-1)
        if len(weights) != len(edges):
            raise ValueError(
                f"weights must have one entry per edge: {len(edges)} edges, "
                f"{len(weights)} weights"
            )
        if len(edges) and (edges.min() < 0 or edges.max() >= num_steps):
            raise ValueError(f"edges must index time steps in [0, {num_steps})")
        if np.any(edges[:, 0] == edges[:, 1]):
            raise ValueError("edges must not contain self-loops")
        if not np.all(np.isfinite(weights)):
            raise ValueError("coupling weights must be finite")
        if np.any(weights <= 0):
            raise ValueError(f"coupling weights must be positive, got {weights.min()}")

        # store each edge as (smaller, larger), sorted, so that equal graphs compare equal
        edges = np.sort(edges, axis=1)
        order = np.lexsort((edges[:, 1], edges[:, 0]))
        edges, weights = edges[order], weights[order]
        if len(edges) > 1 and np.any(np.all(edges[1:] == edges[:-1], axis=1)):
            raise ValueError("edges must list every undirected edge once")

        self.num_steps = int(num_steps)
        self._edges = edges
        self._weights = weights
        num_components, _ = scipy.sparse.csgraph.connected_components(
            self._sparse_adjacency(), directed=False
        )
        if num_components != 1:
            raise ValueError(
                f"the coupling graph must be connected, but it has {num_components} "
                "components; couple every time step to the others or fit the components "
                "separately"
            )
        self._cache: dict = {}

    # ----- constructors -----

    @classmethod
    def chain(cls, num_steps: int, strength: Union[float, _ArrayLike]) -> "Coupling":
        """A Markov chain ``0 - 1 - ... - (T-1)``.

        :param int num_steps: number of time steps ``T``.
        :param strength: one coupling strength for every edge, or one per edge (shape
            ``(T - 1,)``).
        :rtype: Coupling
        """
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
            raise TypeError(f"num_steps must be an int, but got {num_steps!r}")
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, but got {num_steps}")
        strength = _to_float64_array(strength, "strength")
        if strength.ndim == 0:
            strength = np.full(num_steps - 1, float(strength))
        if strength.shape != (num_steps - 1,):
            raise ValueError(
                f"strength must be a scalar or have shape ({num_steps - 1},), "
                f"but got shape {strength.shape}"
            )
        if not np.all(np.isfinite(strength)) or np.any(strength <= 0):
            raise ValueError("strength must be positive and finite")
        t = np.arange(num_steps - 1)
        return cls(num_steps, np.stack([t, t + 1], axis=1), strength)

    @classmethod
    def from_times(cls, times: _ArrayLike, diffusion: float) -> "Coupling":
        """A chain over time stamps with coupling ``1 / (diffusion * (tau_{t+1} - tau_t))``.

        This is the coupling of a Wiener process (and of the Ornstein-Uhlenbeck prior of
        dynamic word embeddings) observed at the given times; uneven gaps are allowed.

        :param times: strictly increasing finite time stamps of shape ``(T,)``.
        :param float diffusion: positive diffusion constant ``D``.
        :rtype: Coupling
        """
        times = _to_float64_array(times, "times")
        if times.ndim != 1 or len(times) < 1:
            raise ValueError(
                f"times must be a non-empty 1-D array, got shape {times.shape}"
            )
        if not np.all(np.isfinite(times)):
            raise ValueError("times must be finite")
        gaps = np.diff(times)
        if np.any(gaps <= 0):
            bad = int(np.argmax(gaps <= 0))
            raise ValueError(
                f"times must increase strictly, but times[{bad + 1}] = {times[bad + 1]} "
                f"follows times[{bad}] = {times[bad]}"
            )
        diffusion = float(diffusion)
        if not (math.isfinite(diffusion) and diffusion > 0):
            raise ValueError(f"diffusion must be positive and finite, got {diffusion}")
        return cls.chain(len(times), 1.0 / (diffusion * gaps))

    @classmethod
    def from_adjacency(cls, adjacency: _ArrayLike) -> "Coupling":
        """Any weighted undirected graph from its symmetric adjacency matrix.

        Zero entries mean "no edge"; the diagonal is ignored (a self-coupling contributes
        nothing to the prior).

        :param adjacency: dense (NumPy, PyTorch, nested lists) or sparse (SciPy, PyTorch)
            non-negative symmetric matrix of shape ``(T, T)``.
        :rtype: Coupling
        """
        if isinstance(adjacency, torch.Tensor) and adjacency.is_sparse:
            adjacency = adjacency.to_dense()
        if scipy.sparse.issparse(adjacency):
            matrix = scipy.sparse.coo_matrix(adjacency, dtype=np.float64)
        else:
            matrix = scipy.sparse.coo_matrix(_to_float64_array(adjacency, "adjacency"))
        if matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"adjacency must be square, but got shape {matrix.shape}")
        data = matrix.data
        if not np.all(np.isfinite(data)):
            raise ValueError(
                "adjacency must be finite, but it has NaN or infinite entries"
            )
        if np.any(data < 0):
            raise ValueError("adjacency must be non-negative")
        difference = abs(matrix - matrix.T)
        scale = abs(matrix).max() if matrix.nnz else 0.0
        if difference.nnz and difference.max() > 1e-12 * scale:
            raise ValueError("adjacency must be symmetric")
        upper = scipy.sparse.triu(matrix, k=1).tocoo()
        keep = upper.data > 0
        edges = np.stack([upper.row[keep], upper.col[keep]], axis=1)
        return cls(matrix.shape[0], edges, upper.data[keep])

    # ----- structure -----

    @property
    def num_edges(self) -> int:
        """Number of undirected edges ``E``."""
        return len(self._edges)

    @property
    def edges(self) -> torch.Tensor:
        """Edges ``(t, t')`` with ``t < t'``, a CPU ``LongTensor`` of shape ``(E, 2)``."""
        return torch.from_numpy(self._edges.copy())

    @property
    def weights(self) -> torch.Tensor:
        """Coupling strengths, a CPU float64 tensor of shape ``(E,)``."""
        return torch.from_numpy(self._weights.copy())

    @property
    def is_tree(self) -> bool:
        """Whether the graph has no cycle (a connected graph with ``T - 1`` edges)."""
        return self.num_edges == self.num_steps - 1

    @property
    def is_chain(self) -> bool:
        """Whether the graph is the chain ``0 - 1 - ... - (T-1)``."""
        t = np.arange(self.num_steps - 1)
        return self.is_tree and bool(
            np.all(self._edges[:, 0] == t) and np.all(self._edges[:, 1] == t + 1)
        )

    def _sparse_adjacency(self) -> scipy.sparse.csr_matrix:
        T = self.num_steps
        rows = np.concatenate([self._edges[:, 0], self._edges[:, 1]])
        cols = np.concatenate([self._edges[:, 1], self._edges[:, 0]])
        data = np.concatenate([self._weights, self._weights])
        return scipy.sparse.csr_matrix((data, (rows, cols)), shape=(T, T))

    def spanning_tree(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A maximum-weight spanning tree, in breadth-first order from time step 0.

        Every node but the root appears once as a child after its parent has appeared, so
        a single pass over the returned arrays can propagate a quantity from the root.

        :returns: ``(parents, children, weights)``, CPU tensors of shape ``(T - 1,)``.
        :rtype: tuple
        """
        key = "spanning_tree"
        if key not in self._cache:
            adjacency = self._sparse_adjacency()
            if not self.is_tree:
                # maximum-weight tree: strongest couplings first (weights are positive)
                inverted = adjacency.copy()
                inverted.data = 1.0 / inverted.data
                tree = scipy.sparse.csgraph.minimum_spanning_tree(inverted)
                tree = tree + tree.T
                tree.data = 1.0 / tree.data
                adjacency = tree.tocsr()
            order, predecessors = scipy.sparse.csgraph.breadth_first_order(
                adjacency, 0, directed=False, return_predecessors=True
            )
            children = np.asarray(order[1:], dtype=np.int64)
            parents = np.asarray(predecessors[children], dtype=np.int64)
            if len(children):
                weights = np.asarray(adjacency[parents, children]).reshape(-1)
            else:  # T = 1: scipy returns an empty sparse matrix, not an array
                weights = np.zeros(0)
            self._cache[key] = tuple(
                torch.from_numpy(a) for a in (parents, children, weights)
            )
        return self._cache[key]

    # ----- dense matrices, cached per device and dtype -----

    def _cached(self, name: str, dtype, device, build):
        dtype = torch.get_default_dtype() if dtype is None else dtype
        device = torch.device("cpu") if device is None else torch.device(device)
        if device.type == "cuda" and device.index is None:
            # one entry for "cuda" and the tensors' "cuda:0"
            device = torch.device("cuda", torch.cuda.current_device())
        key = (name, dtype, device)
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(build(), dtype=dtype, device=device)
        return self._cache[key]

    def adjacency(self, dtype=None, device=None) -> torch.Tensor:
        """Dense symmetric adjacency of shape ``(T, T)``, cached per dtype and device.

        :param torch.dtype dtype: dtype of the result (default:
            ``torch.get_default_dtype()``).
        :param device: device of the result (default: CPU).
        :rtype: torch.Tensor
        """
        return self._cached(
            "adjacency", dtype, device, lambda: self._sparse_adjacency().toarray()
        )

    def laplacian(self, dtype=None, device=None) -> torch.Tensor:
        """Dense graph Laplacian ``D - A`` of shape ``(T, T)``, cached per dtype/device.

        :param torch.dtype dtype: dtype of the result (default:
            ``torch.get_default_dtype()``).
        :param device: device of the result (default: CPU).
        :rtype: torch.Tensor
        """
        return self._cached(
            "laplacian",
            dtype,
            device,
            lambda: scipy.sparse.csgraph.laplacian(self._sparse_adjacency()).toarray(),
        )

    def _eigh(self) -> tuple[np.ndarray, np.ndarray]:
        if "eigh" not in self._cache:
            lap = scipy.sparse.csgraph.laplacian(self._sparse_adjacency()).toarray()
            self._cache["eigh"] = np.linalg.eigh(lap)
        return self._cache["eigh"]

    @property
    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues of the Laplacian in ascending order (float64, CPU, shape ``(T,)``).

        The first one is zero (up to rounding): the graph is connected.
        """
        return torch.from_numpy(self._eigh()[0].copy())

    def laplacian_pinv(self, dtype=None, device=None) -> torch.Tensor:
        """Moore-Penrose pseudo-inverse of the Laplacian, shape ``(T, T)``.

        Computed once in float64 by an eigendecomposition; every eigenvalue but the single
        zero one (the global mode, constant over time) is inverted and that one stays zero.
        The result is cached per dtype and device, so later calls return the same tensor.

        :param torch.dtype dtype: dtype of the result (default:
            ``torch.get_default_dtype()``).
        :param device: device of the result (default: CPU).
        :rtype: torch.Tensor
        """

        def build():
            values, vectors = self._eigh()
            inverse = np.zeros_like(values)
            inverse[1:] = 1.0 / values[1:]
            return (vectors * inverse) @ vectors.T

        return self._cached("laplacian_pinv", dtype, device, build)

    # ----- validation -----

    def check_num_steps(self, num_steps: int, name: str = "X") -> None:
        """Raise :class:`ValueError` unless ``num_steps`` equals the graph's ``T``.

        :param int num_steps: the size of the caller's time dimension.
        :param str name: the caller's argument name, used in the message.
        """
        if num_steps != self.num_steps:
            raise ValueError(
                f"{name} has {num_steps} time steps, but the coupling graph has "
                f"{self.num_steps}"
            )

    def __repr__(self) -> str:
        kind = "chain" if self.is_chain else ("tree" if self.is_tree else "graph")
        return (
            f"Coupling({kind}, num_steps={self.num_steps}, num_edges={self.num_edges})"
        )
