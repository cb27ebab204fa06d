# SPDX-License-Identifier: Apache-2.0
"""Tests of the per-bin co-occurrence counts, checked against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse
import torch

from pyro_goldstone.data.cooccurrence import (
    PackedCounts,
    count_cooccurrences,
    estimate_count_memory,
    negative_counts,
    positive_counts,
    split_held_out,
    subsample_frequent,
)

# Tokens: [a b a c], [b c] (1990s) and [c c a] (2000s; the number is dropped).
# Totals a: 3, b: 2, c: 4, so the vocabulary is [c, a, b].
TOY = pd.DataFrame(
    {
        "year": [1990, 1995, 2003],
        "text": ["A b, a c.", "b c", "c c a 42"],
    }
)

# window 1, in vocabulary order (c, a, b); documents never share a window
TOY_WINDOW_1 = [
    [[0, 1, 1], [1, 0, 2], [1, 2, 0]],
    [[2, 1, 0], [1, 0, 0], [0, 0, 0]],
]
# window 2 adds (a, a) twice and (b, c), (c, b) once in [a b a c]
TOY_WINDOW_2 = [
    [[0, 1, 2], [1, 2, 2], [2, 2, 0]],
    [[2, 2, 0], [2, 0, 0], [0, 0, 0]],
]


@pytest.mark.parametrize("window, expected", [(1, TOY_WINDOW_1), (2, TOY_WINDOW_2)])
def test_toy_corpus_counts(window, expected):
    counts = count_cooccurrences(TOY, vocab_size=10, min_count=1, window=window)
    assert counts.vocabulary == ["c", "a", "b"]
    assert counts.bins.labels == ["1990-1999", "2000-2009"]
    np.testing.assert_array_equal(counts.unigram, [[2, 2, 2], [2, 1, 0]])
    for t in range(2):
        np.testing.assert_array_equal(counts.positive[t].toarray(), expected[t])
        assert counts.held_out[t].nnz == 0


def test_toy_corpus_absent_words_are_flagged():
    counts = count_cooccurrences(TOY, vocab_size=10, min_count=1, window=1)
    np.testing.assert_array_equal(counts.present, [[True] * 3, [True, True, False]])
    summary = counts.summary()
    assert summary["absent words"].tolist() == [0, 1]
    assert summary["tokens"].tolist() == [6, 3]
    assert summary["train pairs"].tolist() == [8, 4]


def test_toy_corpus_vocabulary_and_equal_count_bins():
    counts = count_cooccurrences(
        TOY, vocab_size=2, min_count=1, window=1, bin_width=None, num_bins=2
    )
    assert counts.vocabulary == ["c", "a"]
    # with b removed before the window slides, [a b a c] becomes [a a c]
    np.testing.assert_array_equal(counts.positive[0].toarray(), [[0, 1], [1, 2]])


def test_count_rejects_bad_corpora():
    with pytest.raises(ValueError, match="no tokens"):
        count_cooccurrences(pd.DataFrame({"year": [1990], "text": ["1 2 3, !"]}))
    with pytest.raises(ValueError, match="empty"):
        count_cooccurrences(pd.DataFrame({"year": [], "text": []}))
    with pytest.raises(ValueError, match="no valid year"):
        count_cooccurrences(pd.DataFrame({"year": [None], "text": ["a b"]}))


def test_memory_estimate_is_checked_first():
    with pytest.raises(ValueError, match="max_memory_gib"):
        count_cooccurrences(TOY, min_count=1, max_memory_gib=1e-9)
    # the largest bin's pair lists: 2 * 24 bytes * 2 window * 100 tokens
    assert estimate_count_memory([100, 10], 2, 3) == pytest.approx(
        2 * 24 * 400 + (9 + 9) * 12 + 8 * 3
    )


def test_positive_counts_window_never_crosses_documents():
    counts = positive_counts([np.array([0, 1]), np.array([2, 0])], 3, window=5)
    np.testing.assert_array_equal(counts.toarray(), [[0, 1, 1], [1, 0, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="window"):
        positive_counts([np.array([0])], 1, window=0)


def test_negative_counts_formula():
    unigram = np.array([[2.0, 2.0, 2.0], [2.0, 1.0, 0.0]])
    eta, power = 2.0, 0.75
    got = negative_counts(unigram, eta=eta, power=power)
    assert got.shape == (2, 3, 3)
    for t in range(2):
        normaliser = sum(n**power for n in unigram[t])
        for i in range(3):
            for j in range(3):
                expected = eta * unigram[t, i] * unigram[t, j] ** power / normaliser
                assert got[t, i, j].item() == pytest.approx(expected, rel=1e-6)
    # each word's negatives add up to eta times its occurrences
    np.testing.assert_allclose(got.sum(-1).numpy(), eta * unigram, rtol=1e-6)


def test_negative_counts_rows_and_columns_are_slices():
    unigram = torch.tensor([[5.0, 0.0, 3.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    full = negative_counts(unigram, eta=3.0, power=0.5)
    rows, cols = torch.tensor([3, 0]), torch.tensor([2, 1, 3])
    block = negative_counts(unigram, eta=3.0, power=0.5, rows=rows, cols=cols)
    torch.testing.assert_close(block, full[:, rows][:, :, cols])
    with pytest.raises(ValueError, match="eta"):
        negative_counts(unigram, eta=0.0)
    with pytest.raises(ValueError, match="non-negative"):
        negative_counts(-unigram)


def test_packed_rows_and_blocks_match_dense():
    rng = np.random.default_rng(0)
    dense = rng.poisson(0.7, size=(3, 6, 6)) * (rng.random((3, 6, 6)) < 0.5)
    packed = PackedCounts([scipy.sparse.csr_matrix(m) for m in dense])
    rows, cols = torch.tensor([4, 0, 5]), torch.tensor([1, 5, 2, 0])
    expected = torch.as_tensor(dense, dtype=torch.get_default_dtype())
    torch.testing.assert_close(packed.rows(rows), expected[:, rows])
    torch.testing.assert_close(packed.block(rows, cols), expected[:, rows][:, :, cols])


def test_split_held_out_partitions_the_pairs():
    rng = np.random.default_rng(1)
    matrix = scipy.sparse.csr_matrix(rng.poisson(20, size=(30, 30)))
    train, held = split_held_out(matrix, 0.25, np.random.default_rng(2))
    np.testing.assert_array_equal((train + held).toarray(), matrix.toarray())
    assert held.sum() / matrix.sum() == pytest.approx(0.25, abs=0.02)
    train, held = split_held_out(matrix, 0.0, np.random.default_rng(2))
    assert held.nnz == 0 and (train != matrix).nnz == 0


def test_held_out_split_in_counts():
    counts = count_cooccurrences(TOY, min_count=1, window=2, held_out=0.5, seed=3)
    for t in range(2):
        total = counts.positive[t] + counts.held_out[t]
        np.testing.assert_array_equal(total.toarray(), TOY_WINDOW_2[t])
    assert counts.held_out_fraction == 0.5


def test_subsample_frequent():
    ids = np.array([0] * 1000 + [1] * 10)
    frequency = np.array([1000, 10]) / 1010
    kept = subsample_frequent(ids, frequency, 1e-2, np.random.default_rng(0))
    # word 1 (frequency 0.0099 < 0.01) is always kept, word 0 with sqrt(0.0101)
    assert (kept == 1).sum() == 10
    assert (kept == 0).sum() == pytest.approx(1000 * np.sqrt(0.0101), rel=0.2)
