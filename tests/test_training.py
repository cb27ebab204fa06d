# SPDX-License-Identifier: Apache-2.0
import json
import os

import pytest
import torch

from pyro_goldstone.coupling import Coupling
from pyro_goldstone.gauge import prior_energy
from pyro_goldstone.training import (
    add_convergence,
    aligned_energy,
    convergence_table,
    first_step_within,
    table_markdown,
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
    # passing through the band is not converging: it must hold to the end
    assert first_step_within([0, 1, 2, 3], [0.1, 1.0, 3.0, 1.0], 1.0) == 3
    assert first_step_within([0, 1, 2], [1.0, 1.0, 1.5], 1.0) is None
    assert first_step_within([0, 1, 2], [None, 1.0, 1.001], 1.0) == 1
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


def test_steps_to_aligned_needs_the_excess_to_stay_small():
    run = {
        "steps": [0, 10, 20, 30, 40],
        "seconds": [0.0, 1.0, 2.0, 3.0, 4.0],
        "prior_energy": [50.0, 10.0, 30.0, 10.05, 10.0],
        "aligned_energy": [10.0, 10.0, 10.0, 10.0, 10.0],
    }
    add_convergence(run, 10.0)
    # within 1% at step 10, but a Goldstone mode came back at step 20
    assert run["steps_to_aligned"] == 30 and run["seconds_to_aligned"] == 3.0
    run["prior_energy"][-1] = 12.0
    assert add_convergence(run, 10.0)["steps_to_aligned"] is None
    assert "steps to aligned" in convergence_table({"adam": run}).columns
    del run["aligned_energy"], run["steps_to_aligned"]
    run.update(final_loss=1.0, seconds_per_step=0.1)
    assert "steps to aligned" not in convergence_table({"adam": run}).columns


def test_aligned_energy_is_the_minimum_over_rotations():
    generator = torch.Generator().manual_seed(0)
    Y = torch.randn(7, 3, dtype=torch.float64, generator=generator)
    Q = torch.linalg.qr(torch.randn(5, 3, 3, dtype=torch.float64, generator=generator))[
        0
    ]
    coupling = Coupling.chain(5, 2.0)
    X = Y @ Q  # every step a rotation or reflection of one matrix
    assert prior_energy(X, coupling) > 1.0
    assert aligned_energy(X, coupling) == pytest.approx(0.0, abs=1e-10)
    noisy = X + 0.1 * torch.randn(X.shape, dtype=torch.float64, generator=generator)
    assert 0.0 < aligned_energy(noisy, coupling) < float(prior_energy(noisy, coupling))


def test_table_markdown_marks_what_never_happened():
    never = add_convergence(_decaying_run("adam", 0.99), 1.0)
    reached = add_convergence(_decaying_run("goldstone-procrustes", 0.1), 1.0)
    text = table_markdown(convergence_table({"adam": never, "goldstone": reached}))
    assert "nan" not in text and "–" in text
    # no baseline reached the threshold: no ratio columns
    assert "step ratio" not in text and "time ratio" not in text
    both = {"gd": add_convergence(_decaying_run("gd", 0.5), 1.0), "goldstone": reached}
    assert "step ratio" in table_markdown(convergence_table(both))


def test_written_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = tmp_path / "metrics.json"
        write_metrics(
            str(path), "m", {}, {"adam": add_convergence(_decaying_run("a", 0.5), 1.0)}
        )
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    good = {"adam": add_convergence(_decaying_run("a", 0.5), 1.0)}
    write_metrics(str(path), "m", {}, good)
    before = path.read_text()
    with pytest.raises(TypeError):
        # json.dump falls back to str(), which fails halfway through the file
        write_metrics(str(path), "m", {"bad": BadJson()}, good)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


class BadJson:
    def __str__(self):
        raise TypeError("cannot be written")
