# SPDX-License-Identifier: Apache-2.0
"""Tests of GaugeFixer, the gauge phase for plain PyTorch parameters."""

import math

import pytest
import torch
from common import assert_close

from pyro_goldstone.coupling import Coupling
from pyro_goldstone.data.synthetic import make_dynamic_mf_data, twisted_init
from pyro_goldstone.gauge import prior_energy
from pyro_goldstone.gauge_phase import GaugeFixer

T, N, D = 8, 6, 3


def train(use_fixer, num_steps=60):
    """MAP fit of a dense dynamic factorisation with torch.optim.Adam."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    Y = make_dynamic_mf_data(N, N, T, D, noise=0.05, generator=generator).Y
    coupling = Coupling.chain(T, 10.0)
    U0, V0 = twisted_init(T, (N, N), D, scale=0.3, twist=2.5, generator=generator)
    U, V = torch.nn.Parameter(U0), torch.nn.Parameter(V0)
    optimizer = torch.optim.Adam([U, V], lr=0.05)
    fixer = GaugeFixer([U, V], coupling, optimizer=optimizer, names=["U", "V"])
    for _ in range(num_steps):
        optimizer.zero_grad()
        fit = (Y - U @ V.mT).square().sum() / (2 * 0.05**2)
        loss = (
            fit
            + prior_energy([U, V], coupling)
            + (U.square().sum() + V.square().sum()) / 2
        )
        loss.backward()
        optimizer.step()
        if use_fixer:
            fixer.step()
    return (
        U,
        V,
        fixer,
        prior_energy([U.detach(), V.detach()], coupling).item(),
        loss.item(),
    )


def test_plain_torch_parameters_after_torch_optim_step():
    U, V, fixer, energy_gold, loss_gold = train(True)
    _, _, _, energy_adam, loss_adam = train(False)
    assert len(fixer.records) == 6
    assert fixer.params[0] is U and fixer.params[1] is V
    for record in fixer.records:
        assert record["energy_after"] <= record["energy_before"]
    # the 10x claim is tested through SVI in test_optim.py; a MAP fit from a twisted
    # start keeps non-rotational differences (Adam is not rotation equivariant)
    assert energy_gold < energy_adam, (energy_gold, energy_adam)
    assert loss_gold <= loss_adam


def test_interval_none_runs_phases_only_on_request():
    U = torch.nn.Parameter(twisted_init(T, N, D, twist=2.0))
    fixer = GaugeFixer(U, Coupling.chain(T, 1.0), interval=None, reflections="first")
    before = U.detach().clone()
    for _ in range(20):
        assert fixer.step() is None
    assert torch.equal(U.detach(), before)
    record = fixer.gauge_phase()
    assert record["energy_after"] < 1e-6 * record["energy_before"]
    rotations = torch.linalg.lstsq(before, U.detach()).solution
    assert_close(rotations.mT @ rotations, torch.eye(D).expand(T, D, D), atol=1e-4)


def test_bind_checks_before_changing_anything():
    U = torch.nn.Parameter(torch.randn(T, N, D))
    fixer = GaugeFixer(U, Coupling.chain(T, 1.0))
    with pytest.raises(ValueError, match="'V' has embedding size 2"):
        fixer.bind([U, torch.randn(T, N, 2)], ["U", "V"])
    assert fixer.params == [U]
    with pytest.raises(RuntimeError, match="call bind"):
        GaugeFixer(None, Coupling.chain(T, 1.0)).step()
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        GaugeFixer(U, Coupling.chain(T, 1.0), optimizer="adam")


def test_time_and_embedding_dimensions_can_move():
    # (d, N, T) layout: time last, embedding first
    X = twisted_init(T, N, D, twist=2.0, dtype=torch.float64)
    Y = torch.nn.Parameter(X.permute(2, 1, 0).contiguous())
    fixer = GaugeFixer(
        Y, Coupling.chain(T, 1.0), time_dim=-1, embed_dim=0, reflections="first"
    )
    record = fixer.gauge_phase()
    assert record["energy_after"] < 1e-8 * record["energy_before"]
    moved = Y.detach().permute(2, 1, 0)
    assert prior_energy(moved, Coupling.chain(T, 1.0)) == pytest.approx(
        record["energy_after"], abs=1e-8
    )


def ring(num_steps):
    adjacency = torch.zeros(num_steps, num_steps, dtype=torch.float64)
    steps = torch.arange(num_steps)
    adjacency[steps, (steps + 1) % num_steps] = 1.0
    return Coupling.from_adjacency(adjacency + adjacency.T)


def sectors(seed=0):
    """One shared frame, turned by a random rotation and reflected at some steps."""
    generator = torch.Generator().manual_seed(seed)
    Y = torch.randn(N, D, dtype=torch.float64, generator=generator)
    Q, _ = torch.linalg.qr(
        torch.randn(T, D, D, dtype=torch.float64, generator=generator)
    )
    signs = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0, -1.0]).double()
    Q = Q * (torch.linalg.det(Q) * signs).view(-1, 1, 1)  # det Q_t = signs[t]
    return Y @ Q


@pytest.mark.parametrize("graph", ["chain", "ring"])
@pytest.mark.parametrize("method", ["natural_gradient", "taylor"])
@pytest.mark.parametrize("reflections", ["auto", "first"])
def test_first_phase_heals_reflections_on_any_graph(graph, method, reflections):
    coupling = Coupling.chain(T, 1.0) if graph == "chain" else ring(T)
    U = torch.nn.Parameter(sectors())
    fixer = GaugeFixer(U, coupling, method=method, reflections=reflections, interval=1)
    first, second = fixer.step(), fixer.step()
    assert first["reflections"] and not second["reflections"]
    assert first["energy_after"] < 1e-10 * first["energy_before"]
    assert second["energy_after"] <= second["energy_before"]
    assert prior_energy(U.detach(), coupling) < 1e-10 * first["energy_before"]


@pytest.mark.parametrize("graph", ["chain", "ring"])
def test_reflection_options(graph):
    coupling = Coupling.chain(T, 1.0) if graph == "chain" else ring(T)
    never = torch.nn.Parameter(sectors())
    fixer = GaugeFixer(never, coupling, reflections="never", interval=1)
    records = [fixer.step() for _ in range(3)]
    # no rotation joins the reflection sectors: the energy stays far from zero
    assert not any(record["reflections"] for record in records)
    assert records[-1]["energy_after"] > 0.01 * records[0]["energy_before"]
    # every time step was rotated, never reflected
    rotations = torch.linalg.lstsq(sectors(), never.detach()).solution
    assert (torch.linalg.det(rotations) > 0).all()

    always = torch.nn.Parameter(sectors())
    fixer = GaugeFixer(always, coupling, reflections="always", interval=1)
    records = [fixer.step() for _ in range(3)]
    assert all(record["reflections"] for record in records)
    assert records[0]["energy_after"] < 1e-10 * records[0]["energy_before"]


def test_procrustes_method():
    coupling = Coupling.chain(T, 1.0)
    U = torch.nn.Parameter(twisted_init(T, N, D, twist=3.0, dtype=torch.float64))
    fixer = GaugeFixer(U, coupling, method="procrustes", reflections="never")
    record = fixer.gauge_phase()
    assert record["energy_after"] < 1e-10 * record["energy_before"]
    assert fixer.gauge_fields is None
    assert (torch.linalg.det(U.detach().mT @ U.detach()) > 0).all()
    # on a graph with a cycle the method is refused before anything runs
    with pytest.raises(ValueError, match="method='natural_gradient'"):
        GaugeFixer(U, ring(T), method="procrustes")


def test_load_state_dict_checks_before_changing_anything():
    U = torch.nn.Parameter(twisted_init(T, N, D, twist=2.0, dtype=torch.float64))
    fixer = GaugeFixer(U, Coupling.chain(T, 1.0), gauge_steps=1)
    fixer.gauge_phase()
    fixer.gauge_phase()
    state = fixer.state_dict()
    assert state["gauge_fields"].shape == (T, D, D)

    other = GaugeFixer(U, Coupling.chain(T, 1.0))
    empty = other.state_dict()
    bad_states = [
        ({**state, "gauge_fields": torch.zeros(T, D + 1, D + 1)}, "embedding size 3"),
        ({**state, "gauge_fields": torch.zeros(T + 1, D, D)}, "9 time steps|coupling"),
        ({**state, "records": [1, 2]}, "records"),
        ({**state, "num_steps": -1}, "num_steps"),
        ({"num_steps": 1}, "lacks the keys"),
    ]
    for bad, match in bad_states:
        with pytest.raises(ValueError, match=match):
            other.load_state_dict(bad)
        assert other.state_dict() == empty
    other.load_state_dict(state)
    assert other.num_phases == 2 and torch.equal(
        other.gauge_fields, state["gauge_fields"]
    )


def test_auto_reflections_sweep_only_where_a_sector_differs():
    # pure rotations: every det X_t^T X_t' > 0, so no sweep and no change of sector
    twisted = torch.nn.Parameter(twisted_init(T, N, D, twist=2.0, dtype=torch.float64))
    fixer = GaugeFixer(twisted, Coupling.chain(T, 1.0), interval=1)
    assert [fixer.step()["reflections"] for _ in range(3)] == [False] * 3

    # planted sectors: the first phase sweeps and lands in one sector, so the next
    # one does not sweep again
    U = torch.nn.Parameter(sectors())
    fixer = GaugeFixer(U, Coupling.chain(T, 1.0), interval=1)
    assert [fixer.step()["reflections"] for _ in range(3)] == [True, False, False]


def test_auto_reflections_leave_a_frustrated_cycle_after_one_sweep():
    # d = 1, three steps on a ring, vectors 120 degrees apart: every overlap
    # x_t . x_t' is negative, an odd number of sign changes around the cycle, which no
    # O(1) gauge (signs per step) can remove; "auto" must not sweep in every phase
    angles = torch.tensor([0.0, 2.0, 4.0], dtype=torch.float64) * math.pi / 3
    X = torch.stack([angles.cos(), angles.sin()], -1).unsqueeze(-1)  # (3, 2, 1)
    X = torch.nn.Parameter(X)
    fixer = GaugeFixer(X, ring(3), interval=1)
    records = [fixer.step() for _ in range(4)]
    assert [record["reflections"] for record in records] == [True] + [False] * 3
    for record in records:
        assert record["energy_after"] <= record["energy_before"] + 1e-12


def test_one_time_step_has_nothing_to_fix():
    U = torch.nn.Parameter(torch.randn(1, N, D))
    before = U.detach().clone()
    fixer = GaugeFixer(U, Coupling.chain(1, 1.0), interval=1)
    record = fixer.step()
    assert record["energy_before"] == record["energy_after"] == 0.0
    assert not record["reflections"] and record["rotation_angle"] == 0.0
    assert torch.equal(U.detach(), before)
