# SPDX-License-Identifier: Apache-2.0
"""Tests of the cross-time queries of :mod:`pyro_goldstone.analysis`."""

import math

import numpy as np
import pyro
import pytest
import torch

from pyro_goldstone.analysis import (
    cosine_between_times,
    drift,
    first_last_cosine,
    nearest_neighbours,
    similarity_over_time,
)


def rotation(angle, dtype=torch.float64):
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)


def planted_aging():
    """Five words over three steps with a known neighbourhood structure.

    Word 0 ("car") at the last step points along the same direction as word 2
    ("wagon") at the first step, then word 3 ("boat"), then word 4 ("horse"); word 1
    ("carriage") is the closest of all at the first step but absent there.
    """
    X = torch.zeros(3, 5, 3, dtype=torch.float64)
    X[-1, 0] = torch.tensor([1.0, 0.0, 0.0])
    X[0, 1] = torch.tensor([1.0, 0.01, 0.0])
    X[0, 2] = torch.tensor([2.0, 0.2, 0.0])
    X[0, 3] = torch.tensor([1.0, 0.5, 0.0])
    X[0, 4] = torch.tensor([0.2, 1.0, 0.0])
    X[0, 0] = torch.tensor([-1.0, 0.0, 0.3])
    X[1] = X[0] + 0.1
    X[-1, 1:] = torch.eye(3, dtype=torch.float64)[[1, 2, 1, 2]]
    present = torch.ones(3, 5, dtype=torch.bool)
    present[0, 1] = False
    vocab = ["car", "carriage", "wagon", "boat", "horse"]
    return X, present, vocab


def test_nearest_neighbours_planted():
    pyro.set_rng_seed(0)
    X, present, vocab = planted_aging()
    cos = torch.nn.functional.cosine_similarity(X[-1, 0], X[0], dim=-1)

    found = nearest_neighbours(X, "car", -1, 0, k=3, present=present, vocab=vocab)
    assert [i for i, _ in found] == [2, 3, 4]
    assert [c for _, c in found] == pytest.approx(cos[[2, 3, 4]].tolist())

    # without the mask the absent word (closest by construction) would come first
    unmasked = nearest_neighbours(X, 0, 2, 0, k=1)
    assert unmasked[0][0] == 1


def test_nearest_neighbours_never_returns_absent_words():
    pyro.set_rng_seed(1)
    X = torch.randn(4, 50, 6)
    present = torch.rand(4, 50) < 0.3
    present[3, 7] = True
    found = nearest_neighbours(X, 7, 3, 0, k=50, present=present.numpy())
    assert {i for i, _ in found} == set(present[0].nonzero().flatten().tolist())
    cosines = [c for _, c in found]
    assert cosines == sorted(cosines, reverse=True)


def test_nearest_neighbours_same_time_excludes_query():
    pyro.set_rng_seed(2)
    X = np.random.default_rng(2).normal(size=(3, 10, 4))
    X[1, 4] = 3 * X[1, 6]
    found = nearest_neighbours(X, 6, 1, 1, k=2)
    assert found[0] == (4, pytest.approx(1.0))
    assert all(i != 6 for i, _ in found)
    found = nearest_neighbours(X, 6, 1, 1, k=1, include_query=True)
    assert found[0][0] in (4, 6)


def test_nearest_neighbours_errors():
    pyro.set_rng_seed(3)
    X, present, vocab = planted_aging()
    with pytest.raises(ValueError, match="absent"):
        nearest_neighbours(X, 1, 0, 2, present=present)
    with pytest.raises(ValueError, match="vocab must be given"):
        nearest_neighbours(X, "car", 2, 0)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        nearest_neighbours(X, "bicycle", 2, 0, vocab=vocab)
    with pytest.raises(ValueError, match="t_to=3 is out of range"):
        nearest_neighbours(X, 0, 2, 3)
    with pytest.raises(ValueError, match="present must have shape"):
        nearest_neighbours(X, 0, 2, 0, present=present[:, :4])
    with pytest.raises(TypeError, match="boolean"):
        nearest_neighbours(X, 0, 2, 0, present=present.int())
    with pytest.raises(ValueError, match="shape"):
        nearest_neighbours(X[0], 0, 2, 0)


@pytest.mark.parametrize("kind", ["tensor", "numpy"])
def test_first_last_cosine_undoes_known_rotation(kind):
    pyro.set_rng_seed(4)
    base = torch.randn(20, 3, dtype=torch.float64)
    angles = torch.linspace(0, 2.0, 5)
    X = torch.stack([base @ rotation(float(a)) for a in angles])
    expected = torch.nn.functional.cosine_similarity(base, base @ rotation(2.0), dim=-1)
    result = first_last_cosine(X if kind == "tensor" else X.numpy())
    assert isinstance(result, torch.Tensor if kind == "tensor" else np.ndarray)
    assert result.shape == (20,)
    assert np.allclose(np.asarray(result), expected.numpy())

    # the in-plane part of each vector turns by 2 rad, so the cosine drops below 1
    assert float(np.min(np.asarray(result))) < 0.9


def test_cosine_between_times_samples_and_mask():
    pyro.set_rng_seed(5)
    X = torch.randn(7, 4, 9, 3)
    present = torch.ones(4, 9, dtype=torch.bool)
    present[1, 2] = False
    result = cosine_between_times(X, 1, 3, present=present)
    assert result.shape == (7, 9)
    assert torch.isnan(result[:, 2]).all()
    expected = torch.nn.functional.cosine_similarity(X[:, 1, 5], X[:, 3, 5], dim=-1)
    assert torch.allclose(result[:, 5], expected)


def test_similarity_over_time_band_contains_truth():
    pyro.set_rng_seed(6)
    T, years = 6, list(range(1800, 1860, 10))
    angles = torch.linspace(0.3, 1.5, T, dtype=torch.float64)
    means = torch.zeros(T, 2, 3, dtype=torch.float64)
    means[:, 0, 0] = 1.0
    means[:, 1, 0] = torch.cos(angles)
    means[:, 1, 1] = torch.sin(angles)
    draws = means + 0.05 * torch.randn(400, T, 2, 3, dtype=torch.float64)

    frame = similarity_over_time(draws, "a", "b", times=years, vocab=["a", "b"])
    truth = torch.cos(angles).numpy()
    assert list(frame.index) == years and frame.index.name == "time"
    assert (frame["lower"] < truth).all() and (truth < frame["upper"]).all()
    assert np.allclose(frame["mean"], truth, atol=0.02)
    assert (frame["upper"] - frame["lower"]).max() < 0.3
    assert frame.attrs["level"] == 0.9

    plain = similarity_over_time(means.numpy(), 0, 1)
    assert np.allclose(plain["mean"], truth) and plain["lower"].isna().all()

    present = np.ones((T, 2), dtype=bool)
    present[2, 1] = False
    masked = similarity_over_time(means, 0, 1, present=present)
    assert masked.loc[2].isna().all() and masked.drop(index=2)["mean"].notna().all()


def test_similarity_over_time_errors():
    pyro.set_rng_seed(7)
    X = torch.randn(5, 3, 2)
    with pytest.raises(ValueError, match="times has 4 labels but X has 5"):
        similarity_over_time(X, 0, 1, times=range(4))
    with pytest.raises(ValueError, match="level"):
        similarity_over_time(X, 0, 1, level=1.5)
    with pytest.raises(ValueError, match="second=3 is out of range"):
        similarity_over_time(X, 0, 3)


def test_drift_ranks_planted_movers():
    pyro.set_rng_seed(8)
    X = torch.randn(4, 6, 5)
    X[-1] = X[0]
    X[-1, 2] = -X[0, 2]
    X[-1, 4] = X[0, 4] + 0.5 * torch.randn(5)
    present = torch.ones(4, 6, dtype=torch.bool)
    present[0, 5] = False
    vocab = list("abcdef")

    table = drift(X, vocab=vocab, present=present)
    assert list(table.index[:2]) == ["c", "e"] and table.index[-1] == "f"
    assert table.loc["c", "cosine"] == pytest.approx(-1.0)
    assert table.loc["c", "distance"] == pytest.approx(2 * float(X[0, 2].norm()))
    assert table.loc["c", "relative_distance"] == pytest.approx(2.0)
    assert table.loc[["a", "b", "d"], "distance"].abs().max() < 1e-6
    assert table.loc["f"].isna().all()
    with pytest.raises(ValueError, match="vocab has 5 labels but X has 6"):
        drift(X, vocab=vocab[:5])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_queries_on_cuda():
    pyro.set_rng_seed(9)
    X, present, vocab = planted_aging()
    X, present = X.cuda(), present.cuda()
    found = nearest_neighbours(X, "car", -1, 0, k=3, present=present, vocab=vocab)
    assert [i for i, _ in found] == [2, 3, 4]
    assert first_last_cosine(X, present=present).device.type == "cuda"
    frame = similarity_over_time(X.expand(10, -1, -1, -1), 0, 2, present=present)
    assert frame["mean"].notna().sum() == 2
