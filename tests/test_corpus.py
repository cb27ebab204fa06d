# SPDX-License-Identifier: Apache-2.0
"""Tests of the corpus loaders, the tokeniser, the vocabulary and the time bins."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from pyro_goldstone.data.corpus import (
    NUMBER_TOKEN,
    assign_bins,
    build_vocabulary,
    check_documents,
    load_corpus,
    load_csv,
    load_text_folder,
    tokenize,
)

# ----- tokenisation -----


def test_tokenize_rule():
    text = "Don't STOP\u2014the U.S. had 1,000.5 men\u2019s-rights; 42 e-mails!"
    assert tokenize(text) == [
        "don't",
        "stop",
        "the",
        "u",
        "s",
        "had",
        "men's",
        "rights",
        "e",
        "mails",
    ]
    with_numbers = tokenize(text, numbers="token")
    assert with_numbers.count(NUMBER_TOKEN) == 2
    assert with_numbers[6] == NUMBER_TOKEN  # "1,000.5" is one number


def test_tokenize_rejects_unknown_number_rule():
    with pytest.raises(ValueError, match="numbers"):
        tokenize("a b", numbers="keep")


# ----- vocabulary -----


def test_vocabulary_most_frequent_with_alphabetical_ties():
    counts = {"the": 10, "of": 7, "and": 7, "war": 3, "peace": 2, "navy": 1}
    assert build_vocabulary(counts, 3) == ["the", "and", "of"]
    assert build_vocabulary(counts, 100, min_count=3) == ["the", "and", "of", "war"]


def test_vocabulary_from_token_lists():
    documents = [["b", "a", "b"], ["c", "b", "a"]]
    assert build_vocabulary(documents, 2) == ["b", "a"]


@pytest.mark.parametrize("size, min_count", [(0, 1), (2, 0), (2.5, 1), (True, 1)])
def test_vocabulary_rejects_bad_sizes(size, min_count):
    with pytest.raises(ValueError):
        build_vocabulary({"a": 3}, size, min_count=min_count)


def test_vocabulary_rejects_when_no_word_qualifies():
    with pytest.raises(ValueError, match="min_count=5"):
        build_vocabulary({"a": 3, "b": 4}, 10, min_count=5)


# ----- time bins -----


def test_decade_bins():
    years = [1799, 1790, 1805, 1823, 1829]
    tokens = [10, 30, 5, 1, 3]
    bins = assign_bins(years, width=10, num_tokens=tokens)
    # the 1810s are empty and dropped
    assert bins.labels == ["1790-1799", "1800-1809", "1820-1829"]
    np.testing.assert_array_equal(bins.index, [0, 0, 1, 2, 2])
    np.testing.assert_array_equal(bins.start, [1790, 1800, 1820])
    np.testing.assert_array_equal(bins.end, [1799, 1809, 1829])
    # token-weighted mean year of each bin
    expected = [(1799 * 10 + 1790 * 30) / 40, 1805, (1823 + 1829 * 3) / 4]
    np.testing.assert_allclose(bins.times, expected)


def test_equal_count_bins_keep_years_together():
    years = [2000, 2000, 2001, 2002, 2003, 2003]
    tokens = [10, 10, 20, 20, 10, 10]  # 20 tokens a year
    bins = assign_bins(years, num_bins=2, num_tokens=tokens)
    np.testing.assert_array_equal(bins.index, [0, 0, 0, 1, 1, 1])
    assert bins.labels == ["2000-2001", "2002-2003"]
    mass = np.bincount(bins.index, weights=tokens)
    np.testing.assert_array_equal(mass, [40, 40])


def test_equal_count_bins_uneven_tokens():
    years = np.arange(1900, 1910)
    tokens = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 9])
    bins = assign_bins(years, num_bins=2, num_tokens=tokens)
    # the last year alone holds half of the tokens
    assert bins.labels == ["1900-1908", "1909"]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"width": 10, "num_bins": 3}, {"width": 0}, {"width": -5}, {"num_bins": 0}],
)
def test_bins_reject_bad_options(kwargs):
    with pytest.raises(ValueError):
        assign_bins([1990, 2000], **kwargs)


def test_bins_reject_empty_corpus():
    with pytest.raises(ValueError, match="no documents"):
        assign_bins([], width=10)


# ----- loading and bad input -----


def test_check_documents_rejects_empty_corpus():
    with pytest.raises(ValueError, match="empty"):
        check_documents(pd.DataFrame({"year": [], "text": []}))


def test_check_documents_rejects_missing_year():
    frame = pd.DataFrame({"year": [1990, None], "text": ["a", "b"]})
    with pytest.raises(ValueError, match=r"documents\[1\] has no valid year"):
        check_documents(frame)


def test_check_documents_rejects_missing_column():
    with pytest.raises(ValueError, match="year"):
        check_documents(pd.DataFrame({"text": ["a"]}))


def test_load_csv_with_years_and_dates(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text('year,text\n1990,hello world\n1991,"a, b"\n', encoding="utf-8")
    frame = load_csv(path)
    assert frame["year"].tolist() == [1990.0, 1991.0]
    assert frame["text"].tolist() == ["hello world", "a, b"]

    dated = tmp_path / "dated.csv"
    dated.write_text("date,text\n2001-07-02,x\n", encoding="utf-8")
    year = load_csv(dated)["year"][0]
    assert year == pytest.approx(2001 + 182 / 365)


def test_load_csv_names_the_row_without_a_year(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("year,text\n1990,a\n,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"corpus\.csv, row 1 has no valid year"):
        load_csv(path)


def test_load_csv_undecodable_names_the_file(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"year,text\n1990,caf\xe9\n")
    with pytest.raises(ValueError, match=r"bad\.csv: cannot decode"):
        load_csv(path)


def test_load_csv_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_csv(path)


def test_load_text_folder_years_from_names_and_table(tmp_path):
    (tmp_path / "1862_lincoln.txt").write_text("Fellow citizens", encoding="utf-8")
    (tmp_path / "speech-1933.txt").write_text("Fear itself", encoding="utf-8")
    frame = load_text_folder(tmp_path)
    assert frame["year"].tolist() == [1862.0, 1933.0]
    assert frame["source"].str.endswith("1862_lincoln.txt")[0]

    table = {"1862_lincoln.txt": 1862.5, "speech-1933.txt": 1933}
    assert load_text_folder(tmp_path, years=table)["year"].tolist() == [1862.5, 1933]
    assert load_corpus(str(tmp_path))["text"][1] == "Fear itself"


def test_load_text_folder_file_without_a_year(tmp_path):
    (tmp_path / "1862.txt").write_text("a", encoding="utf-8")
    (tmp_path / "undated.txt").write_text("b", encoding="utf-8")
    with pytest.raises(ValueError, match=r"undated\.txt: no four-digit year"):
        load_text_folder(tmp_path)
    with pytest.raises(ValueError, match=r"undated\.txt: the year table"):
        load_text_folder(tmp_path, years={"1862.txt": 1862})


def test_load_text_folder_undecodable_bytes_name_the_file(tmp_path):
    (tmp_path / "1790.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "1791.txt").write_bytes(b"Fellow \xff\xfe citizens")
    with pytest.raises(ValueError, match=r"1791\.txt: cannot decode byte 0xff"):
        load_text_folder(tmp_path)


def test_load_text_folder_empty(tmp_path):
    with pytest.raises(ValueError, match="corpus is empty"):
        load_text_folder(tmp_path)


def test_load_corpus_rejects_unknown_source(tmp_path):
    with pytest.raises(ValueError, match="corpus must be"):
        load_corpus(str(tmp_path / "missing.json"))


@pytest.mark.parametrize(
    "header, missing",
    [("text", "year (or date)"), ("date_,text", "year (or date)"), ("yr,body", "text")],
)
def test_load_csv_names_the_missing_column(tmp_path, header, missing):
    path = tmp_path / "corpus.csv"
    path.write_text(header + "\n" + ",".join(["1900"] * len(header.split(","))) + "\n")
    with pytest.raises(ValueError, match=re.escape(missing)) as error:
        load_corpus(str(path))
    assert "source" not in str(error.value) and str(path) in str(error.value)


def test_load_corpus_missing_csv_is_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus(str(tmp_path / "absent.csv"))
