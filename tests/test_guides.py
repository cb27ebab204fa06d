# SPDX-License-Identifier: Apache-2.0
"""Tests of the mean-field embedding guide and of minibatch ELBO scaling."""

import itertools

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch.distributions import kl_divergence

from pyro_goldstone.distributions import GaussianMarkovChain
from pyro_goldstone.guides import MeanFieldEmbedding, embedding_rows

T, N, D = 4, 5, 2


def make_model_and_guide(guide_x):
    """The subsampling pattern of the :mod:`pyro_goldstone.guides` docstring."""

    def model(y, rows=None):
        vectors = pyro.plate("vectors", N, subsample=rows, dim=-1)
        with embedding_rows(vectors) as rows:
            prior = GaussianMarkovChain(T, len(rows), D, [1.0, 3.0, 0.5], sigma0=1.5)
            x = pyro.sample("x", prior)
        with vectors, pyro.plate("time", T, dim=-2):
            pyro.sample("y", dist.Normal(x[..., 0], 0.5), obs=y[:, rows])

    def guide(y, rows=None):
        vectors = pyro.plate("vectors", N, subsample=rows, dim=-1)
        with embedding_rows(vectors) as rows:
            guide_x(rows)

    return model, guide


@pytest.mark.parametrize("shared_init", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_params_names_shapes_and_init(shared_init, dtype):
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    guide = MeanFieldEmbedding(
        "words", T, N, D, init_scale=0.02, shared_init=shared_init, dtype=dtype
    )
    sample = guide()
    store = pyro.get_param_store()
    loc, scale = store[guide.loc_name], store[guide.scale_name]

    assert (guide.loc_name, guide.scale_name) == ("words_loc", "words_scale")
    assert sample.shape == loc.shape == scale.shape == (T, N, D)
    assert loc.dtype == scale.dtype == sample.dtype == dtype
    assert torch.allclose(scale, torch.full_like(scale, 0.02))
    assert store._constraints[guide.scale_name] is dist.constraints.positive
    # small random means, not zero; shared init: one draw for every time step
    assert 0 < loc.abs().max() < 1
    same = torch.equal(loc, loc[:1].expand_as(loc))
    assert same == shared_init


@pytest.mark.parametrize("T_,N_,d_", list(itertools.product([1, 3], [1, 4], [1, 2])))
def test_guide_shapes_with_rows(T_, N_, d_):
    pyro.set_rng_seed(1)
    pyro.clear_param_store()
    guide = MeanFieldEmbedding("x", T_, N_, d_)
    rows = torch.tensor([N_ - 1, 0])
    trace = poutine.trace(guide).get_trace(rows)
    assert trace.nodes["x"]["value"].shape == (T_, 2, d_)
    assert trace.nodes["x"]["fn"].event_shape == (T_, 2, d_)
    loc = pyro.param("x_loc")
    assert torch.equal(trace.nodes["x"]["fn"].base_dist.loc, loc[:, rows])


def test_minibatch_elbo_averages_to_full_elbo():
    pyro.set_rng_seed(2)
    pyro.clear_param_store()
    guide_x = MeanFieldEmbedding("x", T, N, D, init_scale=0.3, loc_scale=0.5)
    model, guide = make_model_and_guide(guide_x)
    y = torch.randn(T, N)
    x_full = guide_x().detach()

    def elbo(rows):
        # the integrand log p(y, x) - log q(x) at one fixed full-size draw of x
        data = {"x": x_full[:, rows]}
        guide_trace = poutine.trace(poutine.condition(guide, data)).get_trace(y, rows)
        model_trace = poutine.trace(poutine.condition(model, data)).get_trace(y, rows)
        return model_trace.log_prob_sum() - guide_trace.log_prob_sum()

    # every row lies in the same share of all size-2 minibatches, so the average of the
    # scaled (by 5 / 2 = 2.5, a float) minibatch ELBOs equals the full ELBO exactly
    batches = [torch.tensor(b) for b in itertools.combinations(range(N), 2)]
    average = torch.stack([elbo(rows) for rows in batches]).mean()
    full = elbo(torch.arange(N))
    assert torch.allclose(average, full, rtol=1e-5)
    # while a single minibatch does not (the check has power)
    assert not torch.allclose(elbo(batches[0]), full, rtol=1e-2)


def test_minibatch_sites_are_scaled_by_float_ratio():
    pyro.set_rng_seed(3)
    pyro.clear_param_store()
    guide_x = MeanFieldEmbedding("x", T, N, D)
    model, guide = make_model_and_guide(guide_x)
    y = torch.randn(T, N)

    def guide_2(y):
        vectors = pyro.plate("vectors", N, subsample_size=2, dim=-1)
        with embedding_rows(vectors) as rows:
            guide_x(rows)

    guide_trace = poutine.trace(guide_2).get_trace(y)
    rows = guide_trace.nodes["vectors"]["value"]
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
        y, rows
    )
    for trace in (guide_trace, model_trace):
        assert trace.nodes["x"]["scale"] == pytest.approx(2.5)
        assert trace.nodes["x"]["value"].shape == (T, 2, D)
    assert model_trace.nodes["y"]["scale"] == pytest.approx(2.5)
    assert torch.equal(model_trace.nodes["y"]["value"], y[:, rows])


def test_mean_field_kl_of_minibatches_averages_to_full_kl():
    pyro.set_rng_seed(4)
    loc, scale = torch.randn(T, N, D), torch.rand(T, N, D) + 0.1

    def scaled_kl(rows):
        q = dist.Normal(loc[:, rows], scale[:, rows]).to_event(3)
        p = GaussianMarkovChain(T, len(rows), D, 2.0, sigma0=1.0)
        return N / len(rows) * kl_divergence(q, p)

    batches = [torch.tensor(b) for b in itertools.combinations(range(N), 3)]
    average = torch.stack([scaled_kl(rows) for rows in batches]).mean()
    assert torch.allclose(average, scaled_kl(torch.arange(N)), rtol=1e-5)


@pytest.mark.parametrize("loss", ["Trace_ELBO", "TraceMeanField_ELBO"])
def test_svi_with_subsampling_fits_the_data(loss):
    pyro.set_rng_seed(5)
    pyro.clear_param_store()
    guide_x = MeanFieldEmbedding("x", T, N, D)
    model, guide = make_model_and_guide(guide_x)
    y = torch.randn(T, N)

    def guide_sub(y, rows=None):
        guide(y, torch.randperm(N)[:2])

    def model_sub(y, rows=None):
        model(y, rows)

    elbo = getattr(pyro.infer, loss)()
    svi = pyro.infer.SVI(model_sub, guide_sub, pyro.optim.Adam({"lr": 0.05}), elbo)
    for _ in range(100):
        svi.step(y)

    # the first coordinate of the means follows the data, smoothed along the chain
    fitted = pyro.param("x_loc")[..., 0].detach()
    assert torch.corrcoef(torch.stack([fitted.flatten(), y.flatten()]))[0, 1] > 0.85


def test_invalid_arguments():
    with pytest.raises(ValueError, match="init_scale"):
        MeanFieldEmbedding("x", T, N, D, init_scale=0.0)
    with pytest.raises(ValueError, match="num_vectors"):
        MeanFieldEmbedding("x", T, 0, D)
    with pytest.raises(TypeError, match="site_name"):
        MeanFieldEmbedding(3, T, N, D)
    pyro.clear_param_store()
    MeanFieldEmbedding("x", T, N, D)()
    with pytest.raises(ValueError, match="x_loc"):
        MeanFieldEmbedding("x", T, N + 1, D)()
    with pytest.raises(ValueError, match="rows"):
        MeanFieldEmbedding("x", T, N, D)(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="plate"):
        with embedding_rows(torch.arange(3)):
            pass


def test_autonormal_with_goldstone_optim_removes_a_twist():
    from pyro.infer.autoguide import AutoNormal
    from pyro.infer.autoguide.initialization import init_to_value

    from pyro_goldstone.optim import GoldstonePyroOptim

    pyro.set_rng_seed(6)
    T_, N_, d_ = 6, 5, 2
    prior = GaussianMarkovChain(T_, N_, d_, 5.0, sigma0=3.0)
    base = torch.randn(N_, d_)
    angles = 0.6 * torch.arange(T_)
    cos, sin = angles.cos(), angles.sin()
    rotations = torch.stack(
        [torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2
    )
    twisted = base @ rotations  # (T, N, d): each time step rotated further
    gram = twisted @ twisted.mT  # the rotation-invariant data

    def model():
        x = pyro.sample("x", prior)
        with pyro.plate("time", T_, dim=-3):
            pyro.sample("y", dist.Normal(x @ x.mT, 0.1).to_event(2), obs=gram)

    energies = {}
    for gauge in (False, True):
        pyro.clear_param_store()
        guide = AutoNormal(model, init_loc_fn=init_to_value(values={"x": twisted}))
        optim = pyro.optim.Adam({"lr": 1e-3})
        if gauge:
            optim = GoldstonePyroOptim(optim, ["AutoNormal.locs.x"], prior, interval=5)
        svi = pyro.infer.SVI(model, guide, optim, pyro.infer.Trace_ELBO())
        for _ in range(5):
            svi.step()
        loc = pyro.param("AutoNormal.locs.x").detach()
        energies[gauge] = prior.prior_energy(loc).item()
        # the data term is rotation invariant, so the fit of the gram matrices holds
        assert torch.allclose(loc @ loc.mT, gram, atol=0.2)

    # start: sum_t ||X_t - X_{t+1}||^2 with 0.6 rad between neighbours; gauge fixed: ~0
    assert energies[False] > 0.5 * prior.prior_energy(twisted).item()
    assert energies[True] < 0.01 * energies[False]
