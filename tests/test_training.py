# SPDX-License-Identifier: Apache-2.0
import json

import pytest

from pyro_goldstone.training import (
    add_convergence,
    convergence_table,
    first_step_within,
    train,
    validate_metrics,
    write_metrics,
)


def _decaying_run(label, rate, num_steps=50):
    state = {"energy": 100.0}

    def step(i):
        state["energy"] *= rate
        return 10.0 + state["energy"]

    return train(
        step,
        num_steps,
        energy=lambda: state["energy"] + 1.0,
        record_every=5,
        label=label,
        progress=False,
    )


def test_train_records_aligned_lists():
    run = _decaying_run("gd", 0.9, num_steps=23)
    assert run["steps"] == [0, 5, 10, 15, 20, 23]
    assert len(run["loss"]) == len(run["prior_energy"]) == len(run["seconds"]) == 6
    assert run["loss"][0] is None
    assert run["prior_energy"][0] == pytest.approx(101.0)
    assert run["prior_energy"][-1] == pytest.approx(100.0 * 0.9**23 + 1.0)
    # the final loss averages the last 5% of the steps (here the single last one)
    assert run["final_loss"] == pytest.approx(10.0 + 100.0 * 0.9**23)
    assert run["seconds"] == sorted(run["seconds"])


def test_train_stops_on_non_finite_loss():
    with pytest.raises(FloatingPointError, match="step 3"):
        train(
            lambda i: float("nan") if i == 2 else 1.0,
            5,
            energy=lambda: 0.0,
            progress=False,
        )


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_train_rejects_bad_num_steps(bad):
    with pytest.raises(ValueError, match="num_steps"):
        train(lambda i: 0.0, bad, energy=lambda: 0.0, progress=False)


def test_first_step_within():
    assert first_step_within([0, 1, 2, 3], [5.0, 1.5, 1.005, 1.0], 1.0) == 2
    assert first_step_within([0, 1], [5.0, 2.0], 1.0) is None
    with pytest.raises(ValueError, match="align"):
        first_step_within([0, 1], [1.0], 1.0)


def test_convergence_table_ratios():
    runs = {
        "gd": add_convergence(_decaying_run("gd", 0.8), 1.0),
        "adam": add_convergence(_decaying_run("adam", 0.7), 1.0),
        "goldstone-procrustes": add_convergence(_decaying_run("g", 0.1), 1.0),
    }
    assert runs["gd"]["steps_to_1pct"] == 45
    # within 1% of 1.0 once 100 * rate**n <= 0.01
    assert runs["adam"]["steps_to_1pct"] == 30
    assert runs["goldstone-procrustes"]["steps_to_1pct"] == 5
    table = convergence_table(runs)
    assert table.attrs["best_baseline"] == "adam"
    assert table.loc["goldstone-procrustes", "step ratio"] == pytest.approx(6.0)
    assert table.loc["gd", "step ratio"] == pytest.approx(30 / 45)


def test_write_metrics_round_trip(tmp_path):
    run = add_convergence(_decaying_run("adam", 0.8), 1.0)
    path = tmp_path / "out" / "metrics.json"
    write_metrics(str(path), "toy", {"seed": 0}, {"adam": run})
    loaded = json.loads(path.read_text())
    validate_metrics(loaded)
    assert loaded["runs"]["adam"]["steps"] == run["steps"]
    assert not list(path.parent.glob("*.tmp"))


def test_write_metrics_rejects_missing_keys(tmp_path):
    path = tmp_path / "metrics.json"
    with pytest.raises(ValueError, match="lacks the keys"):
        write_metrics(str(path), "toy", {}, {"adam": {"steps": [0]}})
    assert not path.exists()
