# SPDX-License-Identifier: Apache-2.0
"""Tests of GoldstonePyroOptim: SVI with gauge phases on a dense dynamic factorisation."""

import copy
import logging

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from common import assert_close, random_rotations
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal

from pyro_goldstone.coupling import Coupling
from pyro_goldstone.data.synthetic import (
    independent_init,
    make_dynamic_mf_data,
    twisted_init,
)
from pyro_goldstone.distributions import GraphLaplacianPrior
from pyro_goldstone.gauge import prior_energy
from pyro_goldstone.guides import MeanFieldEmbedding
from pyro_goldstone.optim import GoldstonePyroOptim

NAMES = ["U_loc", "V_loc"]


@pytest.fixture(autouse=True)
def clean_store():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


class Problem:
    """A dense dynamic matrix factorisation ``Y_t = U_t V_t^T + noise`` with a chain
    prior on ``U`` and ``V`` and :class:`MeanFieldEmbedding` guides.

    The data are time independent, so at the optimum all time steps coincide. The
    noise is low (0.05) and the data are fitted after a few dozen Adam steps, so what
    is left of the prior energy after that is almost only the relative rotations
    between time steps (the Goldstone modes), not differences of fit between steps.
    """

    def __init__(
        self, T=10, n=8, m=8, d=3, *, strength=10.0, dtype=torch.float64, ring=False
    ):
        self.T, self.n, self.m, self.d, self.dtype = T, n, m, d, dtype
        generator = torch.Generator().manual_seed(1)
        self.noise = 0.05
        self.Y = make_dynamic_mf_data(
            n, m, T, d, noise=self.noise, generator=generator, dtype=dtype
        ).Y
        self.coupling = Coupling.chain(T, strength)
        if ring:
            # the chain closed into a loop: a graph with a cycle
            adjacency = self.coupling.adjacency(torch.float64).clone()
            adjacency[0, -1] = adjacency[-1, 0] = strength
            self.coupling = Coupling.from_adjacency(adjacency)
        # built once: the priors factorise the chain when they are created
        options = {"sigma0": 1.0, "dtype": dtype}
        self.prior_u = GraphLaplacianPrior(self.coupling, n, d, **options)
        self.prior_v = GraphLaplacianPrior(self.coupling, m, d, **options)
        self.guide_u = MeanFieldEmbedding("U", T, n, d, dtype=dtype)
        self.guide_v = MeanFieldEmbedding("V", T, m, d, dtype=dtype)

    def model(self, Y):
        U = pyro.sample("U", self.prior_u)
        V = pyro.sample("V", self.prior_v)
        pyro.sample("Y", dist.Normal(U @ V.mT, self.noise).to_event(3), obs=Y)

    def guide(self, Y):
        self.guide_u()
        self.guide_v()

    def init(self, kind, seed=2):
        """Put means initialised per time step (``"independent"``) or from one shared
        draw twisted along the chain (``"twisted"``) into the param store."""
        generator = torch.Generator().manual_seed(seed)
        options = {"scale": 0.3, "generator": generator, "dtype": self.dtype}
        if kind == "twisted":
            U, V = twisted_init(self.T, (self.n, self.m), self.d, twist=2.5, **options)
        else:
            U, V = independent_init(self.T, (self.n, self.m), self.d, **options)
        pyro.param("U_loc", U)
        pyro.param("V_loc", V)

    def energy(self):
        means = [pyro.param(name).detach() for name in NAMES]
        return prior_energy(means, self.coupling).item()

    def svi(self, optim, loss=None):
        return SVI(self.model, self.guide, optim, loss or TraceMeanField_ELBO())


def unconstrained(name):
    return pyro.get_param_store()._params[name]


def snapshot():
    store = pyro.get_param_store()
    return {name: value.detach().clone() for name, value in store.named_parameters()}


def recover_rotations(before, after):
    """The ``R_t`` with ``after[t] = before[t] @ R_t`` (least squares)."""
    return torch.linalg.lstsq(before, after).solution


# ----- the wrapper is the base optimiser when no phase runs -----


@pytest.mark.parametrize("interval", [None, 1000])
def test_identical_to_base_without_gauge_phase(interval):
    problem = Problem()
    trajectories = []
    for wrap in (False, True):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        problem.init("twisted")
        base = pyro.optim.Adam({"lr": 0.05})
        optim = GoldstonePyroOptim(base, NAMES, problem.coupling, interval=interval)
        svi = problem.svi(optim if wrap else base)
        steps = []
        for _ in range(30):
            loss = svi.step(problem.Y)
            steps.append((loss, snapshot()))
        trajectories.append(steps)
        if wrap:
            assert optim.records == [] and optim.num_steps == 30
    for (loss_base, params_base), (loss, params) in zip(*trajectories):
        assert loss == loss_base
        for name in params_base:
            assert torch.equal(params[name], params_base[name]), name


# ----- the gauge phase removes the Goldstone modes -----


@pytest.mark.parametrize("init", ["twisted", "independent"])
def test_prior_energy_ten_times_lower_than_adam(init):
    problem = Problem(T=8, n=6, m=6)
    results = {}
    for goldstone in (False, True):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        problem.init(init)
        base = pyro.optim.Adam({"lr": 0.05})
        optim = GoldstonePyroOptim(base, NAMES, problem.coupling) if goldstone else base
        svi = problem.svi(optim)
        for _ in range(150):
            svi.step(problem.Y)
        # the same particles for both runs: the ELBO estimates differ only by the means
        pyro.set_rng_seed(1)
        elbo = TraceMeanField_ELBO(num_particles=20, vectorize_particles=True)
        results[goldstone] = (
            problem.energy(),
            elbo.loss(problem.model, problem.guide, problem.Y),
        )
    (energy_adam, loss_adam), (energy_gold, loss_gold) = results[False], results[True]
    assert energy_gold * 10 <= energy_adam, (energy_gold, energy_adam)
    assert loss_gold <= loss_adam, (loss_gold, loss_adam)


# ----- checkpoints -----


def run_steps(problem, optim, num_steps, loss=None):
    svi = problem.svi(optim, loss)
    for _ in range(num_steps):
        svi.step(problem.Y)


def make_optim(problem, **options):
    return GoldstonePyroOptim(
        pyro.optim.Adam({"lr": 0.05}), NAMES, problem.coupling, **options
    )


@pytest.mark.parametrize(
    "mode, half",
    [("save", 250), ("save", 25), ("get_state", 25), ("state_dict", 25)],
)
def test_checkpoint_round_trip(mode, half, tmp_path):
    # one natural-gradient step per phase: early in the run the phases have not
    # converged, so the warm start (the saved gauge fields) changes the trajectory and
    # a checkpoint without them would fail; after 250 steps the means have converged.
    # With a sweep over O(d) in the first phase only, the phase counter matters too.
    options = {"interval": 7, "gauge_steps": 1}
    if half == 25:
        options["reflections"] = "first"
    problem = Problem(T=5, n=4, m=4)
    problem.init("independent")
    optim = make_optim(problem, **options)
    run_steps(problem, optim, half)
    pyro.get_param_store().save(tmp_path / "params.pt")
    rng_state = pyro.util.get_rng_state()
    if mode == "save":
        optim.save(tmp_path / "optim.pt")
    else:
        # the states reference the live tensors, which the next steps change in place
        state = copy.deepcopy(getattr(optim, mode)())
    run_steps(problem, optim, half)
    expected, expected_records = snapshot(), copy.deepcopy(optim.records)

    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt", map_location="cpu")
    pyro.util.set_rng_state(rng_state)
    resumed = make_optim(problem, **options)
    if mode == "save":
        resumed.load(tmp_path / "optim.pt", map_location="cpu")
    elif mode == "get_state":
        resumed.set_state(state)
    else:
        resumed.load_state_dict(state)
    assert resumed.num_steps == half
    if mode == "save":
        state = torch.load(tmp_path / "optim.pt", weights_only=False)
    saved_fields = state["gauge"]["gauge_fields"]
    if half == 25:
        assert saved_fields is not None and saved_fields.abs().max() > 0
    if saved_fields is None:
        assert resumed.fixer.gauge_fields is None
    else:
        assert torch.equal(resumed.fixer.gauge_fields, saved_fields)
    run_steps(problem, resumed, half)
    assert resumed.num_steps == 2 * half
    assert len(expected_records) == 2 * half // 7
    assert resumed.records == expected_records
    assert_close(snapshot(), expected, rtol=1e-6, atol=1e-6)


def test_set_state_rejects_malformed_state():
    problem = Problem(T=5, n=4, m=4)
    optim = make_optim(problem)
    state = optim.get_state()
    with pytest.raises(ValueError, match="version-1"):
        optim.set_state({**state, "version": 2})
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        optim.set_state([state])
    bad = copy.deepcopy(state)
    bad["gauge"]["gauge_fields"] = torch.zeros(4, 3, 3)
    with pytest.raises(ValueError, match="gauge_fields"):
        optim.set_state(bad)
    # neither this class's state nor a PyroOptim one: refused, nothing loaded
    for junk in ({"foo": 1}, {"format": "x"}, {"U_loc": {"state": {}}}):
        with pytest.raises(ValueError, match="neither"):
            optim.set_state(junk)
    assert optim.base._state_waiting_to_be_consumed == {}


def test_plain_base_state_is_accepted():
    problem = Problem(T=5, n=4, m=4)
    problem.init("twisted")
    base = pyro.optim.Adam({"lr": 0.05})
    run_steps(problem, base, 3)
    optim = make_optim(problem)
    optim.set_state(base.get_state())
    assert optim.base._state_waiting_to_be_consumed.keys() == base.get_state().keys()


# ----- losses, base optimisers, guides -----


def test_jit_trace_elbo_gives_the_same_trajectory():
    # point-mass guides make the ELBO deterministic, so both losses see the same values
    problem = Problem(T=5, n=4, m=4)

    def delta_guide(Y):
        for site, name in zip("UV", NAMES):
            pyro.sample(site, dist.Delta(pyro.param(name)).to_event(3))

    results = []
    for loss in (Trace_ELBO(), JitTrace_ELBO(ignore_jit_warnings=True)):
        pyro.clear_param_store()
        problem.init("independent")
        optim = make_optim(problem, interval=5)
        svi = SVI(problem.model, delta_guide, optim, loss)
        losses = [svi.step(problem.Y) for _ in range(20)]
        records = [record["energy_after"] for record in optim.records]
        results.append((snapshot(), losses, records))
    assert len(results[0][2]) == 4
    assert_close(results[1], results[0], rtol=1e-6, atol=1e-8)


BASES = {
    "Adam": lambda: pyro.optim.Adam({"lr": 0.05}),
    "ClippedAdam": lambda: pyro.optim.ClippedAdam({"lr": 0.05, "clip_norm": 5.0}),
    "Adagrad": lambda: pyro.optim.Adagrad({"lr": 0.1}),
    "SGD": lambda: pyro.optim.SGD({"lr": 1e-4, "momentum": 0.9}),
    "RMSprop": lambda: pyro.optim.RMSprop({"lr": 0.01, "centered": True}),
    "ExponentialLR": lambda: pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}, "gamma": 0.9}
    ),
}


@pytest.mark.parametrize("name", list(BASES))
def test_works_with_every_base_optimiser(name):
    problem = Problem(T=6, n=5, m=5)
    problem.init("twisted")
    optim = GoldstonePyroOptim(BASES[name](), NAMES, problem.coupling, interval=5)
    run_steps(problem, optim, 20)
    assert len(optim.records) == 4
    for record in optim.records:
        assert record["energy_after"] <= record["energy_before"]
    # the first phase removes much of the initial twist
    first = optim.records[0]
    assert first["energy_after"] < 0.8 * first["energy_before"], first
    assert all(torch.isfinite(p).all() for p in snapshot().values())
    if name == "ExponentialLR":
        optim.step()
        scheduler = optim.optim_objs[unconstrained("U_loc")]
        assert scheduler.get_last_lr() == pytest.approx([0.05 * 0.9])
    else:
        with pytest.raises(AttributeError, match="only learning-rate schedulers"):
            optim.step()


def autonormal_model(problem):
    def model(Y):
        U = pyro.sample("U", problem.prior_u)
        V = pyro.sample("V", problem.prior_v)
        pyro.sample("Y", dist.Normal(U @ V.mT, problem.noise).to_event(3), obs=Y)

    return model


def test_autonormal_names():
    problem = Problem(T=6, n=5, m=5)
    model = autonormal_model(problem)
    guide = AutoNormal(model)
    names = ["AutoNormal.locs.U", "AutoNormal.locs.V"]
    optim = GoldstonePyroOptim(
        pyro.optim.Adam({"lr": 0.05}), names, problem.coupling, interval=5
    )
    svi = SVI(model, guide, optim, Trace_ELBO())
    for _ in range(10):
        svi.step(problem.Y)
    assert len(optim.records) == 2
    assert optim.records[0]["rotation_angle"] > 0
    assert optim.records[0]["energy_after"] < optim.records[0]["energy_before"]
    # the phase rotated the tensors that AutoNormal reads
    assert optim.fixer.params[0] is unconstrained("AutoNormal.locs.U")

    # twisted means: a phase turns them back and leaves the scales alone
    twist = random_rotations(6, 3, scale=0.5)
    with torch.no_grad():
        for name in ("AutoNormal.locs.U", "AutoNormal.locs.V"):
            unconstrained(name).copy_(unconstrained(name) @ twist)
    before = snapshot()
    record = optim.fixer.gauge_phase()
    assert record["rotation_angle"] > 0.1
    after = snapshot()
    assert set(after) == set(before) and len(after) == 4
    for name in before:
        if ".scales." in name:
            assert torch.equal(after[name], before[name]), name
    rotations = recover_rotations(
        before["AutoNormal.locs.U"], after["AutoNormal.locs.U"]
    )
    assert_close(
        before["AutoNormal.locs.V"] @ rotations, after["AutoNormal.locs.V"], atol=1e-8
    )
    assert record["energy_after"] <= record["energy_before"]


def test_graph_with_a_cycle_and_independent_init():
    # the first phase sweeps a spanning tree over O(d), then polishes
    problem = Problem(T=6, n=5, m=5, ring=True)
    assert not problem.coupling.is_tree
    problem.init("independent")
    optim = make_optim(problem, interval=5)
    run_steps(problem, optim, 20)
    assert len(optim.records) == 4 and optim.records[0]["reflections"]
    for record in optim.records:
        assert record["energy_after"] <= record["energy_before"]
    first = optim.records[0]
    assert first["energy_after"] < 0.5 * first["energy_before"], first
    assert optim.records[-1]["energy_after"] == pytest.approx(problem.energy())


def test_parameters_created_lazily():
    problem = Problem(T=6, n=5, m=5)
    optim = make_optim(problem, interval=3)
    assert len(pyro.get_param_store()) == 0
    run_steps(problem, optim, 6)
    assert [record["step"] for record in optim.records] == [3, 6]
    assert optim.fixer.params[1] is unconstrained("V_loc")


# ----- bad input is caught before anything changes -----


def one_step_fails(problem, optim, match, guide=None):
    svi = SVI(problem.model, guide or problem.guide, optim, TraceMeanField_ELBO())
    before = snapshot()
    with pytest.raises(ValueError, match=match) as info:
        svi.step(problem.Y)
    after = snapshot()
    assert set(after) == set(before)
    for name in before:
        assert torch.equal(after[name], before[name]), name
    return str(info.value)


def call_fails(optim, match):
    """Call ``optim`` as SVI does, on every parameter with a zero gradient."""
    before = snapshot()
    params = [unconstrained(name) for name in before]
    for param in params:
        param.grad = torch.zeros_like(param)
    with pytest.raises(ValueError, match=match):
        optim(params)
    after = snapshot()
    for name in before:
        assert torch.equal(after[name].nan_to_num(), before[name].nan_to_num()), name
    assert optim.records == []


def test_unknown_name_lists_the_store():
    problem = Problem(T=5, n=4, m=4)
    problem.init("twisted")
    problem.guide(problem.Y)
    optim = GoldstonePyroOptim(
        pyro.optim.Adam({"lr": 0.05}), ["U_loc", "W_loc"], problem.coupling
    )
    message = one_step_fails(problem, optim, "no parameter 'W_loc'")
    for name in ("'U_loc'", "'U_scale'", "'V_loc'", "'V_scale'"):
        assert name in message


@pytest.mark.parametrize(
    "shape_v, match",
    [
        ((5, 4, 2), "'V_loc' has embedding size 2"),
        ((6, 4, 3), "'V_loc' has 6 time steps"),
    ],
)
def test_sizes_that_disagree(shape_v, match):
    problem = Problem(T=5, n=4, m=4)
    problem.init("twisted")
    pyro.get_param_store()["V_loc"] = torch.randn(shape_v, dtype=torch.float64)
    optim = make_optim(problem, interval=1)
    call_fails(optim, match)


def test_coupling_of_another_length():
    problem = Problem(T=5, n=4, m=4)
    problem.init("twisted")
    optim = GoldstonePyroOptim(
        pyro.optim.Adam({"lr": 0.05}), NAMES, Coupling.chain(7, 1.0), interval=1
    )
    call_fails(optim, "'U_loc' has 5 time steps .* coupling has 7")


def test_constrained_parameter_is_refused():
    problem = Problem(T=5, n=4, m=4)
    optim = GoldstonePyroOptim(
        pyro.optim.Adam({"lr": 0.05}), ["U_scale"], problem.coupling, interval=1
    )
    problem.guide(problem.Y)
    one_step_fails(problem, optim, "'U_scale' is constrained")


def test_flat_vector_guide_names_the_working_guides():
    problem = Problem(T=5, n=4, m=4)
    guide = AutoDiagonalNormal(autonormal_model(problem))
    guide(problem.Y)
    optim = GoldstonePyroOptim(
        pyro.optim.Adam({"lr": 0.05}), "AutoDiagonalNormal.loc", problem.coupling
    )
    message = one_step_fails(problem, optim, "flat vector", guide=guide)
    assert "AutoNormal" in message and "AutoDiagonalNormal" in message


def test_non_finite_values_are_not_rotated():
    problem = Problem(T=5, n=4, m=4)
    problem.init("twisted")
    problem.guide(problem.Y)
    with torch.no_grad():
        unconstrained("V_loc")[3, 1, 2] = float("nan")
    # a zero learning rate: the base step changes nothing, so any change is a rotation
    optim = GoldstonePyroOptim(
        pyro.optim.SGD({"lr": 0.0}), NAMES, problem.coupling, interval=1
    )
    call_fails(optim, r"'V_loc' has 1 non-finite .*time step 3")


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"interval": 0}, ValueError, "interval must be at least 1"),
        ({"gauge_steps": 1.5}, TypeError, "gauge_steps must be an int"),
        ({"method": "newton"}, ValueError, "method must be one of"),
        ({"reflections": "sometimes"}, ValueError, "reflections must be one of"),
        ({"moments": "rotate_all"}, ValueError, "moments must be one of"),
        ({"time_dim": "0"}, TypeError, "time_dim must be an int"),
    ],
)
def test_bad_options(options, error, match):
    with pytest.raises(error, match=match):
        GoldstonePyroOptim(
            pyro.optim.Adam({}), NAMES, Coupling.chain(5, 1.0), **options
        )


def test_bad_arguments():
    coupling = Coupling.chain(5, 1.0)
    with pytest.raises(TypeError, match="base must be a pyro.optim.PyroOptim"):
        GoldstonePyroOptim(torch.optim.Adam, NAMES, coupling)
    with pytest.raises(TypeError, match="param_names must be"):
        GoldstonePyroOptim(pyro.optim.Adam({}), [1, 2], coupling)
    with pytest.raises(ValueError, match="must not repeat"):
        GoldstonePyroOptim(pyro.optim.Adam({}), ["U_loc", "U_loc"], coupling)
    with pytest.raises(TypeError, match="coupling must be a Coupling"):
        GoldstonePyroOptim(pyro.optim.Adam({}), NAMES, "chain")
    ring = Coupling.from_adjacency(torch.ones(5, 5))
    with pytest.raises(ValueError, match="method='natural_gradient'"):
        GoldstonePyroOptim(pyro.optim.Adam({}), NAMES, ring, method="procrustes")
    # a prior that carries a coupling is accepted
    prior = GraphLaplacianPrior(coupling, 4, 3)
    assert (
        GoldstonePyroOptim(pyro.optim.Adam({}), NAMES, prior).fixer.coupling is coupling
    )


# ----- what a phase does to parameters and optimiser state -----


def torch_optimizer(optim, tensor):
    """The torch optimiser that holds the state of ``tensor`` (under any scheduler)."""
    optimizer = optim.optim_objs[tensor]
    return getattr(optimizer, "optimizer", optimizer)


def phase_after_steps(problem, moments="rotate", base=None, num_steps=5):
    """Run base steps without phases, then one phase; return the states around it."""
    problem.init("twisted")
    base = base or pyro.optim.Adam({"lr": 0.05})
    optim = GoldstonePyroOptim(
        base, NAMES, problem.coupling, interval=None, moments=moments
    )
    run_steps(problem, optim, num_steps)
    tensors = [unconstrained(name) for name in NAMES]
    states = [torch_optimizer(optim, t).state[t] for t in tensors]
    before = snapshot(), copy.deepcopy(states)
    record = optim.fixer.gauge_phase()
    return optim, tensors, before, record


def test_rotation_keeps_tensors_scales_and_state_objects():
    problem = Problem(T=6, n=5, m=5)
    optim, tensors, (params, states), record = phase_after_steps(problem)
    assert record["rotation_angle"] > 0.1
    # the same tensor objects, still keys of the base optimiser's state
    assert [unconstrained(name) for name in NAMES] == tensors
    for tensor in tensors:
        assert tensor in optim.optim_objs
        assert len(optim.optim_objs[tensor].state[tensor]) == 3
    after = snapshot()
    for name in ("U_scale", "V_scale"):
        assert torch.equal(after[name], params[name])
    # U and V turned by one orthogonal R_t per time step
    rotations = recover_rotations(params["U_loc"], after["U_loc"])
    eye = torch.eye(3, dtype=torch.float64).expand(6, 3, 3)
    assert_close(rotations.mT @ rotations, eye, atol=1e-8)
    assert_close(params["V_loc"] @ rotations, after["V_loc"], atol=1e-8)


@pytest.mark.parametrize("base", ["Adam", "ExponentialLR"])
def test_first_moments_rotate_second_moments_stay(base):
    problem = Problem(T=6, n=5, m=5)
    optim, tensors, (params, states), _ = phase_after_steps(problem, base=BASES[base]())
    rotations = recover_rotations(params["U_loc"], unconstrained("U_loc").detach())
    for tensor, old in zip(tensors, states):
        new = torch_optimizer(optim, tensor).state[tensor]
        assert_close(new["exp_avg"], old["exp_avg"] @ rotations, atol=1e-10)
        # second moments are mixed by the squared rotation: positive, same sums
        mixed = old["exp_avg_sq"] @ rotations.square()
        assert_close(new["exp_avg_sq"], mixed, atol=1e-12)
        assert not torch.equal(new["exp_avg_sq"], old["exp_avg_sq"])
        assert (new["exp_avg_sq"] >= 0).all()
        assert_close(new["exp_avg_sq"].sum(-1), old["exp_avg_sq"].sum(-1), rtol=1e-8)
        assert torch.equal(new["step"], old["step"])


def test_first_policy_keeps_second_moments():
    problem = Problem(T=6, n=5, m=5)
    optim, tensors, (params, states), _ = phase_after_steps(problem, "first")
    rotations = recover_rotations(params["U_loc"], unconstrained("U_loc").detach())
    for tensor, old in zip(tensors, states):
        new = optim.optim_objs[tensor].state[tensor]
        assert_close(new["exp_avg"], old["exp_avg"] @ rotations, atol=1e-10)
        assert torch.equal(new["exp_avg_sq"], old["exp_avg_sq"])


def test_adagrad_sum_is_mixed_and_centred_rmsprop_left_alone():
    problem = Problem(T=6, n=5, m=5)
    optim, tensors, (params, states), _ = phase_after_steps(
        problem, base=BASES["Adagrad"]()
    )
    rotations = recover_rotations(params["U_loc"], unconstrained("U_loc").detach())
    new = optim.optim_objs[tensors[0]].state[tensors[0]]
    assert_close(new["sum"], states[0]["sum"] @ rotations.square(), atol=1e-12)

    optim, tensors, (_, states), _ = phase_after_steps(problem, base=BASES["RMSprop"]())
    for tensor, old in zip(tensors, states):
        new = optim.optim_objs[tensor].state[tensor]
        assert torch.equal(new["square_avg"], old["square_avg"])
        assert torch.equal(new["grad_avg"], old["grad_avg"])


def test_sgd_momentum_buffer_rotates():
    problem = Problem(T=6, n=5, m=5)
    base = pyro.optim.SGD({"lr": 1e-4, "momentum": 0.9})
    optim, tensors, (params, states), _ = phase_after_steps(problem, base=base)
    rotations = recover_rotations(params["U_loc"], unconstrained("U_loc").detach())
    new = optim.optim_objs[tensors[1]].state[tensors[1]]
    assert_close(new["momentum_buffer"], states[1]["momentum_buffer"] @ rotations)


@pytest.mark.parametrize("moments", ["keep", "reset"])
def test_other_moment_policies(moments):
    problem = Problem(T=6, n=5, m=5)
    optim, tensors, (_, states), _ = phase_after_steps(problem, moments)
    for tensor, old in zip(tensors, states):
        new = optim.optim_objs[tensor].state[tensor]
        if moments == "keep":
            assert_close(new, old, rtol=0, atol=0)
        else:
            assert len(new) == 0


def test_diagnostics_records_and_debug_log(caplog):
    problem = Problem(T=6, n=5, m=5)
    problem.init("independent")
    optim = make_optim(problem, interval=4, reflections="first")
    with caplog.at_level(logging.DEBUG, logger="pyro_goldstone.gauge_phase"):
        run_steps(problem, optim, 8)
    assert [record["step"] for record in optim.records] == [4, 8]
    assert [record["phase"] for record in optim.records] == [0, 1]
    assert [record["reflections"] for record in optim.records] == [True, False]
    for record in optim.records:
        assert 0 <= record["energy_after"] <= record["energy_before"]
        assert 0 <= record["rotation_angle"] <= torch.pi
    # the recorded energy is the prior energy of the means after the phase
    assert optim.records[-1]["energy_after"] == pytest.approx(problem.energy())
    messages = [
        r.getMessage() for r in caplog.records if r.name.endswith("gauge_phase")
    ]
    assert len(messages) == 2
    assert "gauge phase 0 at step 4" in messages[0]
    assert f"{optim.records[0]['energy_after']:.6g}" in messages[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_the_parameters(dtype):
    problem = Problem(T=6, n=5, m=5, dtype=dtype)
    optim, tensors, (params, _), record = phase_after_steps(problem)
    assert all(tensor.dtype == dtype for tensor in tensors)
    assert record["energy_after"] < record["energy_before"]
    rotations = recover_rotations(params["U_loc"], tensors[0].detach())
    tolerance = 1e-4 if dtype == torch.float32 else 1e-9
    eye = torch.eye(3, dtype=dtype).expand(6, 3, 3)
    assert_close(rotations.mT @ rotations, eye, atol=tolerance)


def test_gauge_phase_on_request_with_interval_none():
    problem = Problem(T=6, n=5, m=5)
    problem.init("twisted")
    optim = make_optim(problem, interval=None)
    run_steps(problem, optim, 5)
    assert optim.records == []
    record = optim.gauge_phase()
    assert optim.records == [record] and record["step"] == 5
    assert record["energy_after"] < record["energy_before"]
    assert record["rotation_angle"] > 0.1
    unknown = GoldstonePyroOptim(
        pyro.optim.Adam({"lr": 0.05}), ["nope"], problem.coupling, interval=None
    )
    with pytest.raises(ValueError, match="no parameter 'nope'"):
        unknown.gauge_phase()


def test_same_time_and_embedding_dimension_is_refused_at_construction():
    with pytest.raises(ValueError, match="name the same dimension"):
        GoldstonePyroOptim(
            pyro.optim.Adam({"lr": 0.05}),
            NAMES,
            Coupling.chain(4, 1.0),
            time_dim=-1,
        )
