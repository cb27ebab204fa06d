# SPDX-License-Identifier: Apache-2.0
"""Tests of the synthetic dynamic matrix factorisation data and initialisations."""

import math

import pyro
import pytest
import torch

from pyro_goldstone.data.synthetic import (
    independent_init,
    make_dynamic_mf_data,
    random_rotations,
    twisted_init,
)

__all__ = []


def _relative_rotations(X):
    """Best orthogonal map between neighbouring time steps, ``(T - 1, d, d)``."""
    M = X[:-1].transpose(-1, -2) @ X[1:]
    U, _, Vh = torch.linalg.svd(M)
    return U @ Vh


@pytest.mark.parametrize("dim", [1, 2, 3, 5], ids=str)
def test_random_rotations_are_proper_and_orthogonal(dim):
    pyro.set_rng_seed(0)
    R = random_rotations(200, dim, dtype=torch.float64)
    eye = torch.eye(dim, dtype=torch.float64)
    assert R.shape == (200, dim, dim)
    assert torch.allclose(R.transpose(-1, -2) @ R, eye.expand_as(R), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(200, dtype=torch.float64))


def test_random_rotations_are_uniform():
    # under the Haar measure on SO(3), E[R] = 0 and E[tr R] = 0
    pyro.set_rng_seed(1)
    R = random_rotations(20000, 3, dtype=torch.float64)
    assert R.mean(0).abs().max() < 0.03
    trace = torch.diagonal(R, dim1=-2, dim2=-1).sum(-1)
    assert trace.mean().abs() < 0.03


def test_time_independent_data():
    pyro.set_rng_seed(2)
    data = make_dynamic_mf_data(30, 20, 7, 3, noise=0.1, dtype=torch.float64)
    assert data.Y.shape == (7, 30, 20)
    assert data.A.shape == (7, 30, 3) and data.B.shape == (7, 20, 3)
    assert torch.equal(data.Y[0], data.Y[-1])
    residual = data.Y - data.A @ data.B.transpose(-1, -2)
    assert 0.08 < residual.std() < 0.12
    # standard normal factors: A B^T has variance d
    large = make_dynamic_mf_data(300, 300, 1, 3, noise=0.0, dtype=torch.float64)
    assert 2.5 < large.Y.var() < 3.5


def test_rotated_drifting_data_keep_the_product():
    pyro.set_rng_seed(3)
    data = make_dynamic_mf_data(
        40, 30, 10, 3, noise=0.0, drift=0.05, rotate=True, dtype=torch.float64
    )
    assert not torch.equal(data.Y[0], data.Y[-1])
    product = data.A @ data.B.transpose(-1, -2)
    assert torch.allclose(product, data.Y, atol=1e-10)

    # undoing the known rotations leaves a slow random walk
    A = data.A @ data.rotations.transpose(-1, -2)
    steps = (A[1:] - A[:-1]).std()
    assert 0.04 < steps < 0.06
    jump = (data.A[1:] - data.A[:-1]).std()
    assert jump > 0.5


def test_reproducible_with_seed_and_generator():
    pyro.set_rng_seed(4)
    first = make_dynamic_mf_data(5, 6, 3, 2)
    pyro.set_rng_seed(4)
    second = make_dynamic_mf_data(5, 6, 3, 2)
    assert torch.equal(first.Y, second.Y)

    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(
        twisted_init(4, 6, 3, generator=g1), twisted_init(4, 6, 3, generator=g2)
    )


def test_twisted_init_is_a_smooth_rotation_of_one_draw():
    pyro.set_rng_seed(6)
    T, twist = 11, 2.0
    U, V = twisted_init(T, (8, 5), 3, twist=twist, dtype=torch.float64)
    assert U.shape == (T, 8, 3) and V.shape == (T, 5, 3)
    X = torch.cat([U, V], dim=1)

    # every time step has the same Gram matrix: the local loss is the same everywhere
    gram = X @ X.transpose(-1, -2)
    assert torch.allclose(gram, gram[:1].expand_as(gram), atol=1e-10)

    # neighbours differ by a proper rotation of angle twist / (T - 1)
    R = _relative_rotations(X)
    assert torch.allclose(torch.linalg.det(R), torch.ones(T - 1, dtype=torch.float64))
    cos = (torch.diagonal(R, dim1=-2, dim2=-1).sum(-1) - 1) / 2
    assert torch.allclose(torch.arccos(cos), torch.full_like(cos, twist / (T - 1)))
    assert torch.allclose(X[1:], X[:-1] @ R, atol=1e-10)


def test_independent_init_has_reflections():
    pyro.set_rng_seed(7)
    X = independent_init(400, 50, 3, scale=0.5, dtype=torch.float64)
    assert X.shape == (400, 50, 3)
    assert 0.48 < X.std() < 0.52
    # independent Gaussian frames: half of the neighbour pairs differ by a reflection
    det = torch.linalg.det(_relative_rotations(X))
    improper = (det < 0).double().mean()
    assert 0.4 < improper < 0.6


def test_dim_one_has_no_twist():
    pyro.set_rng_seed(8)
    X = twisted_init(5, 4, 1, twist=math.pi)
    assert torch.equal(X, X[:1].expand_as(X))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_rows": 0}, ValueError, "num_rows"),
        ({"num_steps": 2.5}, TypeError, "num_steps"),
        ({"noise": -1.0}, ValueError, "noise"),
        ({"drift": float("nan")}, ValueError, "drift"),
    ],
    ids=["rows", "steps", "noise", "drift"],
)
def test_data_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_dynamic_mf_data(**kwargs)


def test_init_errors():
    with pytest.raises(ValueError, match="num_vectors"):
        twisted_init(3, (4, 0), 2)
    with pytest.raises(TypeError, match="num_vectors"):
        independent_init(3, "4", 2)
    with pytest.raises(ValueError, match="twist"):
        twisted_init(3, 4, 2, twist=float("inf"))
    with pytest.raises(ValueError, match="scale"):
        independent_init(3, 4, 2, scale=-0.1)


def test_noise_per_step_differs_between_steps():
    generator = torch.Generator().manual_seed(3)
    data = make_dynamic_mf_data(
        20, 10, 4, 2, noise=0.3, noise_per_step=True, generator=generator
    )
    residual = data.Y - data.A @ data.B.mT
    assert data.Y.shape == (4, 20, 10)
    assert not torch.allclose(residual[0], residual[1])
    assert abs(residual.std().item() - 0.3) < 0.05
