# SPDX-License-Identifier: Apache-2.0
"""Tests of the Gaussian Markov priors against dense multivariate normals."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from pyro_goldstone.coupling import Coupling
from pyro_goldstone.distributions import (
    GaussianMarkovChain,
    GraphLaplacianPrior,
    OrnsteinUhlenbeckPrior,
)
from pyro_goldstone.gauge_phase import resolve_coupling

TIMES = [0.0, 1.0, 1.5, 4.0, 4.25]  # uneven gaps
RING = [
    [0, 1, 0, 0, 2],
    [1, 0, 3, 0, 0],
    [0, 3, 0, 1, 0],
    [0, 0, 1, 0, 4],
    [2, 0, 0, 4, 0],
]
STAR = [[0, 1, 2, 3], [1, 0, 0, 0], [2, 0, 0, 0], [3, 0, 0, 0]]  # a tree, not a chain


def make_prior(kind, num_vectors, dim, sigma0=0.8):
    if kind == "chain":
        strength = torch.tensor([0.5, 2.0, 1.0, 3.0])
        return GaussianMarkovChain(5, num_vectors, dim, strength, sigma0=sigma0)
    if kind == "ou":
        return OrnsteinUhlenbeckPrior(
            TIMES, num_vectors, dim, diffusion=0.7, sigma0=sigma0
        )
    adjacency = RING if kind == "ring" else STAR
    coupling = Coupling.from_adjacency(torch.tensor(adjacency, dtype=torch.float64))
    return GraphLaplacianPrior(coupling, num_vectors, dim, sigma0=sigma0)


def dense_precision(prior):
    """Precision of the flattened ``(T * N * d)`` vector, ``kron(P, I)``."""
    T, N, d = prior.event_shape
    precision = prior.coupling.laplacian(torch.float64).clone()
    if prior.sigma0 is not None:
        precision += torch.eye(T, dtype=torch.float64) / prior.sigma0**2
    return precision, torch.kron(precision, torch.eye(N * d, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["chain", "ou", "ring", "star"])
def test_log_prob_matches_dense_normal(kind):
    pyro.set_rng_seed(0)
    prior = make_prior(kind, num_vectors=3, dim=2)
    _, precision = dense_precision(prior)
    reference = MultivariateNormal(
        torch.zeros(len(precision), dtype=torch.float64), precision_matrix=precision
    )
    value = torch.randn((4,) + prior.event_shape, dtype=torch.float64)

    expected = reference.log_prob(value.reshape(4, -1))
    assert torch.allclose(prior.log_prob(value), expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("kind", ["chain", "ring", "star"])
def test_improper_log_prob_uses_pseudo_determinant(kind):
    pyro.set_rng_seed(1)
    prior = make_prior(kind, num_vectors=2, dim=3, sigma0=None)
    laplacian, _ = dense_precision(prior)
    T, N, d = prior.event_shape
    value = torch.randn(prior.event_shape, dtype=torch.float64)

    # density of the part orthogonal to the global mean, from a dense eigensolver
    eigenvalues, eigenvectors = torch.linalg.eigh(laplacian)
    coefficients = eigenvectors[:, 1:].T @ value.reshape(T, -1)
    expected = (
        -0.5 * (eigenvalues[1:, None] * coefficients**2).sum()
        + 0.5 * N * d * eigenvalues[1:].log().sum()
        - 0.5 * (T - 1) * N * d * math.log(2 * math.pi)
    )
    assert torch.allclose(prior.log_prob(value), expected, rtol=0, atol=1e-8)

    # flat along the global mean: adding one vector to every time step changes nothing
    shifted = value + torch.randn(N, d, dtype=torch.float64)
    assert torch.allclose(prior.log_prob(shifted), expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("kind", ["chain", "ring"])
def test_improper_prior_refuses_to_sample(kind):
    prior = make_prior(kind, num_vectors=2, dim=2, sigma0=None)
    with pytest.raises(ValueError, match="sigma0"):
        prior.sample()
    with pytest.raises(ValueError, match="sigma0"):
        prior.variance


@pytest.mark.parametrize("kind", ["chain", "ring"])
def test_sample_moments_match_inverse_precision(kind):
    pyro.set_rng_seed(2)
    num_draws = 20000
    prior = make_prior(kind, num_vectors=2, dim=1)
    precision, _ = dense_precision(prior)
    covariance = torch.linalg.inv(precision)
    samples = prior.sample((num_draws,)).to(torch.float64)
    assert samples.shape == (num_draws, 5, 2, 1)

    # Monte Carlo tolerance: 5 standard errors of each entry under the true covariance
    std_error_mean = (covariance.diagonal() / num_draws).sqrt()
    outer = covariance.diagonal()[:, None] * covariance.diagonal()[None, :]
    std_error_cov = ((outer + covariance**2) / num_draws).sqrt()
    for row in range(2):
        vectors = samples[:, :, row, 0]
        assert (vectors.mean(0).abs() < 5 * std_error_mean).all()
        assert ((vectors.T.cov() - covariance).abs() < 5 * std_error_cov).all()

    # rows are independent: their cross-covariance is zero within the same tolerance
    cross = (samples[:, :, 0, 0].T @ samples[:, :, 1, 0]) / num_draws
    assert ((cross).abs() < 5 * outer.sqrt() / math.sqrt(num_draws)).all()
    assert torch.allclose(prior.variance[:, 0, 0].double(), covariance.diagonal())


def test_ou_prior_stationary_variance_and_coupling():
    sigma0, diffusion, gap, T = 1.3, 0.4, 0.5, 201
    times = gap * torch.arange(T, dtype=torch.float64) + 1990.0
    prior = OrnsteinUhlenbeckPrior(
        times, 1, 1, diffusion=diffusion, sigma0=sigma0, dtype=torch.float64
    )

    # SPEC 4.3: couplings 1 / (D (tau_{t+1} - tau_t)) on the chain, sigma0 kept apart
    assert prior.coupling.is_chain
    expected = torch.full((T - 1,), 1 / (diffusion * gap), dtype=torch.float64)
    assert torch.allclose(prior.coupling.weights, expected)
    uneven = make_prior("ou", num_vectors=1, dim=1)
    gaps = torch.tensor(TIMES, dtype=torch.float64).diff()
    assert torch.allclose(uneven.coupling.weights, 1 / (0.7 * gaps))
    assert prior.sigma0 == sigma0
    # the optimiser reads this chain (and not the sigma0 part) from the prior
    assert resolve_coupling(uneven) is uneven.coupling

    # far from the ends: v = 1 / sqrt(a (a + 4 lam)), neighbour correlation r
    a, lam = 1 / sigma0**2, 1 / (diffusion * gap)
    stationary = 1 / math.sqrt(a * (a + 4 * lam))
    correlation = (a + 2 * lam - 1 / stationary) / (2 * lam)
    middle = T // 2
    assert prior.variance[middle, 0, 0].item() == pytest.approx(stationary, rel=1e-10)
    precision, _ = dense_precision(prior)
    covariance = torch.linalg.inv(precision)
    lag_one = covariance[middle, middle + 1] / covariance[middle, middle]
    assert lag_one.item() == pytest.approx(correlation, rel=1e-10)

    # without coupling the variance is sigma0^2
    loose = OrnsteinUhlenbeckPrior(
        times[:3], 1, 1, diffusion=1e12, sigma0=sigma0, dtype=torch.float64
    )
    expected = torch.full_like(loose.variance, sigma0**2)
    assert torch.allclose(loose.variance, expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    "T,N,d", list(itertools.product([1, 3], [1, 2], [1, 3])), ids=str
)
@pytest.mark.parametrize("kind", ["chain", "graph"])
def test_shapes(kind, T, N, d):
    pyro.set_rng_seed(3)
    if kind == "chain":
        prior = GaussianMarkovChain(T, N, d, 2.0, sigma0=1.0)
    else:
        coupling = Coupling.from_adjacency(torch.ones(T, T))
        prior = GraphLaplacianPrior(coupling, N, d, sigma0=1.0)
    assert prior.event_shape == (T, N, d) and prior.batch_shape == ()

    sample = prior.rsample((4,))
    assert sample.shape == (4, T, N, d)
    assert prior.log_prob(sample).shape == (4,)

    expanded = prior.expand((2, 3))
    assert expanded.sample().shape == (2, 3, T, N, d)
    assert expanded.log_prob(sample[0]).shape == (2, 3)
    assert torch.allclose(expanded.log_prob(sample[0]), prior.log_prob(sample[0]))
    assert expanded.variance.shape == (2, 3, T, N, d)

    # outer plates add batch dimensions to the left of T
    with pyro.plate("outer", 5, dim=-2), pyro.plate("inner", 2, dim=-1):
        value = pyro.sample("x", prior)
    assert value.shape == (5, 2, T, N, d)
    trace = pyro.poutine.trace(
        lambda: pyro.sample("x", prior.expand((5, 2)))
    ).get_trace()
    trace.compute_log_prob()
    assert trace.nodes["x"]["log_prob"].shape == (5, 2)


@pytest.mark.parametrize("kind", ["chain", "ring", "star"])
@pytest.mark.parametrize("sigma0", [0.9, None])
def test_kl_from_mean_field_normal_matches_dense(kind, sigma0):
    pyro.set_rng_seed(4)
    prior = make_prior(kind, num_vectors=2, dim=2, sigma0=sigma0)
    loc = torch.randn(prior.event_shape, dtype=torch.float64)
    scale = torch.rand(prior.event_shape, dtype=torch.float64) + 0.1
    guide = dist.Normal(loc, scale).to_event(3)
    _, precision = dense_precision(prior)

    # KL = E_q[-log p] - H(q) with the Gaussian expectation of the quadratic form
    flat_loc, flat_var = loc.reshape(-1), scale.pow(2).reshape(-1)
    cross_entropy = 0.5 * (
        flat_loc @ precision @ flat_loc + (precision.diagonal() * flat_var).sum()
    ) - prior.log_prob(torch.zeros_like(loc))
    expected = cross_entropy - guide.entropy()
    assert torch.allclose(kl_divergence(guide, prior), expected, rtol=0, atol=1e-8)
    if sigma0 is not None:
        dense_guide = MultivariateNormal(flat_loc, torch.diag(flat_var))
        dense_prior = MultivariateNormal(
            torch.zeros_like(flat_loc), precision_matrix=precision
        )
        dense_kl = kl_divergence(dense_guide, dense_prior)
        assert torch.allclose(kl_divergence(guide, prior), dense_kl, atol=1e-8)


def test_prior_energy_is_the_edge_sum():
    pyro.set_rng_seed(5)
    prior = make_prior("ring", num_vectors=3, dim=2)
    value = torch.randn((2,) + prior.event_shape, dtype=torch.float64)
    edges, weights = prior.coupling.edges, prior.coupling.weights
    expected = sum(
        0.5 * w * (value[:, s] - value[:, t]).pow(2).sum((-2, -1))
        for (s, t), w in zip(edges.tolist(), weights.tolist())
    )
    assert torch.allclose(prior.prior_energy(value), expected)
    regulariser = value.pow(2).sum((-3, -2, -1)) / (2 * prior.sigma0**2)
    shift = prior.log_prob(value) + expected + regulariser
    assert torch.allclose(shift, shift[:1].expand(2))


def test_log_prob_follows_value_dtype():
    prior = make_prior("chain", num_vectors=2, dim=2)
    for dtype in (torch.float32, torch.float64):
        value = torch.ones(prior.event_shape, dtype=dtype)
        assert prior.log_prob(value).dtype == dtype
    prior32 = GaussianMarkovChain(3, 2, 2, 1.0, sigma0=1.0, dtype=torch.float32)
    assert prior32.sample().dtype == torch.float32


@pytest.mark.parametrize(
    "build,match",
    [
        (
            lambda: OrnsteinUhlenbeckPrior([0, 1, 1], 2, 2, diffusion=1, sigma0=1),
            "times",
        ),
        (
            lambda: OrnsteinUhlenbeckPrior([0, 1], 2, 2, diffusion=0, sigma0=1),
            "diffusion",
        ),
        (
            lambda: OrnsteinUhlenbeckPrior([0, 1], 2, 2, diffusion=1, sigma0=None),
            "sigma0",
        ),
        (lambda: GaussianMarkovChain(3, 2, 2, [1.0, -1.0]), "strength"),
        (lambda: GaussianMarkovChain(3, 2, 2, [1.0, math.inf]), "strength"),
        (lambda: GaussianMarkovChain(3, 2, 2, [1.0, 1.0, 1.0]), "strength"),
        (lambda: GaussianMarkovChain(3, 0, 2, 1.0), "num_vectors"),
        (lambda: GaussianMarkovChain(3, 2, 2, 1.0, sigma0=0.0), "sigma0"),
        (lambda: GaussianMarkovChain(3, 2, 2, 1.0, sigma0=math.nan), "sigma0"),
    ],
)
def test_invalid_arguments_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_invalid_types_and_shapes():
    with pytest.raises(TypeError, match="coupling"):
        GraphLaplacianPrior(torch.eye(3), 2, 2)
    with pytest.raises(TypeError, match="dim"):
        GaussianMarkovChain(3, 2, 2.0, 1.0)
    prior = GaussianMarkovChain(3, 2, 2, 1.0, sigma0=1.0, validate_args=False)
    with pytest.raises(ValueError, match="value"):
        prior.log_prob(torch.zeros(3, 2, 3))
