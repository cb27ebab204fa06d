# SPDX-License-Identifier: Apache-2.0
"""``python -m benchmarks.compare --smoke``: every row present, ratios finite."""

from __future__ import annotations

import json
import math

import pytest

import benchmarks.compare as compare
from benchmarks.compare import alternatives
from benchmarks.compare.report import BASELINES, ROWS

RATIOS = [
    f"{unit}_to_{key}_ratio{bound}"
    for unit in ("steps", "seconds")
    for key in ("1pct", "aligned")
    for bound in ("", "_lower_bound")
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    results = compare.main(["--smoke", "--out", str(out), "--no-progress"])
    return out, results


def _reject_constant(name):
    raise ValueError(f"results.json holds {name}")


def test_files(smoke):
    out, results = smoke
    written = json.loads(
        (out / "results.json").read_text(), parse_constant=_reject_constant
    )
    assert set(written["models"]) == {"dynamic_mf", "movielens", "dwe"}
    markdown = (out / "results.md").read_text()
    for name, model in written["models"].items():
        assert f"## {name}" in markdown
        assert model["table"] in markdown
    assert "Word aging" in markdown


def test_every_row_present(smoke):
    _, results = smoke
    for name, model in results["models"].items():
        rows = model["rows"]
        assert list(rows) == list(ROWS), name
        assert model["best_baseline"] in BASELINES
        assert rows[model["best_baseline"]]["status"] == "ok"
        for label, row in rows.items():
            assert row["status"] in ("ok", "skipped", "failed"), (name, label)
            if row["status"] != "ok":
                assert row["reason"], (name, label)
        expected = "skipped" if alternatives.geoopt is None else "ok"
        assert rows["riemannian-adam"]["status"] == expected


def test_figures_finite_where_defined(smoke):
    _, results = smoke
    for name, model in results["models"].items():
        reference = model["reference_prior_energy"]
        assert math.isfinite(reference) and reference > 0, name
        for label, row in model["rows"].items():
            if row["status"] != "ok":
                continue
            where = (name, label)
            assert math.isfinite(row["final_prior_energy"]), where
            assert math.isfinite(row["energy_ratio"]), where
            for key in RATIOS:
                value = row[key]
                assert value is None or (math.isfinite(value) and value > 0), where
            if label == "posthoc-procrustes":
                assert row["steps_to_1pct"] is None
                assert row["alignment_seconds"] > 0
            else:
                assert row["seconds_per_step"] > 0, where
                assert math.isfinite(row["final_loss"]), where
            if name != "dynamic_mf":
                assert math.isfinite(row["test_loglik"]), where
        best = model["rows"][model["best_baseline"]]
        if best["steps_to_1pct"] is not None:
            assert best["steps_to_1pct_ratio"] == 1


def test_post_hoc_alignment_lowers_energy(smoke):
    _, results = smoke
    for name, model in results["models"].items():
        post = model["runs"]["posthoc-procrustes"]
        assert post["energy_after"] <= post["energy_before"] * (1 + 1e-6), name
        assert post["aligned_from"] == model["best_baseline"]
    dwe = results["models"]["dwe"]
    queries = dwe["config"]["queries"]
    for label, run in dwe["runs"].items():
        assert set(run["aging"]) == set(queries), label


def test_missing_geoopt_skips_the_row(tmp_path, monkeypatch):
    monkeypatch.setattr(alternatives, "geoopt", None)
    argv = ["--smoke", "--out", str(tmp_path), "--no-progress"]
    argv += ["--models", "dynamic_mf", "--rows", "adam", "riemannian-adam"]
    results = compare.main(argv)
    rows = results["models"]["dynamic_mf"]["rows"]
    assert list(rows) == ["adam", "riemannian-adam"]
    assert rows["riemannian-adam"] == {
        "status": "skipped",
        "reason": "geoopt is not installed",
    }


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--lr", "movielens.adam"], "--lr"),
        (["--lr", "nowhere.adam=0.1"], "--lr"),
        (["--lr", "dwe.gd=-1"], "--lr"),
        (["--mf-steps", "0"], "--mf-steps"),
        (["--riemannian-lr", "0"], "--riemannian-lr"),
        (["--rows", "dctadam", "goldstone-procrustes"], "--rows"),
    ],
)
def test_bad_options(tmp_path, argv, option):
    with pytest.raises(ValueError, match=option):
        compare.main(["--smoke", "--out", str(tmp_path), *argv])
