# SPDX-License-Identifier: Apache-2.0
"""Tests of the dynamic Bernoulli factorisation command (issue 6)."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.optim import Adagrad

from models.bernoulli_mf import BernoulliMF, auc, main
from pyro_goldstone.data.movielens import load_ratings, preprocess
from pyro_goldstone.training import validate_metrics

SMOKE = ["--smoke", "--no-progress", "--num-threads", "1", "--log-level", "WARNING"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bernoulli_mf")
    metrics = main([*SMOKE, "--out", str(out)])
    return out, metrics


def test_smoke_writes_metrics_figures_and_summary(smoke):
    out, metrics = smoke
    with open(out / "metrics.json") as f:
        written = json.load(f)
    validate_metrics(written)
    assert written["model"] == "bernoulli_mf"
    assert set(written["runs"]) == {"adagrad", "goldstone-natural_gradient"}
    assert written["config"]["smoke"] is True
    for run in written["runs"].values():
        assert 0.0 < run["test_auc"] < 1.0
        assert np.isfinite(run["test_loglik"]) and run["test_loglik"] < 0.0
        assert run["steps"][-1] == written["config"]["num_steps"]
        assert all(np.isfinite(e) and e >= 0 for e in run["prior_energy"])
        assert run["steps_to_1pct"] is not None and run["seconds_per_step"] > 0
    assert written["runs"]["goldstone-natural_gradient"]["gauge_phases"] > 0
    for name in ("training_curves.png", "training_curves_seconds.png"):
        with open(out / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "goldstone-natural_gradient" in (out / "summary.md").read_text()


def test_same_seed_same_metrics(smoke):
    _, first = smoke
    with tempfile.TemporaryDirectory() as out:
        again = main([*SMOKE, "--out", out])

    def strip(metrics):
        return {
            # wall times differ between runs; everything else must not
            label: {k: v for k, v in run.items() if not k.startswith("seconds")}
            for label, run in metrics["runs"].items()
        }

    assert strip(again) == strip(first)


# ----- the model itself, on a tiny data set -----


@pytest.fixture
def tiny():
    rng = np.random.default_rng(0)
    rows = [
        (u, i, float(rng.integers(1, 6)), int(t))
        for u, i, t in zip(
            rng.integers(1, 9, 120),
            rng.integers(1, 15, 120),
            rng.integers(0, 1000, 120),
        )
    ]
    rows.append((99, 3, 5.0, 2000))  # a cold-start user, the latest rating
    rows.append((1, 3, 1.0, 4000))  # nothing between 2000 and 4000: empty bins
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "ratings.csv")
        with open(path, "w") as f:
            f.write("userId,movieId,rating,timestamp\n")
            f.writelines(f"{u},{i},{r},{t}\n" for u, i, r, t in rows)
        ratings = load_ratings(path)
    data = preprocess(
        ratings, num_bins=8, time_cut=True, fractions=(0.9, 0.0, 0.1), ties="positive"
    )
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    return data, BernoulliMF(data, dim=3, strength=5.0, sigma0=1.0)


def test_likelihood_scaled_by_float_ratio(tiny):
    data, mf = tiny
    batch = torch.tensor([0, 4, 5])
    guide_trace = pyro.poutine.trace(mf.guide).get_trace(batch)
    model_trace = pyro.poutine.trace(
        pyro.poutine.replay(mf.model, trace=guide_trace)
    ).get_trace(batch)
    model_trace.compute_log_prob()
    site = model_trace.nodes["y"]
    assert site["scale"] == pytest.approx(mf.num_train / 3)
    assert isinstance(site["scale"], float) and mf.num_train % 3 != 0
    user, item, time_bin, label = mf.splits["train"]
    U, V = guide_trace.nodes["U"]["value"], guide_trace.nodes["V"]["value"]
    logits = (U[time_bin, user] * V[time_bin, item]).sum(-1)[batch]
    expected = torch.nn.functional.logsigmoid(label[batch] * logits).sum().detach()
    scaled = float(site["log_prob_sum"].detach())
    assert scaled == pytest.approx(mf.num_train / 3 * float(expected), rel=1e-5)


def test_cold_start_and_empty_bins_get_predictions(tiny):
    data, mf = tiny
    svi = SVI(mf.model, mf.guide, Adagrad({"lr": 0.1}), TraceMeanField_ELBO())
    for _ in range(30):
        svi.step(torch.randint(mf.num_train, (16,)))
    counts = data.bin_counts().sum(axis=1).to_numpy()
    assert (counts == 0).any()
    cold = int(np.flatnonzero(data.users["userId"] == 99)[0])
    assert cold not in set(data.train["user"]) and cold in set(data.test["user"])
    logits, label = mf.logits("test")
    assert torch.isfinite(logits).all() and len(logits) == len(data.test)
    result = mf.evaluate("test")
    assert np.isfinite(result["loglik"])
    U = mf.means()[0].detach()
    empty = int(np.flatnonzero(counts == 0)[0])
    # the prior carries an empty bin: its means lie between its neighbours'
    assert torch.isfinite(U).all() and float(U[empty].abs().sum()) > 0


def test_auc_matches_pair_count():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    positive = rng.random(200) < 0.4
    pos, neg = scores[positive], scores[~positive]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg).sum()
    assert auc(scores, positive) == pytest.approx(pairs / (len(pos) * len(neg)))
    assert auc([0.1, 0.2, 0.9], [False, False, True]) == 1.0
    assert auc([0.9, 0.2, 0.1], [True, False, False]) == 1.0
    assert auc([0.9, 0.2, 0.1], [False, True, True]) == 0.0
    assert np.isnan(auc([0.1, 0.2], [True, True]))
    with pytest.raises(ValueError, match="1-D"):
        auc([0.1, 0.2], [True])


def test_bad_arguments():
    with pytest.raises(ValueError, match="--dim"):
        main([*SMOKE, "--dim", "0", "--out", "unused"])
    with pytest.raises(TypeError, match="BinaryRatings"):
        BernoulliMF("ratings")
