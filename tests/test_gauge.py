# SPDX-License-Identifier: Apache-2.0
"""Tests of the gauge solvers: energies, overlaps, Procrustes and natural gradient."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pyro
import pytest
import scipy.optimize
import torch
from common import assert_close, random_rotations
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from pyro_goldstone._natural_gradient import skew_exp
from pyro_goldstone.coupling import Coupling
from pyro_goldstone.gauge import (
    energy_from_overlaps,
    optimal_rotations,
    overlaps,
    prior_energy,
    rotate,
    rotate_,
    rotate_first_order,
    solve_gauge,
)

EXACT = [
    ("procrustes", {}),
    ("natural_gradient", {"num_steps": 100}),
]


@pytest.fixture(autouse=True)
def seed():
    pyro.set_rng_seed(0)


def ring(T, strength=1.0):
    adjacency = np.zeros((T, T))
    for t in range(T):
        adjacency[t, (t + 1) % T] = adjacency[(t + 1) % T, t] = strength
    return Coupling.from_adjacency(adjacency)


def random_graph(T):
    """A connected graph with random weights: a random tree plus random extra edges."""
    order = torch.randperm(T).tolist()
    edges = {
        tuple(sorted((order[i], order[torch.randint(i, ()).item()])))
        for i in range(1, T)
    }
    extra = torch.randint(T, (T, 2)).tolist()
    edges |= {tuple(sorted(e)) for e in extra if e[0] != e[1]}
    edges = sorted(edges)
    return Coupling(T, edges, torch.rand(len(edges)).double() * 3 + 0.05)


def twisted(T, N, d, angle, noise=0.0, dtype=torch.float64):
    """Embeddings ``Y Q_t (+ noise)`` with ``Q_t`` rotating by up to ``angle`` radians."""
    Y = torch.randn(N, d, dtype=dtype)
    axis = torch.randn(d, d, dtype=dtype)
    axis = (axis - axis.mT) / (axis - axis.mT).norm() * math.sqrt(2)
    steps = torch.linspace(0, angle, T, dtype=dtype).view(-1, 1, 1)
    Q = torch.linalg.matrix_exp(steps * axis)
    return Y @ Q + noise * torch.randn(T, N, d, dtype=dtype)


def relative_spread(X):
    """Largest distance of a time step from the mean frame, relative to the mean."""
    mean = X.mean(0)
    return ((X - mean).norm(dim=(1, 2)).max() / mean.norm()).item()


# ----- energies and overlaps -----


@pytest.mark.parametrize("graph", ["chain", "ring", "random"])
def test_energy_and_overlaps_agree(graph):
    T, d = 6, 4
    if graph == "chain":
        coupling = Coupling.chain(T, torch.rand(T - 1) + 0.5)
    elif graph == "ring":
        coupling = ring(T, 2.0)
    else:
        A = torch.rand(T, T) * (torch.rand(T, T) < 0.6)
        A = A + A.mT + torch.diag(torch.ones(T - 1), 1)
        coupling = Coupling.from_adjacency(A + A.mT)
    X = [torch.randn(T, 5, d, dtype=torch.float64), torch.randn(T, 3, d).double()]
    direct = sum(
        0.5 * w * sum((x[t] - x[u]).square().sum() for x in X)
        for (t, u), w in zip(coupling.edges.tolist(), coupling.weights)
    )
    assert_close(prior_energy(X, coupling), direct, rtol=1e-12)

    S, M = overlaps(X, coupling)
    assert_close(S, sum(x.mT @ x for x in X), rtol=1e-12)
    t, u = coupling.edges[-1].tolist()
    assert_close(M[-1], X[0][t].T @ X[0][u] + X[1][t].T @ X[1][u], rtol=1e-12)
    assert_close(energy_from_overlaps(S, M, coupling), direct, rtol=1e-10)

    # with transforms that are not orthogonal the overlap formula is still exact
    A = torch.randn(T, d, d, dtype=torch.float64)
    expected = prior_energy([x @ A for x in X], coupling)
    assert_close(energy_from_overlaps(S, M, coupling, A), expected, rtol=1e-10)


def test_skew_exp_matches_matrix_exp_and_its_gradient():
    G = torch.randn(4, 5, 5, dtype=torch.float64, requires_grad=True)
    G_zero = torch.zeros(2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert_close(skew_exp(G), torch.linalg.matrix_exp(G - G.mT), rtol=1e-10)
    assert torch.autograd.gradcheck(skew_exp, (G,))
    # repeated eigenvalues (all zero) need the limit of the divided differences
    assert torch.autograd.gradcheck(skew_exp, (G_zero,))


# ----- exact methods -----


@pytest.mark.parametrize("d", [2, 3, 8])
def test_planted_rotations_procrustes(d):
    T = 12
    Y = torch.randn(20, d, dtype=torch.float64)
    X = Y @ random_rotations(T, d)
    result = solve_gauge(X, Coupling.chain(T, 1.5), "procrustes")
    fixed = rotate(X, result.rotations)
    assert prior_energy(fixed, Coupling.chain(T, 1.5)) < 1e-10 * result.energy_before
    assert relative_spread(fixed) < 1e-7
    assert result.energy_after < 1e-10 * result.energy_before
    assert torch.all(torch.linalg.det(result.rotations) > 0)


@pytest.mark.parametrize("coupling", [Coupling.chain(10, 1.0), ring(10)], ids=str)
def test_planted_rotations_natural_gradient(coupling):
    T, d = 10, 4
    Y = torch.randn(20, d, dtype=torch.float64)
    X = Y @ random_rotations(T, d, scale=0.3)
    result = solve_gauge(X, coupling, num_steps=50)
    fixed = rotate(X, result.rotations)
    assert prior_energy(fixed, coupling) < 1e-10 * result.energy_before
    assert relative_spread(fixed) < 1e-6
    # the gauge fields describe the rotations exactly
    assert_close(
        skew_exp(result.gauge_fields), result.rotations, rtol=1e-10, atol=1e-12
    )

    # from Haar-random frames the spanning-tree sweep is needed
    X = Y @ random_rotations(T, d)
    stuck = solve_gauge(X, coupling, num_steps=50)
    swept = solve_gauge(X, coupling, num_steps=50, allow_reflections=True)
    assert swept.energy_after < 1e-10 * swept.energy_before < stuck.energy_after


@pytest.mark.parametrize("method, options", EXACT)
def test_chain_minimum_matches_procrustes(method, options):
    T = 15
    coupling = Coupling.chain(T, torch.rand(T - 1) + 0.5)
    X = twisted(T, 30, 3, angle=4.0, noise=0.05)
    exact = solve_gauge(X, coupling, "procrustes")
    result = solve_gauge(X, coupling, method, **options)
    assert exact.energy_after < 0.5 * exact.energy_before
    assert_close(result.energy_after, exact.energy_after, rtol=1e-6)
    assert_close(
        prior_energy(rotate(X, result.rotations), coupling), exact.energy_after
    )


def test_ring_natural_gradient_reaches_brute_force_minimum():
    T, d = 4, 3
    coupling = ring(T, 1.0)
    X = twisted(T, 8, d, angle=0.8, noise=0.5)
    S, M = overlaps(X, coupling)

    def energy(rotvecs):
        R = np.concatenate(
            [np.eye(d)[None], Rotation.from_rotvec(rotvecs.reshape(-1, 3)).as_matrix()]
        )
        R = torch.from_numpy(R)
        return energy_from_overlaps(S, M, coupling, R).item()

    rng = np.random.default_rng(0)
    best = min(
        scipy.optimize.minimize(energy, rng.normal(size=3 * (T - 1)), method="BFGS").fun
        for _ in range(8)
    )
    result = solve_gauge(X, coupling, num_steps=100)
    assert_close(result.energy_after, best, rtol=1e-6)
    # the problem is not trivial: the start is far above the minimum
    assert best < 0.7 * result.energy_before


# ----- properties of every phase -----


@settings(max_examples=60, deadline=None)
@given(
    T=st.integers(1, 6),
    N=st.integers(1, 5),
    d=st.integers(1, 16),
    graph=st.sampled_from(["chain", "ring", "star", "random"]),
    method=st.sampled_from(["natural_gradient", "taylor", "procrustes"]),
    reflections=st.booleans(),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_energy_never_increases(T, N, d, graph, method, reflections, scale, seed):
    pyro.set_rng_seed(seed)
    if graph == "ring" and T >= 3:
        coupling = ring(T, 0.7)
    elif graph == "star" and T >= 2:
        edges = [(0, t) for t in range(1, T)]
        coupling = Coupling(T, edges, torch.rand(T - 1) + 0.1)
    elif graph == "random" and T >= 2:
        coupling = random_graph(T)
    else:
        coupling = Coupling.chain(T, 2.0)
    if method == "procrustes" and not coupling.is_tree:
        method = "natural_gradient"
    reflections = reflections and method != "taylor"
    X = scale * torch.randn(T, N, d, dtype=torch.float64)
    result = solve_gauge(X, coupling, method, allow_reflections=reflections)
    assert result.energy_after <= result.energy_before
    if not reflections:
        assert (torch.linalg.det(result.rotations) > 0).all()

    if method == "taylor":
        moved = rotate_first_order(X, result.gauge_fields)
    else:
        moved = rotate(X, result.rotations)
    before, after = prior_energy(X, coupling), prior_energy(moved, coupling)
    assert after <= before + 1e-10 * scale**2 * T * N * d
    assert_close(
        after, result.energy_after, rtol=1e-6, atol=1e-9 * scale**2 * T * N * d
    )


@pytest.mark.parametrize("method, options", EXACT)
def test_local_losses_unchanged_float32(method, options):
    T, d = 8, 5
    coupling = Coupling.chain(T, 1.0)
    U = twisted(T, 40, d, angle=2.0, noise=0.2, dtype=torch.float32)
    V = twisted(T, 30, d, angle=2.0, noise=0.2, dtype=torch.float32)
    gram, products = U @ U.mT, U @ V.mT
    result = solve_gauge([U, V], coupling, method, **options)
    assert result.rotations.dtype == torch.float32
    assert result.energy_after < 0.9 * result.energy_before
    ids = (id(U), id(V))

    rotate_((U, V), result.rotations)
    assert (id(U), id(V)) == ids
    assert_close(U @ U.mT, gram, rtol=1e-6, atol=1e-6 * gram.abs().max().item())
    assert_close(U @ V.mT, products, rtol=1e-6, atol=1e-6 * products.abs().max().item())
    assert_close(prior_energy([U, V], coupling), result.energy_after, rtol=1e-4)


@pytest.mark.parametrize("method", ["natural_gradient", "taylor", "procrustes"])
def test_global_rotation_changes_nothing(method):
    T, d = 7, 4
    coupling = Coupling.chain(T, 1.0)
    X = twisted(T, 20, d, angle=1.0, noise=0.3)
    X = rotate(X, solve_gauge(X, coupling, "procrustes").rotations)
    X = X @ random_rotations(1, d)  # one rotation shared by every time step
    result = solve_gauge(X, coupling, method)
    assert torch.equal(result.rotations, torch.eye(d, dtype=X.dtype).expand(T, d, d))
    assert torch.equal(result.energy_after, result.energy_before)
    assert torch.equal(rotate(X, result.rotations), X)


def test_reflection_sectors():
    T, d = 10, 3
    coupling = Coupling.chain(T, 1.0)
    Y = torch.randn(15, d, dtype=torch.float64)
    signs = torch.where(torch.rand(T) < 0.5, -1.0, 1.0).double()
    signs[3] = -1.0
    X = Y @ (random_rotations(T, d) * signs.view(-1, 1, 1))
    rotations_only = solve_gauge(X, coupling, "procrustes")
    with_reflections = solve_gauge(X, coupling, "procrustes", allow_reflections=True)
    assert with_reflections.energy_after < 1e-10 * with_reflections.energy_before
    assert rotations_only.energy_after > 0.01 * rotations_only.energy_before
    determinants = torch.linalg.det(with_reflections.rotations)
    assert_close(determinants.abs(), torch.ones(T, dtype=X.dtype))
    assert (determinants < 0).any()

    # on a ring the natural gradient starts with a spanning-tree sweep over O(d)
    polished = solve_gauge(X, ring(T), allow_reflections=True)
    assert polished.energy_after < 1e-10 * polished.energy_before


def test_first_order_update_is_damped():
    T, d = 30, 3
    coupling = Coupling.chain(T, 10.0)
    X = twisted(T, 20, d, angle=3.0, noise=0.05)
    result = solve_gauge(X, coupling, "taylor")
    A = result.rotations
    eye = torch.eye(d, dtype=X.dtype)
    assert_close(A, eye + result.gauge_fields - result.gauge_fields.mT)
    # first order: not orthogonal, yet the energy went down
    assert (A @ A.mT - eye).abs().max() > 1e-4
    moved = rotate_first_order(X, result.gauge_fields)
    assert prior_energy(moved, coupling) < result.energy_before
    assert_close(prior_energy(moved, coupling), result.energy_after, rtol=1e-8)


def test_warm_start():
    T, d = 20, 3
    coupling = Coupling.chain(T, 1.0)
    X = twisted(T, 20, d, angle=2.0, noise=0.1)
    first = solve_gauge(X, coupling, num_steps=1)
    second = solve_gauge(X, coupling, num_steps=1, gauge_fields=first.gauge_fields)
    assert second.energy_after < first.energy_after

    # a warm start that is worse than the identity is dropped
    bad = 5 * torch.randn(T, d, d, dtype=X.dtype)
    from_bad = solve_gauge(X, coupling, num_steps=3, gauge_fields=bad)
    from_zero = solve_gauge(X, coupling, num_steps=3)
    assert_close(from_bad.energy_after, from_zero.energy_after)


# ----- corner cases and bad input -----


@pytest.mark.parametrize("method", ["natural_gradient", "taylor", "procrustes"])
def test_one_dimension_and_one_time_step(method):
    X = torch.randn(5, 4, 1, dtype=torch.float64)
    result = solve_gauge(X, Coupling.chain(5, 1.0), method)
    assert torch.equal(result.rotations, torch.ones(5, 1, 1, dtype=X.dtype))
    assert_close(result.energy_after, prior_energy(X, Coupling.chain(5, 1.0)))

    single = solve_gauge(torch.randn(1, 4, 3), Coupling.chain(1, 1.0), method)
    assert torch.equal(single.rotations, torch.eye(3).unsqueeze(0))
    assert single.energy_before == single.energy_after == 0


@pytest.mark.parametrize("method", ["natural_gradient", "procrustes"])
def test_one_dimension_with_reflections(method):
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0]).view(-1, 1, 1).double()
    X = signs * torch.randn(1, 6, 1, dtype=torch.float64)
    result = solve_gauge(X, Coupling.chain(4, 1.0), method, allow_reflections=True)
    assert_close(result.rotations, signs * signs[0])
    assert result.energy_after < 1e-12 * result.energy_before


def test_optimal_rotations_and_structures():
    coupling = Coupling.chain(4, 1.0)
    U, V = twisted(4, 6, 3, angle=1.0), twisted(4, 5, 3, angle=1.0)
    R = optimal_rotations((U, V), coupling, "procrustes")
    assert R.shape == (4, 3, 3)
    assert isinstance(rotate((U, V), R), tuple)
    assert isinstance(rotate([U, V], R), list)
    assert_close(rotate([U, V], R)[1], V @ R)


def test_bad_input_raises_and_changes_nothing():
    coupling = Coupling.chain(4, 1.0)
    X = torch.randn(4, 5, 3)
    copy = X.clone()
    with pytest.raises(ValueError, match=r"shape \(T, N, d\)"):
        solve_gauge(X[0], coupling)
    with pytest.raises(ValueError, match="time steps"):
        solve_gauge(X[:3], coupling)
    with pytest.raises(ValueError, match="T and d must agree"):
        solve_gauge([X, torch.randn(3, 5, 3)], coupling)
    with pytest.raises(ValueError, match="method must be one of"):
        solve_gauge(X, coupling, "newton")
    with pytest.raises(ValueError, match="natural_gradient"):
        solve_gauge(torch.randn(5, 2, 3), ring(5), "procrustes")
    with pytest.raises(ValueError, match=r"gauge_fields must have shape \(4, 3, 3\)"):
        solve_gauge(X, coupling, gauge_fields=torch.zeros(4, 3))
    with pytest.raises(TypeError, match="Coupling"):
        solve_gauge(X, "chain")
    with pytest.raises(TypeError, match="floating point"):
        solve_gauge(X.long(), coupling)

    bad = X.clone()
    bad[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"X\[2, 1, 0\] is nan"):
        solve_gauge(bad, coupling)
    with pytest.raises(
        ValueError, match=r"X\[1\] must be finite, but X\[1\]\[2, 1, 0\]"
    ):
        solve_gauge([X, bad], coupling)

    rotations = torch.eye(3).expand(4, 3, 3).clone()
    rotations[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="rotations must be finite"):
        rotate_(X, rotations)
    with pytest.raises(ValueError, match=r"rotations must have shape"):
        rotate_(X, rotations[:3])
    assert torch.equal(X, copy)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("method", ["natural_gradient", "taylor", "procrustes"])
def test_results_follow_device_and_dtype(method, dtype, device):
    T, d = 6, 3
    coupling = Coupling.chain(T, 2.0)
    X = twisted(T, 17, d, angle=1.5, noise=0.1, dtype=dtype).to(device)
    U, V = X[:, :10], X[:, 10:]
    result = solve_gauge([U, V], coupling, method, num_steps=None)
    tensors = [result.rotations, result.energy_before, result.energy_after]
    if method != "procrustes":
        tensors.append(result.gauge_fields)
    tensors += [prior_energy([U, V], coupling), *overlaps([U, V], coupling)]
    tensors += rotate([U, V], result.rotations)
    tensors += rotate_first_order([U, V], torch.zeros(T, d, d, dtype=dtype))
    for tensor in tensors:
        assert tensor.dtype == dtype and tensor.device.type == device
    assert result.energy_after < 0.9 * result.energy_before

    # a warm start in another dtype is converted, not rejected
    if method == "natural_gradient":
        other = torch.float64 if dtype == torch.float32 else torch.float32
        warm = result.gauge_fields.to(other)
        again = solve_gauge([U, V], coupling, gauge_fields=warm)
        assert again.rotations.dtype == dtype
        assert again.energy_after <= result.energy_after * (1 + 1e-5)


def test_undamped_first_order_update_diverges():
    # fact (a) of the design: the natural-gradient result applied to first order,
    # undamped, raises the energy; applied exactly, it lowers it
    T, d = 100, 3
    coupling = Coupling.chain(T, 10.0)
    X = twisted(T, 20, d, angle=6.0, noise=0.01)
    result = solve_gauge(X, coupling, num_steps=50)
    before = prior_energy(X, coupling)
    exact = prior_energy(rotate(X, result.rotations), coupling)
    first_order = prior_energy(rotate_first_order(X, result.gauge_fields), coupling)
    assert exact < 0.1 * before
    assert first_order > 2 * before

    # the damped first-order variant never raises it, but gets nowhere near
    damped = solve_gauge(X, coupling, "taylor", num_steps=50)
    assert 0.9 * before < damped.energy_after <= before


def test_invariants_of_every_time_step_float32():
    # the spectrum of X_t^T X_t is all of the d x d Gram matrix that rotations keep
    T, d = 6, 4
    X = twisted(T, 25, d, angle=2.5, noise=0.3, dtype=torch.float32)
    spectrum = torch.linalg.eigvalsh(X.mT @ X)
    for method in ["procrustes", "natural_gradient"]:
        result = solve_gauge(X, Coupling.chain(T, 1.0), method)
        moved = rotate(X, result.rotations)
        assert_close(torch.linalg.eigvalsh(moved.mT @ moved), spectrum, rtol=1e-5)
        eye = torch.eye(d).expand(T, d, d)
        assert_close(result.rotations @ result.rotations.mT, eye, atol=1e-6)


def test_bad_input_in_a_sequence_changes_nothing():
    coupling = Coupling.chain(4, 1.0)
    U, V = torch.randn(4, 5, 3), torch.randn(4, 6, 3)
    copies = U.clone(), V.clone()
    R = random_rotations(4, 3, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"X\[1\] must have shape \(T, N, d\)"):
        rotate_([U, V[0]], R)
    with pytest.raises(ValueError, match=r"X\[1\] is torch.float64"):
        rotate_([U, V.double()], R)
    with pytest.raises(ValueError, match="gauge_fields must be finite"):
        solve_gauge([U, V], coupling, gauge_fields=torch.full((4, 3, 3), np.nan))
    with pytest.raises(ValueError, match="takes neither"):
        solve_gauge([U, V], coupling, "procrustes", num_steps=3)
    with pytest.raises(ValueError, match="cannot remove reflections"):
        solve_gauge([U, V], coupling, "taylor", allow_reflections=True)
    with pytest.raises(ValueError, match="num_steps must be a non-negative int"):
        solve_gauge([U, V], coupling, num_steps=-1)
    with pytest.raises(ValueError, match="coupling graph has 4"):
        prior_energy(torch.randn(5, 2, 3), coupling)
    assert torch.equal(U, copies[0]) and torch.equal(V, copies[1])


def test_thread_setting_is_restored():
    previous = torch.get_num_threads()
    X = twisted(5, 6, 3, angle=1.0)
    solve_gauge(X, Coupling.chain(5, 1.0), "procrustes")
    assert torch.get_num_threads() == previous
    with pytest.raises(ValueError):
        solve_gauge(
            X, Coupling.chain(5, 1.0), gauge_fields=torch.full((5, 3, 3), 1e400)
        )
    assert torch.get_num_threads() == previous


def test_public_api():
    import pyro_goldstone

    # other code imports these three by name from the top level
    assert pyro_goldstone.Coupling is Coupling
    assert pyro_goldstone.prior_energy is prior_energy
    assert pyro_goldstone.optimal_rotations is optimal_rotations
    for name in pyro_goldstone.__all__:
        assert getattr(pyro_goldstone, name).__doc__, name
    assert {"Coupling", "prior_energy", "optimal_rotations"} <= set(
        pyro_goldstone.__all__
    )


def test_benchmark_smoke(tmp_path):
    path = Path(__file__).parents[1] / "benchmarks" / "gauge_phase.py"
    spec = importlib.util.spec_from_file_location("gauge_phase_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    out = tmp_path / "gauge_phase.json"
    argv = ["--sizes", "40,3,5", "--repeats", "1", "--out", str(out)]
    records = benchmark.main(
        argv + ["--log-level", "WARNING", "--grad-time-steps", "2"]
    )
    assert [r["method"] for r in records] == [
        "procrustes",
        "natural_gradient",
        "taylor",
    ]
    saved = json.loads(out.read_text())["records"]
    assert saved == records
    for record in records:
        assert record["phase_s"] >= record["solve_s"] > 0
        assert record["energy_after"] <= record["energy_before"] * (1 + 1e-6)
    assert abs(records[0]["excess_after"]) < 1e-5  # Procrustes is exact on a chain
