# SPDX-License-Identifier: Apache-2.0
"""Gaussian Markov priors over time-indexed embeddings of shape ``(T, N, d)``.

Each prior treats the ``N`` embedding vectors and their ``d`` coordinates as independent
and couples the ``T`` time steps through the precision matrix

.. math::

    P = \\mathrm{Lap} + I / \\sigma_0^2,

where ``Lap`` is the Laplacian of a :class:`~pyro_goldstone.coupling.Coupling` graph.
The density of ``X`` is

.. math::

    \\log p(X) = -\\frac12 \\sum_{(t, t')} A_{tt'} \\|X_t - X_{t'}\\|_F^2
    - \\frac{\\|X\\|_F^2}{2 \\sigma_0^2}
    + \\frac{N d}{2} \\log\\det P - \\frac{T N d}{2} \\log(2 \\pi),

evaluated edge by edge in ``O(|E| N d)`` (``O(T N d)`` on a chain); the determinant is
computed once, in float64, when the prior is built. No dense covariance is ever formed
for the embedding vectors.

Without ``sigma0`` the prior is improper along the global mean (the same vector added
to every time step). Its ``log_prob`` is then the density of the part of ``X`` that is
orthogonal to that direction (the pseudo-determinant of ``Lap`` replaces ``det P`` and
``T - 1`` replaces ``T``), so it is defined up to a constant along the global mean;
sampling, :attr:`mean` and :attr:`variance` raise :class:`ValueError`.

The event shape ``(T, N, d)`` holds the ``N`` vectors between the time and coordinate
dimensions, so subsampling over ``N`` cannot be a batch dimension of these priors; use
:func:`~pyro_goldstone.guides.embedding_rows` instead (see :mod:`pyro_goldstone.guides`
for the full pattern). Minibatch models build a new prior with ``N = B`` at every step;
passing one :class:`~pyro_goldstone.coupling.Coupling` object to
:class:`GraphLaplacianPrior` lets all of them share its factorisation (chains are
detected and keep their banded algorithms).
"""

from __future__ import annotations

import math
import weakref
from typing import Optional, Union

import numpy as np
import scipy.linalg
import torch
from pyro.distributions import TorchDistribution, constraints
from torch.distributions import Independent, Normal, register_kl

from pyro_goldstone.coupling import Coupling

__all__ = [
    "GaussianMarkovChain",
    "GraphLaplacianPrior",
    "OrnsteinUhlenbeckPrior",
]

_Number = Union[int, float, torch.Tensor]

# Factors and small constant tensors depend only on the graph and sigma0; they are
# shared by all priors on one Coupling object, since minibatch models build a new prior
# (with N = B vectors) at every step.
_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, but got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, but got {value}")
    return int(value)


def _check_positive(value, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.requires_grad:
            raise TypeError(f"{name} must be a number (a constant), but got {value!r}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name} must be a number, but got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, but got {value}")
    return value


class GraphLaplacianPrior(TorchDistribution):
    """Gaussian prior over ``(T, N, d)`` embeddings coupled by any time-step graph.

    The precision per embedding coordinate is ``Lap + I / sigma0**2`` (see the module
    docstring). Chains use banded algorithms (``O(T)`` for the determinant and the
    marginal variances, a Markov recursion for sampling); other graphs factor the dense
    ``(T, T)`` precision once.

    :param coupling: the graph over the ``T`` time steps.
    :type coupling: ~pyro_goldstone.coupling.Coupling
    :param int num_vectors: number of embedding vectors ``N`` (the minibatch size when
        subsampling, see :func:`~pyro_goldstone.guides.embedding_rows`).
    :param int dim: embedding dimension ``d``.
    :param float sigma0: standard deviation of the rotation-invariant regulariser
        ``||X||^2 / (2 sigma0^2)``; ``None`` (default) leaves the prior improper along
        the global mean.
    :param torch.dtype dtype: dtype of samples (default: ``torch.get_default_dtype()``);
        :meth:`log_prob` follows the dtype and device of its argument.
    :param device: device of samples (default: CPU).
    :raises TypeError: if ``coupling`` is not a :class:`Coupling` or a size is not an int.
    :raises ValueError: if a size is smaller than 1 or ``sigma0`` is not positive and
        finite.
    """

    arg_constraints = {}
    support = constraints.independent(constraints.real, 3)
    has_rsample = True

    def __init__(
        self,
        coupling: Coupling,
        num_vectors: int,
        dim: int,
        *,
        sigma0: Optional[_Number] = None,
        dtype: Optional[torch.dtype] = None,
        device: Union[str, torch.device, None] = None,
        validate_args: Optional[bool] = None,
    ):
        if not isinstance(coupling, Coupling):
            raise TypeError(
                f"coupling must be a Coupling, but got {type(coupling).__name__}"
            )
        num_vectors = _check_count(num_vectors, "num_vectors")
        dim = _check_count(dim, "dim")
        sigma0 = None if sigma0 is None else _check_positive(sigma0, "sigma0")

        self.coupling = coupling
        self.sigma0 = sigma0
        self._dtype = torch.get_default_dtype() if dtype is None else dtype
        self._device = torch.device("cpu") if device is None else torch.device(device)
        self._cache = _SHARED.setdefault(coupling, {})
        if ("factor", sigma0) not in self._cache:
            self._cache["factor", sigma0] = self._factorize()
        self._factor, log_det = self._cache["factor", sigma0]
        rank = coupling.num_steps if sigma0 is not None else coupling.num_steps - 1
        num_entries = num_vectors * dim
        self._log_normalizer = (
            0.5 * num_entries * (log_det - rank * math.log(2 * math.pi))
        )
        event_shape = torch.Size((coupling.num_steps, num_vectors, dim))
        super().__init__(torch.Size(), event_shape, validate_args=validate_args)

    # ----- construction helpers -----

    def _degree(self) -> np.ndarray:
        """Diagonal of the Laplacian (the weighted degrees), shape ``(T,)``."""
        edges, weights = self.coupling.edges.numpy(), self.coupling.weights.numpy()
        degree = np.zeros(self.coupling.num_steps)
        np.add.at(degree, edges[:, 0], weights)
        np.add.at(degree, edges[:, 1], weights)
        return degree

    def _factorize(self) -> tuple[Optional[np.ndarray], float]:
        """Cholesky factor of the precision (``None`` if improper) and its log-det."""
        T = self.coupling.num_steps
        weights = self.coupling.weights.numpy()
        if self.sigma0 is None:
            # weighted matrix-tree theorem: pdet(Lap) = T * det(Lap without one row/col)
            if self.coupling.is_tree:
                return None, math.log(T) + float(np.log(weights).sum())
            reduced = self.coupling.laplacian(torch.float64).numpy()[1:, 1:]
            factor = scipy.linalg.cholesky(reduced, lower=True)
            return None, math.log(T) + 2.0 * float(np.log(np.diag(factor)).sum())
        if self.coupling.is_chain:
            # lower banded form: row 0 the diagonal, row 1 the sub-diagonal
            banded = np.zeros((2, T))
            banded[0] = self._degree() + 1.0 / self.sigma0**2
            banded[1, : T - 1] = -weights
            factor = scipy.linalg.cholesky_banded(banded, lower=True)
            return factor, 2.0 * float(np.log(factor[0]).sum())
        precision = self.coupling.laplacian(torch.float64).numpy().copy()
        precision[np.diag_indices(T)] += 1.0 / self.sigma0**2
        factor = scipy.linalg.cholesky(precision, lower=True)
        return factor, 2.0 * float(np.log(np.diag(factor)).sum())

    def _constant(self, name: str, dtype, device, build) -> torch.Tensor:
        """A small tensor derived from the graph and sigma0, cached per dtype/device."""
        key = (name, self.sigma0, dtype, torch.device(device))
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(build(), dtype=dtype, device=device)
        return self._cache[key]

    def expand(self, batch_shape, _instance=None):
        """The same prior with batch shape ``batch_shape`` (sharing its factorisation).

        :param torch.Size batch_shape: the new batch shape.
        :rtype: GraphLaplacianPrior
        """
        new = self._get_checked_instance(type(self), _instance)
        new.coupling = self.coupling
        new.sigma0 = self.sigma0
        new._dtype = self._dtype
        new._device = self._device
        new._factor = self._factor
        new._log_normalizer = self._log_normalizer
        new._cache = self._cache
        super(GraphLaplacianPrior, new).__init__(
            torch.Size(batch_shape), self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    # ----- density -----

    def _check_value(self, value: torch.Tensor) -> None:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"value must be a tensor, but got {type(value).__name__}")
        if value.shape[-3:] != self.event_shape:
            raise ValueError(
                f"value must end in the event shape {tuple(self.event_shape)} "
                f"(T, N, d), but got shape {tuple(value.shape)}"
            )

    def prior_energy(self, value: torch.Tensor) -> torch.Tensor:
        """The rotation-dependent part ``1/2 sum_edges w ||X_t - X_t'||_F^2``.

        This is :func:`pyro_goldstone.gauge.prior_energy` of ``value`` and
        :attr:`coupling`, batched over the leading dimensions; the regulariser is left
        out because it does not change under rotations.

        :param torch.Tensor value: embeddings of shape ``(..., T, N, d)``.
        :returns: the energy, of shape ``(...)``.
        :rtype: torch.Tensor
        """
        self._check_value(value)
        weights = self._constant(
            "weights", value.dtype, value.device, lambda: self.coupling.weights
        )
        if self.coupling.is_chain:
            difference = value[..., 1:, :, :] - value[..., :-1, :, :]
        else:
            edges = self._constant(
                "edges", torch.long, value.device, lambda: self.coupling.edges
            )
            difference = value.index_select(-3, edges[:, 0]) - value.index_select(
                -3, edges[:, 1]
            )
        squared = difference.pow(2).sum((-2, -1))
        return 0.5 * (squared * weights).sum(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log density of embeddings, exact including its normalising constant.

        :param torch.Tensor value: embeddings of shape ``(..., T, N, d)``.
        :returns: log density of shape ``(...)`` broadcast with :attr:`batch_shape`.
        :rtype: torch.Tensor
        :raises ValueError: if ``value`` does not end in the event shape.
        """
        if self._validate_args:
            self._validate_sample(value)
        energy = self.prior_energy(value)
        if self.sigma0 is not None:
            energy = energy + value.pow(2).sum((-3, -2, -1)) / (2 * self.sigma0**2)
        log_p = self._log_normalizer - energy
        return log_p.expand(torch.broadcast_shapes(log_p.shape, self.batch_shape))

    # ----- sampling and moments -----

    def _require_proper(self, what: str) -> None:
        if self.sigma0 is None:
            raise ValueError(
                f"{what} needs a proper prior, but this one is improper along the "
                "global mean; pass sigma0 (the standard deviation of the regulariser)"
            )

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Draw reparametrised samples ``X = L^{-T} Z`` with ``P = L L^T``.

        :param torch.Size sample_shape: leading sample dimensions.
        :returns: samples of shape ``sample_shape + batch_shape + (T, N, d)``.
        :rtype: torch.Tensor
        :raises ValueError: if the prior is improper (no ``sigma0``).
        """
        self._require_proper("sampling")
        shape = self._extended_shape(sample_shape)
        noise = torch.randn(shape, dtype=self._dtype, device=self._device)
        if self.coupling.is_chain:
            return self._solve_chain(noise)
        factor = self._constant(
            "factor", self._dtype, self._device, lambda: self._factor
        )
        flat = noise.reshape(shape[:-2] + (-1,))
        solved = torch.linalg.solve_triangular(factor.mT, flat, upper=True)
        return solved.reshape(shape)

    def _solve_chain(self, noise: torch.Tensor) -> torch.Tensor:
        # L^T is upper bidiagonal: x_t = (z_t - m_t x_{t+1}) / l_t, backwards in time
        diagonal = self._constant(
            "diag", noise.dtype, noise.device, lambda: self._factor[0]
        )
        lower = self._constant(
            "lower", noise.dtype, noise.device, lambda: self._factor[1]
        )
        T = self.coupling.num_steps
        steps = [noise[..., T - 1, :, :] / diagonal[T - 1]]
        for t in range(T - 2, -1, -1):
            steps.append((noise[..., t, :, :] - lower[t] * steps[-1]) / diagonal[t])
        return torch.stack(steps[::-1], dim=-3)

    def _marginal_variance(self) -> np.ndarray:
        """Diagonal of the covariance ``P^{-1}``, shape ``(T,)``, in float64."""
        if self.coupling.is_chain:
            # Var x_t = (1 + m_t^2 Var x_{t+1}) / l_t^2 from the recursion of rsample
            diagonal, lower = self._factor
            variance = np.empty_like(diagonal)
            variance[-1] = 1.0 / diagonal[-1] ** 2
            for t in range(len(diagonal) - 2, -1, -1):
                variance[t] = (1.0 + lower[t] ** 2 * variance[t + 1]) / diagonal[t] ** 2
            return variance
        inverse = scipy.linalg.cho_solve(
            (self._factor, True), np.eye(len(self._factor))
        )
        return np.diag(inverse).copy()

    @property
    def mean(self) -> torch.Tensor:
        """Zero, of shape ``batch_shape + (T, N, d)``.

        :raises ValueError: if the prior is improper (no ``sigma0``).
        """
        self._require_proper("the mean")
        zero = torch.zeros((), dtype=self._dtype, device=self._device)
        return zero.expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> torch.Tensor:
        """Marginal variances, the diagonal of ``P^{-1}`` per time step, broadcast to
        ``batch_shape + (T, N, d)``.

        :raises ValueError: if the prior is improper (no ``sigma0``).
        """
        self._require_proper("the variance")
        variance = self._constant(
            "variance", self._dtype, self._device, self._marginal_variance
        )
        return variance[:, None, None].expand(self.batch_shape + self.event_shape)


class GaussianMarkovChain(GraphLaplacianPrior):
    """Gaussian Markov chain prior over ``(T, N, d)`` embeddings.

    The density is proportional to
    ``exp(-1/2 sum_t strength_t ||X_{t+1} - X_t||^2 - ||X||^2 / (2 sigma0^2))``.

    :param int num_steps: number of time steps ``T``.
    :param int num_vectors: number of embedding vectors ``N``.
    :param int dim: embedding dimension ``d``.
    :param strength: positive coupling strength, one for all edges or one per edge
        (shape ``(T - 1,)``, so uneven time gaps are allowed).
    :param float sigma0: regulariser scale; ``None`` (default) for an improper prior.
    :param torch.dtype dtype: dtype of samples.
    :param device: device of samples.
    :raises ValueError: if ``strength`` is not positive and finite or has the wrong
        shape.
    """

    def __init__(
        self,
        num_steps: int,
        num_vectors: int,
        dim: int,
        strength: Union[float, torch.Tensor, np.ndarray],
        *,
        sigma0: Optional[_Number] = None,
        dtype: Optional[torch.dtype] = None,
        device: Union[str, torch.device, None] = None,
        validate_args: Optional[bool] = None,
    ):
        coupling = Coupling.chain(_check_count(num_steps, "num_steps"), strength)
        super().__init__(
            coupling,
            num_vectors,
            dim,
            sigma0=sigma0,
            dtype=dtype,
            device=device,
            validate_args=validate_args,
        )


class OrnsteinUhlenbeckPrior(GraphLaplacianPrior):
    """Ornstein-Uhlenbeck prior of dynamic word embeddings at given time stamps.

    The precision per coordinate is ``I / sigma0**2`` plus the chain Laplacian with
    couplings ``1 / (diffusion * (tau_{t+1} - tau_t))``; its :attr:`coupling` is
    ``Coupling.from_times(times, diffusion)``. Far from the ends of a chain with equal
    gaps ``delta``, write ``a = 1 / sigma0**2`` and ``lam = 1 / (diffusion * delta)``:
    the marginal variance is the stationary variance

    .. math::

        v = \\frac{1}{\\sqrt{a (a + 4 \\lambda)}},

    and neighbours are correlated by ``r = (a + 2 lam - 1 / v) / (2 lam)``, so the
    process decays at rate ``-log(r) / delta`` towards zero. Without coupling
    (``diffusion -> inf``) ``v = sigma0**2``.

    :param times: strictly increasing time stamps ``tau`` of shape ``(T,)``.
    :param int num_vectors: number of embedding vectors ``N``.
    :param int dim: embedding dimension ``d``.
    :param float diffusion: positive diffusion constant ``D``.
    :param float sigma0: positive standard deviation of the regulariser.
    :param torch.dtype dtype: dtype of samples.
    :param device: device of samples.
    :raises ValueError: if ``times`` do not increase strictly or ``diffusion`` or
        ``sigma0`` are not positive and finite.
    """

    def __init__(
        self,
        times: Union[torch.Tensor, np.ndarray, list],
        num_vectors: int,
        dim: int,
        *,
        diffusion: float,
        sigma0: _Number,
        dtype: Optional[torch.dtype] = None,
        device: Union[str, torch.device, None] = None,
        validate_args: Optional[bool] = None,
    ):
        if sigma0 is None:
            raise ValueError(
                "sigma0 must be given: the Ornstein-Uhlenbeck prior is proper"
            )
        super().__init__(
            Coupling.from_times(times, diffusion),
            num_vectors,
            dim,
            sigma0=sigma0,
            dtype=dtype,
            device=device,
            validate_args=validate_args,
        )
        self.diffusion = float(diffusion)

    def expand(self, batch_shape, _instance=None):
        """The same prior with batch shape ``batch_shape``.

        :param torch.Size batch_shape: the new batch shape.
        :rtype: OrnsteinUhlenbeckPrior
        """
        new = super().expand(batch_shape, _instance)
        new.diffusion = self.diffusion
        return new


@register_kl(Independent, GraphLaplacianPrior)
def _kl_mean_field_graph_prior(q: Independent, p: GraphLaplacianPrior) -> torch.Tensor:
    # closed form for a mean-field Normal guide (used by TraceMeanField_ELBO), with
    # E_q ||X_t - X_t'||^2 = ||loc_t - loc_t'||^2 + ||scale_t||^2 + ||scale_t'||^2
    base = q.base_dist
    if not isinstance(base, Normal) or q.reinterpreted_batch_ndims != 3:
        raise NotImplementedError("KL(q || p) needs q = Normal(loc, scale).to_event(3)")
    loc, scale = base.loc, base.scale
    variance = scale.pow(2).sum((-2, -1))
    degree = p._constant("degree", loc.dtype, loc.device, p._degree)
    expected_energy = p.prior_energy(loc) + 0.5 * (variance * degree).sum(-1)
    if p.sigma0 is not None:
        squared = loc.pow(2).sum((-3, -2, -1)) + variance.sum(-1)
        expected_energy = expected_energy + squared / (2 * p.sigma0**2)
    kl = expected_energy - p._log_normalizer - q.entropy()
    return kl.expand(torch.broadcast_shapes(kl.shape, p.batch_shape))
