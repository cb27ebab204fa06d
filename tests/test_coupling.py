# SPDX-License-Identifier: Apache-2.0
"""Tests of the coupling graphs: constructors, Laplacian, pseudo-inverse and checks."""

import numpy as np
import pyro
import pytest
import scipy.sparse
import scipy.sparse.csgraph
import torch
from common import assert_close

from pyro_goldstone.coupling import Coupling


@pytest.fixture(autouse=True)
def seed():
    pyro.set_rng_seed(0)


def random_connected_adjacency(T, density=0.5):
    A = np.triu(np.random.rand(T, T) * (np.random.rand(T, T) < density), 1)
    A[np.arange(T - 1), np.arange(1, T)] += 0.5  # a chain keeps it connected
    return A + A.T


def isolated_last_step():
    # a chain 0 - 1 - 2 and a time step 3 coupled to nothing
    return np.diag([1.0, 1.0, 0.0], 1) + np.diag([1.0, 1.0, 0.0], -1)


def test_chain():
    coupling = Coupling.chain(5, [1.0, 2.0, 3.0, 4.0])
    assert coupling.is_chain and coupling.is_tree
    assert coupling.edges.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]]
    assert_close(coupling.weights, torch.tensor([1.0, 2.0, 3.0, 4.0]).double())
    expected = np.diag([1.0, 3.0, 5.0, 7.0, 4.0])
    expected -= np.diag([1.0, 2.0, 3.0, 4.0], 1) + np.diag([1.0, 2.0, 3.0, 4.0], -1)
    assert_close(coupling.laplacian(torch.float64), torch.from_numpy(expected))
    assert_close(Coupling.chain(5, 2.5).weights, torch.full((4,), 2.5).double())
    assert Coupling.chain(1, 1.0).num_edges == 0


def test_from_times_uses_the_gaps():
    times = [0.0, 1.0, 3.0, 7.0]
    coupling = Coupling.from_times(times, diffusion=0.5)
    assert coupling.is_chain
    assert_close(coupling.weights, 1 / (0.5 * torch.tensor([1.0, 2.0, 4.0]).double()))
    # the Laplacian carries the uneven couplings: 2, 1 and 0.5
    expected = torch.tensor(
        [[2, -2, 0, 0], [-2, 3, -1, 0], [0, -1, 1.5, -0.5], [0, 0, -0.5, 0.5]]
    )
    assert_close(coupling.laplacian(torch.float64), expected.double())
    same = Coupling.from_times(torch.tensor([1990, 1991, 1993, 1997]), diffusion=0.5)
    assert_close(same.weights, coupling.weights)
    assert Coupling.from_times([2000.0], diffusion=1.0).num_edges == 0


@pytest.mark.parametrize("kind", ["numpy", "torch", "scipy", "torch_sparse", "list"])
def test_from_adjacency(kind):
    A = random_connected_adjacency(6)
    value = {
        "numpy": A,
        "torch": torch.from_numpy(A),
        "scipy": scipy.sparse.csr_matrix(A),
        "torch_sparse": torch.from_numpy(A).to_sparse(),
        "list": A.tolist(),
    }[kind]
    coupling = Coupling.from_adjacency(value)
    assert coupling.num_steps == 6
    assert coupling.num_edges == np.count_nonzero(np.triu(A, 1))
    assert bool((coupling.edges[:, 0] < coupling.edges[:, 1]).all())
    assert_close(coupling.adjacency(torch.float64), torch.from_numpy(A))
    expected = scipy.sparse.csgraph.laplacian(A)
    assert_close(coupling.laplacian(torch.float64), torch.from_numpy(expected))


def test_pseudo_inverse_leaves_the_zero_eigenvalue_at_zero():
    coupling = Coupling.from_adjacency(random_connected_adjacency(7))
    L = coupling.laplacian(torch.float64)
    pinv = coupling.laplacian_pinv(torch.float64)
    assert_close(
        pinv, torch.from_numpy(np.linalg.pinv(L.numpy())), rtol=1e-8, atol=1e-10
    )
    assert_close(L @ pinv @ L, L, atol=1e-10)
    assert_close(
        pinv @ torch.ones(7, dtype=torch.float64), torch.zeros(7).double(), atol=1e-12
    )

    values = torch.linalg.eigvalsh(pinv)
    assert (values.abs() < 1e-10).sum() == 1
    assert_close(coupling.eigenvalues[0], torch.tensor(0.0).double(), atol=1e-10)
    nonzero = coupling.eigenvalues[1:]
    assert_close(
        values[values.abs() > 1e-10].sort().values, (1 / nonzero).sort().values
    )


def test_dense_matrices_are_cached_per_dtype_and_device():
    coupling = Coupling.chain(4, 1.0)
    single = coupling.laplacian_pinv(torch.float32, "cpu")
    assert single.dtype == torch.float32 and single.device.type == "cpu"
    assert coupling.laplacian_pinv(torch.float32, torch.device("cpu")) is single
    double = coupling.laplacian_pinv(torch.float64)
    assert double is not single and double.dtype == torch.float64
    assert_close(double.float(), single)
    assert coupling.laplacian(torch.float64) is coupling.laplacian(torch.float64)
    if torch.cuda.is_available():
        on_gpu = coupling.laplacian_pinv(torch.float32, "cuda")
        assert on_gpu.device.type == "cuda" and on_gpu is not single
        assert coupling.laplacian_pinv(torch.float32, "cuda") is on_gpu
        assert coupling.laplacian_pinv(torch.float32, torch.device("cuda", 0)) is on_gpu
        assert_close(on_gpu.cpu(), single)


def test_spanning_tree_is_breadth_first_and_maximal():
    A = np.zeros((4, 4))
    for (t, u), w in {(0, 1): 1.0, (1, 2): 1.0, (2, 3): 5.0, (3, 0): 4.0}.items():
        A[t, u] = A[u, t] = w
    coupling = Coupling.from_adjacency(A)
    assert not coupling.is_tree and not coupling.is_chain
    parents, children, weights = coupling.spanning_tree()
    seen = {0}
    for parent, child in zip(parents.tolist(), children.tolist()):
        assert parent in seen
        seen.add(child)
    assert seen == {0, 1, 2, 3}
    # the weakest edge of the ring (one of the 1.0 edges) is dropped
    assert_close(weights.sum(), torch.tensor(10.0).double())


def test_check_num_steps():
    coupling = Coupling.chain(3, 1.0)
    coupling.check_num_steps(3)
    with pytest.raises(ValueError, match="embeddings has 4 time steps"):
        coupling.check_num_steps(4, "embeddings")


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: Coupling.from_adjacency(np.diag([1.0, 1.0], 1)[:3, :3] * 0),
            "connected",
        ),
        (lambda: Coupling(4, [(0, 1), (2, 3)], [1.0, 1.0]), "2 components"),
        (lambda: Coupling.from_adjacency([[0, -1], [-1, 0]]), "non-negative"),
        (lambda: Coupling.chain(3, [1.0, -2.0]), "positive"),
        (lambda: Coupling(3, [(0, 1), (1, 2)], [1.0, 0.0]), "positive"),
        (lambda: Coupling.from_adjacency([[0, np.nan], [np.nan, 0]]), "finite"),
        (lambda: Coupling.chain(3, [1.0, np.inf]), "finite"),
        (lambda: Coupling(3, [(0, 1), (1, 2)], [1.0, np.nan]), "finite"),
        (lambda: Coupling.from_adjacency([[0, 1], [2, 0]]), "symmetric"),
        (
            lambda: Coupling.from_adjacency(scipy.sparse.csr_matrix([[0, 1], [0, 0]])),
            "symmetric",
        ),
        (
            lambda: Coupling.from_adjacency(isolated_last_step()),
            "2 components",
        ),
        (lambda: Coupling.from_times([0.0, 1.0, np.nan], 1.0), "finite"),
        (lambda: Coupling.from_adjacency(np.ones((2, 3))), "square"),
        (lambda: Coupling(3, [(0, 1), (1, 2)], [1.0]), "one entry per edge"),
        (lambda: Coupling.chain(4, [1.0, 2.0]), r"shape \(3,\)"),
        (lambda: Coupling(3, [(0, 3)], [1.0]), "edges must index"),
        (lambda: Coupling(3, [(0, 1), (1, 1)], [1.0, 1.0]), "self-loops"),
        (lambda: Coupling(3, [(0, 1), (1, 0), (1, 2)], [1, 1, 1]), "once"),
        (lambda: Coupling.from_times([0.0, 2.0, 1.0], 1.0), "increase strictly"),
        (lambda: Coupling.from_times([0.0, 1.0], 0.0), "diffusion"),
        (lambda: Coupling.chain(0, 1.0), "at least 1"),
    ],
)
def test_invalid_graphs_raise(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_wrong_types_raise():
    with pytest.raises(TypeError, match="num_steps must be an int"):
        Coupling.chain(2.5, 1.0)
    with pytest.raises(TypeError, match="num_steps must be an int"):
        Coupling(True, [], [])
    with pytest.raises(TypeError, match="strength must be numeric"):
        Coupling.chain(3, "strong")
