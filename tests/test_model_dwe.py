# SPDX-License-Identifier: Apache-2.0
"""Smoke test of ``python -m models.dwe`` and checks of its model."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from models import dwe
from pyro_goldstone.data.cooccurrence import count_cooccurrences, negative_counts

# the toy corpus of test_cooccurrence.py: vocabulary [c, a, b], two decades
TOY = pd.DataFrame({"year": [1990, 1995, 2003], "text": ["A b, a c.", "b c", "c c a"]})


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("dwe")
    metrics = dwe.main(["--smoke", "--out", str(out), "--no-progress"])
    return out, metrics


def test_smoke_layout(smoke):
    out, metrics = smoke
    for name in (
        "metrics.json",
        "summary.md",
        "aging.json",
        "aging.md",
        "similarity_histogram.png",
        "training_curves.png",
        "embeddings-adam.npz",
        "embeddings-goldstone-natural_gradient.npz",
    ):
        assert (out / name).is_file(), name
    written = json.loads((out / "metrics.json").read_text())
    assert written["model"] == "dwe"
    assert set(written["runs"]) == {"adam", "goldstone-natural_gradient"}
    for run in written["runs"].values():
        assert len(run["steps"]) == len(run["loss"]) == len(run["prior_energy"])
        assert run["steps"][-1] == written["config"]["num_steps"]
        assert math.isfinite(run["test_loglik"]) and run["test_loglik"] < 0
        assert -1 <= run["median_first_last_cosine"] <= 1
        assert run["seconds_per_step"] > 0
    assert written["runs"]["goldstone-natural_gradient"]["gauge_phases"] > 0


def test_smoke_aging_table(smoke):
    out, metrics = smoke
    aging = json.loads((out / "aging.json").read_text())
    queries = metrics["config"]["queries"]
    assert set(aging) == {"adam", "goldstone-natural_gradient"}
    for lists in aging.values():
        assert list(lists) == queries
        for words in lists.values():
            assert len(words) == 5 and len(set(words)) == 5
    markdown = (out / "aging.md").read_text()
    assert all(query in markdown for query in queries)


def test_smoke_embeddings_file(smoke):
    out, metrics = smoke
    saved = np.load(out / "embeddings-goldstone-natural_gradient.npz")
    T, V = len(saved["bin_labels"]), len(saved["vocabulary"])
    assert V == metrics["config"]["vocab_size"]
    assert saved["U_loc"].shape == (T, V, metrics["config"]["dim"])
    assert saved["V_scale"].shape == saved["U_loc"].shape
    assert (saved["V_scale"] > 0).all()
    assert saved["present"].shape == (T, V)


def _toy_model(word_batch, context_batch):
    counts = count_cooccurrences(TOY, vocab_size=10, min_count=1, window=2)
    return dwe.DynamicWordEmbeddings(
        counts,
        dim=2,
        diffusion=0.1,
        sigma0=1.0,
        word_batch=word_batch,
        context_batch=context_batch,
    )


def test_full_batch_loss_is_the_negative_elbo():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = _toy_model(3, 3)
    model.guide_u.params()
    model.guide_v.params()
    for name in ("U_scale", "V_scale"):
        # near-zero scales make the ELBO's sample the mean
        pyro.get_param_store()[name] = torch.full((2, 3, 2), 1e-6)
    loss = TraceMeanField_ELBO().loss(model.model, model.guide)

    U, V = model.means()
    logits = U @ V.transpose(-1, -2)
    counts = model.counts
    positive = torch.stack([torch.as_tensor(m.toarray()) for m in counts.positive])
    negative = negative_counts(counts.unigram, eta=model.eta)
    loglik = positive * torch.nn.functional.logsigmoid(logits)
    loglik = loglik + negative * torch.nn.functional.logsigmoid(-logits)
    kl = sum(
        torch.distributions.kl_divergence(
            pyro.distributions.Normal(loc, pyro.param(f"{site}_scale")).to_event(3),
            model._prior(3),
        )
        for site, loc in (("U", U), ("V", V))
    )
    assert loss == pytest.approx(float((kl - loglik.sum()).detach()), rel=1e-4)


def test_minibatch_loss_is_unbiased():
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    full = _toy_model(3, 3)
    full.guide_u.params()
    full.guide_v.params()
    elbo = TraceMeanField_ELBO()
    exact = np.mean([elbo.loss(full.model, full.guide) for _ in range(200)])
    small = _toy_model(2, 1)
    estimate = np.mean([elbo.loss(small.model, small.guide) for _ in range(3000)])
    assert estimate == pytest.approx(exact, rel=0.05)


def test_unknown_query_is_rejected_before_training(tmp_path):
    with pytest.raises(ValueError, match="not in the vocabulary"):
        dwe.main(["--smoke", "--out", str(tmp_path), "--queries", "zeppelinxyz"])
