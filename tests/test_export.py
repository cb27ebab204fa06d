# SPDX-License-Identifier: Apache-2.0
"""Tests of :mod:`pyro_goldstone.export`: InferenceData layout and word2vec files."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from pyro_goldstone.analysis import nearest_neighbours, similarity_over_time
from pyro_goldstone.export import export_word2vec, to_inference_data, write_word2vec

T, N, M, D = 4, 5, 3, 2
YEARS = [1990, 2000, 2010, 2020]
WORDS = ["apple", "boat", "car", "dog", "elm"]


def model(subsample_size=None):
    with pyro.plate("words", N, subsample_size=subsample_size, dim=-1):
        U = pyro.sample("U", dist.Normal(0.0, 1.0).expand([T, 1, D]).to_event(1))
    pyro.sample("V", dist.Normal(torch.zeros(T, M, D), 1.0).to_event(3))
    pyro.deterministic("norms", U.norm(dim=-1))
    pyro.sample("y", dist.Normal(U.sum(), 1.0), obs=torch.tensor(0.5))


def guide(subsample_size=None):
    U_loc = pyro.param("U_loc", lambda: torch.randn(T, N, D))
    U_scale = pyro.param(
        "U_scale", lambda: torch.full((T, N, D), 0.05), constraint=constraints.positive
    )
    V_loc = pyro.param("V_loc", lambda: torch.randn(T, M, D))
    with pyro.plate("words", N, subsample_size=subsample_size, dim=-1) as index:
        pyro.sample("U", dist.Normal(U_loc[:, index], U_scale[:, index]).to_event(1))
    pyro.sample("V", dist.Normal(V_loc, 0.05).to_event(3))


SITES = {"U": ("time", "word", "dim"), "V": ("time", "item", "dim")}
COORDS = {"time": YEARS, "word": WORDS, "item": [101, 205, 307]}


def test_inference_data_layout():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    idata = to_inference_data(
        guide,
        num_samples=100,
        sites={**SITES, "norms": ("time", "word")},
        coords=COORDS,
        model=model,
    )
    assert set(idata.groups()) == {"posterior", "posterior_means"}
    post = idata.posterior
    assert post["U"].dims == ("chain", "draw", "time", "word", "dim")
    assert post["U"].shape == (1, 100, T, N, D)
    assert post["V"].shape == (1, 100, T, M, D)
    assert list(post["time"].values) == YEARS
    assert list(post["word"].values) == WORDS
    assert list(post["item"].values) == [101, 205, 307]
    assert list(post["dim"].values) == [0, 1]
    assert post.attrs["num_samples"] == 100

    # the means come from the guide's loc parameters, and the draws scatter around them
    U_loc = pyro.param("U_loc").detach().numpy()
    means = idata.posterior_means
    assert means["U"].dims == ("time", "word", "dim")
    assert np.array_equal(means["U"].values, U_loc)
    assert np.allclose(post["U"].mean(("chain", "draw")).values, U_loc, atol=0.03)
    assert float(post["U"].std(("chain", "draw")).mean()) == pytest.approx(
        0.05, rel=0.1
    )
    assert float(means["U"].sel(time=2010, word="car", dim=1)) == U_loc[2, 2, 1]

    # a derived site of the model is computed from the same draw
    norms = np.linalg.norm(post["U"].values, axis=-1)
    assert np.allclose(post["norms"].values, norms, rtol=1e-5)
    assert np.allclose(means["norms"].values, norms.mean((0, 1)), rtol=1e-5)


def test_inference_data_means_override_and_default_coords():
    pyro.set_rng_seed(1)
    pyro.clear_param_store()
    override = torch.zeros(T, M, D)
    idata = to_inference_data(
        guide,
        num_samples=3,
        sites={"V": ("time", "item", "dim")},
        means={"V": override},
    )
    assert list(idata.posterior["time"].values) == list(range(T))
    assert np.array_equal(idata.posterior_means["V"].values, override.numpy())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"coords": {**COORDS, "word": WORDS[:4]}},
            "coords\\['word'\\] has 4 labels but dimension 'word' has size 5",
        ),
        (
            {
                "sites": {"U": ("time", "word", "dim"), "V": ("time", "word", "dim")},
                "coords": {"time": YEARS},
            },
            "dimension 'word' has size 5 in site 'U' but 3 in site 'V'",
        ),
        ({"sites": {"U": ("time", "word")}}, "shape \\(4, 5, 2\\) but sites names 2"),
        (
            {"sites": {"W": ("time",)}, "coords": {}},
            "site 'W' is not a sample site of the guide",
        ),
        ({"sites": {"U": ("draw", "word", "dim")}}, "distinct dimensions"),
        ({"coords": {"year": YEARS}}, "coords names dimensions \\['year'\\]"),
        ({"num_samples": 0}, "num_samples must be positive"),
        ({"model_kwargs": {"subsample_size": 2}}, "site 'U' is subsampled by plate"),
        ({"means": {"U": np.zeros((T, N))}}, "means\\['U'\\] has shape \\(4, 5\\)"),
        ({"model": model, "sites": {"y": ()}, "coords": {}}, "site 'y' is observed"),
    ],
)
def test_inference_data_errors(kwargs, message):
    pyro.set_rng_seed(2)
    pyro.clear_param_store()
    coords = {"time": YEARS, "word": WORDS}
    options = {"num_samples": 2, "sites": SITES, "coords": coords, **kwargs}
    with pytest.raises(ValueError, match=message):
        to_inference_data(guide, **options)


def read_word2vec(path):
    """A small independent parser of the word2vec text format."""
    with open(path, encoding="utf-8") as f:
        count, dim = map(int, f.readline().split(" "))
        rows = [line.rstrip("\n").split(" ") for line in f]
    assert len(rows) == count and all(len(row) == dim + 1 for row in rows)
    return [row[0] for row in rows], np.array([row[1:] for row in rows], dtype=float)


def test_export_word2vec_round_trip(tmp_path):
    pyro.set_rng_seed(3)
    X = torch.randn(T, N, D, dtype=torch.float64)
    present = np.ones((T, N), dtype=bool)
    present[0, [1, 3]] = False
    vocab = ["é", *WORDS[1:]]

    paths = export_word2vec(X, vocab, tmp_path / "w2v", times=YEARS, present=present)
    assert [p.rsplit("/", 1)[-1] for p in paths] == [f"vectors_{y}.txt" for y in YEARS]
    words, vectors = read_word2vec(paths[0])
    assert words == ["é", "car", "elm"]
    assert np.allclose(vectors, X[0, [0, 2, 4]].numpy(), rtol=1e-5)
    words, vectors = read_word2vec(paths[-1])
    assert words == vocab
    assert np.allclose(vectors, X[-1].numpy(), rtol=1e-5)


def test_write_word2vec_precision_and_errors(tmp_path):
    pyro.set_rng_seed(4)
    path = tmp_path / "one.txt"
    write_word2vec(
        path, np.array([[1 / 3, -2e-7], [1e5, 0.5]]), ["a", "b"], precision=3
    )
    assert path.read_text().splitlines() == ["2 2", "a 0.333 -2e-07", "b 1e+05 0.5"]
    with pytest.raises(ValueError, match="word 1 \\('new york'\\)"):
        write_word2vec(path, np.zeros((2, 3)), ["a", "new york"])
    with pytest.raises(ValueError, match="word 'a' occurs twice"):
        write_word2vec(path, np.zeros((2, 3)), ["a", "a"])
    with pytest.raises(ValueError, match="words has 1 entries but vectors has 2"):
        write_word2vec(path, np.zeros((2, 3)), ["a"])
    with pytest.raises(ValueError, match="times has 2 labels but X has 4 steps"):
        export_word2vec(np.zeros((T, N, D)), WORDS, tmp_path, times=[1, 2])
    with pytest.raises(ValueError, match="present must be a boolean mask"):
        export_word2vec(np.zeros((T, N, D)), WORDS, tmp_path, present=np.ones((T, N)))


def test_inference_data_feeds_the_queries():
    pyro.set_rng_seed(5)
    pyro.clear_param_store()
    idata = to_inference_data(guide, num_samples=50, sites=SITES, coords=COORDS)
    U_loc = pyro.param("U_loc").detach()

    # an xarray DataArray of means and the (S, T, N, d) draws go straight in
    found = nearest_neighbours(idata.posterior_means["U"], "car", -1, 0, vocab=WORDS)
    assert found == nearest_neighbours(U_loc, "car", -1, 0, vocab=WORDS)
    draws = idata.posterior["U"].isel(chain=0).values
    frame = similarity_over_time(draws, "car", "dog", times=YEARS, vocab=WORDS)
    assert list(frame.index) == YEARS
    assert (frame["lower"] <= frame["mean"]).all()
    assert (frame["mean"] <= frame["upper"]).all()
