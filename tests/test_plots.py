# SPDX-License-Identifier: Apache-2.0
"""Tests of :mod:`pyro_goldstone.plots`: every figure is written and shows its data."""

import numpy as np
import pyro
import pytest
import torch
from matplotlib.figure import Figure

from pyro_goldstone.analysis import similarity_over_time
from pyro_goldstone.plots import (
    plot_similarity_histogram,
    plot_similarity_over_time,
    plot_training_curves,
    plot_trajectory_snapshots,
)


def assert_png(path):
    with open(path, "rb") as f:
        header = f.read(8)
    assert header == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000


def make_runs():
    steps = list(range(0, 201, 20))
    return {
        "gd": {
            "steps": steps,
            "seconds": [0.01 * s for s in steps],
            "loss": [None] + [100.0 / (s + 1) + 1 for s in steps[1:]],
            "prior_energy": [50.0 * np.exp(-s / 500) for s in steps],
        },
        "goldstone-procrustes": {
            "steps": steps,
            "seconds": [0.011 * s for s in steps],
            "loss": [None] + [90.0 / (s + 1) + 1 for s in steps[1:]],
            "prior_energy": [50.0 * np.exp(-s / 20) + 1e-3 for s in steps],
        },
    }


def test_training_curves(tmp_path):
    pyro.set_rng_seed(0)
    runs = make_runs()
    fig = plot_training_curves(runs, tmp_path / "curves.png", title="test")
    assert_png(tmp_path / "curves.png")
    loss_ax, energy_ax = fig.axes
    assert energy_ax.get_yscale() == "log"
    assert [line.get_label() for line in energy_ax.lines] == list(runs)
    # the loss's missing step-0 entry is skipped, not drawn as a zero
    assert len(loss_ax.lines[0].get_xdata()) == len(runs["gd"]["steps"]) - 1
    assert np.allclose(
        energy_ax.lines[1].get_ydata(), runs["goldstone-procrustes"]["prior_energy"]
    )
    assert energy_ax.lines[0].get_linestyle() == "--"


def test_training_curves_options_and_errors(tmp_path):
    pyro.set_rng_seed(1)
    runs = make_runs()
    runs["gd"]["loss"][-1] = -5.0
    fig = plot_training_curves(runs, keys=("loss",), x="seconds")
    assert fig.axes[0].get_yscale() == "linear"
    assert fig.axes[0].get_xlabel() == "seconds"
    with pytest.raises(ValueError, match="run 'gd' lacks the keys \\['test_loglik'\\]"):
        plot_training_curves(runs, keys=("test_loglik",))
    with pytest.raises(ValueError, match="at least one run"):
        plot_training_curves({})


def test_trajectory_snapshots(tmp_path):
    pyro.set_rng_seed(2)
    base = torch.randn(15, 3)
    twisted = torch.stack([base.roll(t % 3, dims=-1) for t in range(8)])
    aligned = base.expand(8, 15, 3) + 0.01 * torch.randn(8, 15, 3)
    snapshots = {
        "gd": [(0, twisted), (50, twisted.numpy())],
        "goldstone-procrustes": [(0, twisted), (50, aligned), (100, aligned)],
    }
    fig = plot_trajectory_snapshots(snapshots, tmp_path / "snap.png", max_vectors=5)
    assert_png(tmp_path / "snap.png")
    panels = [ax for ax in fig.axes if ax.axison]
    assert len(panels) == 5
    # one chain plus two end markers per vector
    assert all(len(ax.lines) == 3 * 5 for ax in panels)
    # every panel shares the same projection and limits
    assert len({ax.get_xlim() for ax in panels}) == 1
    # the aligned chains are short, the twisted ones long
    spans = [np.ptp(ax.lines[0].get_xydata(), axis=0).max() for ax in panels]
    assert spans[-1] < 0.2 * spans[0]


def test_trajectory_snapshots_errors():
    pyro.set_rng_seed(3)
    X = torch.randn(4, 6, 3)
    with pytest.raises(ValueError, match="one shape"):
        plot_trajectory_snapshots({"a": [(0, X)], "b": [(0, X[:, :5])]})
    with pytest.raises(ValueError, match="vectors must be indices below 6"):
        plot_trajectory_snapshots({"a": [(0, X)]}, vectors=[7])
    with pytest.raises(ValueError, match="non-empty"):
        plot_trajectory_snapshots({"a": []})


def test_similarity_histogram(tmp_path):
    pyro.set_rng_seed(4)
    cosines = {
        "adam": torch.rand(200) * 2 - 1,
        "goldstone-natural_gradient": np.append(1 - 0.05 * np.random.rand(199), np.nan),
    }
    fig = plot_similarity_histogram(cosines, tmp_path / "hist.png", bins=20)
    assert_png(tmp_path / "hist.png")
    ax = fig.axes[0]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels[0].startswith("adam (median") and labels[1].endswith("n=199)")
    heights = [patch.get_path().vertices[:, 1].max() for patch in ax.patches]
    assert heights[1] == 199
    with pytest.raises(ValueError, match="bins"):
        plot_similarity_histogram(cosines, bins=0)


def test_similarity_over_time(tmp_path):
    pyro.set_rng_seed(5)
    draws = torch.randn(50, 6, 3, 4)
    with_band = similarity_over_time(draws, 0, 1, times=range(1900, 1960, 10))
    without_band = similarity_over_time(
        draws.mean(0), 0, 2, times=range(1900, 1960, 10)
    )
    curves = {"0 / 1": with_band, "0 / 2": without_band}
    fig = plot_similarity_over_time(curves, tmp_path / "sim.png", xlabel="year")
    assert_png(tmp_path / "sim.png")
    ax = fig.axes[0]
    assert len(ax.collections) == 1
    assert "90% credible interval" in ax.get_title()
    assert np.allclose(ax.lines[0].get_ydata(), with_band["mean"])
    with pytest.raises(ValueError, match="lacks a 'mean' column"):
        plot_similarity_over_time({"bad": {"time": [0], "median": [0.5]}})
    assert isinstance(
        plot_similarity_over_time({"dict": {"time": [0, 1], "mean": [0.2, 0.4]}}),
        Figure,
    )
