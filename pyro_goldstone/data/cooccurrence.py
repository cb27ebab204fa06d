# SPDX-License-Identifier: Apache-2.0
"""Per-bin word co-occurrence counts of a dated corpus, for dynamic word embeddings.

For every time bin ``t`` the positive counts ``n+_{ij,t}`` say how often word ``j``
occurs within ``window`` tokens of word ``i`` (both directions, so the matrix is
symmetric before any held-out split). They are kept as ``T`` sparse ``V x V`` SciPy
matrices. Out-of-vocabulary tokens, and tokens removed by frequent-word subsampling, are
deleted before the window slides (as word2vec does), and windows never cross documents.

The negative counts of SPEC section 4.3,

.. math::

    n^-_{ij,t} = \\eta \\, n_{i,t} \\frac{n_{j,t}^{\\gamma}}{\\sum_k n_{k,t}^{\\gamma}},
    \\qquad \\gamma = 3/4 \\text{ by default},

with ``n_{i,t}`` the occurrences of word ``i`` in bin ``t``, form a dense rank-one
matrix per bin. It is never stored: :func:`negative_counts` builds the rows a minibatch
needs, ``(T, B, V)`` at a time.

A word that does not occur in a bin (``present[t, i]`` false) has no counts there; the
model still has a vector for it, carried by the time-series prior.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse
import torch

from pyro_goldstone.data.corpus import (
    TimeBins,
    assign_bins,
    build_vocabulary,
    check_documents,
    tokenize,
)

__all__ = [
    "CooccurrenceCounts",
    "PackedCounts",
    "count_cooccurrences",
    "estimate_count_memory",
    "negative_counts",
    "positive_counts",
    "split_held_out",
    "subsample_frequent",
]

logger = logging.getLogger(__name__)

_GIB = 2.0**30


def positive_counts(
    token_ids: list[np.ndarray], vocab_size: int, window: int
) -> scipy.sparse.csr_matrix:
    """Exact symmetric window counts ``n+_{ij}`` of one bin.

    :param list token_ids: one integer array of vocabulary indices per document (tokens
        outside the vocabulary already removed).
    :param int vocab_size: ``V``.
    :param int window: largest distance between two tokens that co-occur.
    :returns: integer counts of shape ``(V, V)``; entry ``(i, j)`` is the number of
        ordered token pairs ``(a, b)``, ``0 < |a - b| <= window``, in one document, with
        token ``a`` being word ``i`` and token ``b`` word ``j``.
    :rtype: scipy.sparse.csr_matrix
    :raises ValueError: if ``window`` is not a positive int.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    lengths = [len(ids) for ids in token_ids]
    ids = np.concatenate(token_ids) if token_ids else np.zeros(0, np.int64)
    document = np.repeat(np.arange(len(lengths)), lengths)

    rows, cols = [], []
    for offset in range(1, window + 1):
        same = document[:-offset] == document[offset:]
        rows.append(ids[:-offset][same])
        cols.append(ids[offset:][same])
    left, right = np.concatenate(rows), np.concatenate(cols)
    pairs = np.concatenate([left, right]), np.concatenate([right, left])
    ones = np.ones(len(pairs[0]), dtype=np.int64)
    shape = (vocab_size, vocab_size)
    return scipy.sparse.coo_matrix((ones, pairs), shape=shape).tocsr()


def negative_counts(
    unigram, *, eta: float = 1.0, power: float = 0.75, rows=None, cols=None
):
    """Dense negative counts ``eta n_i n_j^power / sum_k n_k^power`` (SPEC 4.3).

    The normaliser ``sum_k`` always runs over the whole vocabulary, also when only
    some rows or columns are returned.

    :param unigram: occurrences ``n`` of shape ``(..., V)`` (e.g. ``(T, V)``); a tensor
        keeps its device and dtype, anything else becomes a default-dtype tensor.
    :param float eta: overall ratio of negative to word occurrences (default 1).
    :param float power: exponent ``gamma`` of the context distribution (default 0.75).
    :param rows: optional indices ``(B,)`` of the rows ``i`` to return.
    :param cols: optional indices ``(C,)`` of the columns ``j`` to return.
    :returns: a tensor of shape ``(..., V, V)``, or ``(..., B, C)`` with ``rows`` and
        ``cols``.
    :rtype: torch.Tensor
    :raises ValueError: if ``eta`` is not positive or ``unigram`` has a negative entry.
    """
    if not eta > 0:
        raise ValueError(f"eta must be positive, got {eta!r}")
    n = torch.as_tensor(unigram)
    if not n.is_floating_point():
        n = n.to(torch.get_default_dtype())
    if (n < 0).any():
        raise ValueError("unigram counts must be non-negative")
    weights = n**power
    context = weights / weights.sum(-1, keepdim=True).clamp(
        min=torch.finfo(n.dtype).tiny
    )
    word = n if rows is None else n[..., rows]
    context = context if cols is None else context[..., cols]
    return eta * word.unsqueeze(-1) * context.unsqueeze(-2)


def subsample_frequent(
    token_ids: np.ndarray, frequency: np.ndarray, threshold: float, rng
) -> np.ndarray:
    """Drop occurrences of frequent words, keeping each with ``sqrt(threshold / f)``.

    This is word2vec's subsampling rule; ``f`` is the word's share of all tokens.

    :param numpy.ndarray token_ids: vocabulary indices of one document.
    :param numpy.ndarray frequency: relative frequency of every word, shape ``(V,)``.
    :param float threshold: words rarer than this are always kept (e.g. ``1e-4``).
    :param numpy.random.Generator rng: the random source.
    :returns: the kept indices, in order.
    :rtype: numpy.ndarray
    """
    keep = np.minimum(1.0, np.sqrt(threshold / np.maximum(frequency, 1e-300)))
    return token_ids[rng.random(len(token_ids)) < keep[token_ids]]


def split_held_out(matrix: scipy.sparse.csr_matrix, fraction: float, rng):
    """Split counts into training and held-out counts by binomial thinning.

    Each of the ``n`` co-occurrences behind an entry is held out independently with
    probability ``fraction``, so held-out counts are a random sample of the pairs.

    :param scipy.sparse.csr_matrix matrix: integer counts.
    :param float fraction: probability of holding out a pair, in ``[0, 1)``.
    :param numpy.random.Generator rng: the random source.
    :returns: ``(train, held_out)``, both CSR with the sparsity pattern of ``matrix``.
    :rtype: tuple
    """
    held = matrix.copy()
    held.data = rng.binomial(matrix.data, fraction).astype(matrix.dtype)
    train = matrix.copy()
    train.data = matrix.data - held.data
    train.eliminate_zeros()
    held.eliminate_zeros()
    return train, held


def estimate_count_memory(num_tokens, window: int, vocab_size: int) -> float:
    """Estimated peak bytes of :func:`count_cooccurrences` for the given bin sizes.

    The largest bin's pair lists (three int64 arrays, one temporary copy during the
    sparse conversion) plus the sparse results of all bins (int64 value and int32 column
    per entry; at most ``V^2`` entries per bin).

    :param num_tokens: tokens per bin, shape ``(T,)``.
    :param int window: window half-width.
    :param int vocab_size: ``V``.
    :rtype: float
    """
    pairs = 2.0 * window * np.asarray(num_tokens, dtype=np.float64)
    if pairs.size == 0:
        return 0.0
    results = np.minimum(pairs, float(vocab_size) ** 2).sum() * 12 + 8 * vocab_size
    return float(2 * 24 * pairs.max() + results)


@dataclass
class CooccurrenceCounts:
    """Training and held-out co-occurrence counts of a binned corpus.

    :ivar list vocabulary: the ``V`` words, most frequent first.
    :ivar TimeBins bins: the time bins (``bins.times`` are the OU prior's time stamps).
    :ivar list positive: ``T`` training count matrices, CSR of shape ``(V, V)``.
    :ivar list held_out: ``T`` held-out count matrices (all zero if nothing was held
        out).
    :ivar numpy.ndarray unigram: occurrences ``n_{i,t}``, shape ``(T, V)``.
    :ivar float held_out_fraction: share of the pairs held out; training negative counts
        are scaled by ``1 - held_out_fraction``, held-out ones by the fraction.
    :ivar dict config: the options used.
    """

    vocabulary: list
    bins: TimeBins
    positive: list
    held_out: list
    unigram: np.ndarray
    held_out_fraction: float
    config: dict = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return len(self.positive)

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    @property
    def present(self) -> np.ndarray:
        """Whether each word occurs in each bin, boolean of shape ``(T, V)``."""
        return self.unigram > 0

    def summary(self) -> pd.DataFrame:
        """Tokens, distinct pairs and absent words per bin, one row per bin."""
        return pd.DataFrame(
            {
                "time": self.bins.times,
                "tokens": self.unigram.sum(1),
                "train pairs": [int(m.sum()) for m in self.positive],
                "held-out pairs": [int(m.sum()) for m in self.held_out],
                "nonzeros": [m.nnz for m in self.positive],
                "absent words": (~self.present).sum(1),
            },
            index=pd.Index(self.bins.labels, name="bin"),
        )


class PackedCounts:
    """Count matrices of all bins on one device, with dense minibatch rows on demand.

    :param list matrices: ``T`` sparse matrices of shape ``(V, V)``.
    :param dtype: dtype of the returned rows.
    :param device: device of the stored counts and the returned rows.
    """

    def __init__(self, matrices, dtype=None, device=None):
        stacked = scipy.sparse.vstack(matrices, format="csr")
        stacked.sort_indices()
        dtype = torch.get_default_dtype() if dtype is None else dtype
        self.num_steps = len(matrices)
        self.vocab_size = matrices[0].shape[1]
        self.crow = torch.as_tensor(stacked.indptr.astype(np.int64), device=device)
        self.col = torch.as_tensor(stacked.indices.astype(np.int64), device=device)
        self.value = torch.as_tensor(stacked.data, dtype=dtype, device=device)

    def _entries(self, index: torch.Tensor):
        """Stored entries of the rows ``index`` in every bin.

        :returns: ``(segment, entry)``: for each stored entry, its position ``t * B + b``
            among the ``T * B`` requested rows and its index into :attr:`col` and
            :attr:`value`.
        """
        T, V = self.num_steps, self.vocab_size
        index = index.to(self.crow.device)
        row = (torch.arange(T, device=index.device)[:, None] * V + index).reshape(-1)
        start, stop = self.crow[row], self.crow[row + 1]
        lengths = stop - start
        segment = torch.repeat_interleave(
            torch.arange(len(row), device=row.device), lengths
        )
        first = torch.repeat_interleave(start - (lengths.cumsum(0) - lengths), lengths)
        entry = first + torch.arange(len(segment), device=row.device)
        return segment, entry

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Dense counts of the rows ``index`` in every bin, shape ``(T, B, V)``.

        :param torch.Tensor index: word indices of shape ``(B,)``.
        :rtype: torch.Tensor
        """
        T, V, B = self.num_steps, self.vocab_size, len(index)
        segment, entry = self._entries(index)
        out = torch.zeros(T * B * V, dtype=self.value.dtype, device=self.value.device)
        out[segment * V + self.col[entry]] = self.value[entry]
        return out.reshape(T, B, V)

    def block(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Dense counts of the rows ``rows`` and columns ``cols`` in every bin.

        Only the stored entries of the requested rows are visited, so a minibatch
        block costs ``O(entries of the rows + T B C)``, never ``O(T B V)``.

        :param torch.Tensor rows: word indices of shape ``(B,)``.
        :param torch.Tensor cols: distinct context indices of shape ``(C,)``.
        :returns: counts of shape ``(T, B, C)``.
        :rtype: torch.Tensor
        """
        T, V, B, C = self.num_steps, self.vocab_size, len(rows), len(cols)
        cols = cols.to(self.col.device)
        position = torch.full((V,), -1, dtype=torch.long, device=self.col.device)
        position[cols] = torch.arange(C, device=self.col.device)
        segment, entry = self._entries(rows)
        column = position[self.col[entry]]
        kept = column >= 0
        out = torch.zeros(T * B * C, dtype=self.value.dtype, device=self.value.device)
        out[segment[kept] * C + column[kept]] = self.value[entry[kept]]
        return out.reshape(T, B, C)


def _encode(tokens: list, lookup: dict) -> np.ndarray:
    ids = [lookup.get(token, -1) for token in tokens]
    ids = np.asarray(ids, dtype=np.int64)
    return ids[ids >= 0]


def count_cooccurrences(
    documents: pd.DataFrame,
    *,
    vocab_size: int = 5000,
    min_count: int = 5,
    window: int = 4,
    bin_width: float | None = 10,
    num_bins: int | None = None,
    numbers: str = "drop",
    subsample: float | None = None,
    held_out: float = 0.0,
    seed: int = 0,
    max_memory_gib: float = 4.0,
) -> CooccurrenceCounts:
    """Tokenise, bin and count a corpus: the data of dynamic word embeddings.

    :param pandas.DataFrame documents: a corpus frame (see
        :mod:`pyro_goldstone.data.corpus`).
    :param int vocab_size: the ``V`` most frequent words form the vocabulary.
    :param int min_count: a vocabulary word occurs at least this often (default 5).
    :param int window: window half-width (default 4).
    :param float bin_width: time-bin width in years (default 10); ``None`` with
        ``num_bins``.
    :param int num_bins: number of bins of about equal token counts (then pass
        ``bin_width=None``).
    :param str numbers: ``"drop"`` or ``"token"``, see :func:`tokenize`.
    :param float subsample: word2vec subsampling threshold (e.g. ``1e-4``), or ``None``
        to keep every token (default; counts are then exact).
    :param float held_out: share of co-occurring pairs held out for testing, ``[0, 1)``.
    :param int seed: seed of subsampling and the held-out split.
    :param float max_memory_gib: refuse to count if the estimate exceeds this.
    :rtype: CooccurrenceCounts
    :raises ValueError: on an invalid option or corpus, or if the memory estimate
        exceeds ``max_memory_gib``.
    """
    if not 0 <= held_out < 1:
        raise ValueError(f"held_out must lie in [0, 1), got {held_out!r}")
    if subsample is not None and not subsample > 0:
        raise ValueError(f"subsample must be positive or None, got {subsample!r}")
    documents = check_documents(documents)
    rng = np.random.default_rng(seed)

    tokens = [tokenize(text, numbers=numbers) for text in documents["text"]]
    lengths = np.array([len(t) for t in tokens], dtype=np.float64)
    if lengths.sum() == 0:
        raise ValueError("the corpus has no tokens: every document is empty")
    bins = assign_bins(
        documents["year"], width=bin_width, num_bins=num_bins, num_tokens=lengths
    )
    totals = pd.Series([t for doc in tokens for t in doc]).value_counts()
    vocabulary = build_vocabulary(totals.to_dict(), vocab_size, min_count=min_count)
    lookup = {word: i for i, word in enumerate(vocabulary)}
    ids = [_encode(doc, lookup) for doc in tokens]
    if subsample is not None:
        frequency = totals.reindex(vocabulary).to_numpy() / totals.sum()
        ids = [subsample_frequent(doc, frequency, subsample, rng) for doc in ids]

    T, V = len(bins.times), len(vocabulary)
    per_bin = np.bincount(bins.index, weights=[len(doc) for doc in ids], minlength=T)
    needed = estimate_count_memory(per_bin, window, V) / _GIB
    if needed > max_memory_gib:
        raise ValueError(
            f"counting needs an estimated {needed:.2f} GiB, more than max_memory_gib="
            f"{max_memory_gib}; reduce window or vocab_size, or raise max_memory_gib"
        )

    unigram = np.zeros((T, V), dtype=np.int64)
    train, test = [], []
    for t in range(T):
        members = [ids[k] for k in np.flatnonzero(bins.index == t)]
        unigram[t] = np.bincount(np.concatenate(members), minlength=V)
        counts = positive_counts(members, V, window)
        kept, held = split_held_out(counts, held_out, rng)
        train.append(kept)
        test.append(held)

    config = dict(
        vocab_size=vocab_size,
        min_count=min_count,
        window=window,
        bin_width=bin_width,
        num_bins=num_bins,
        numbers=numbers,
        subsample=subsample,
        held_out=held_out,
        seed=seed,
    )
    result = CooccurrenceCounts(
        vocabulary, bins, train, test, unigram, held_out, config
    )
    logger.info(
        "corpus: %d documents, %d tokens, %d bins, %d words; %d words absent from at "
        "least one bin",
        len(documents),
        int(lengths.sum()),
        T,
        V,
        int((~result.present).any(0).sum()),
    )
    return result
