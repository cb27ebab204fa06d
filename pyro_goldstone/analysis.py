# SPDX-License-Identifier: Apache-2.0
"""Cross-time queries on fitted embeddings: word aging, similarity over time, drift.

Embeddings are arrays of shape ``(T, N, d)`` (posterior means: time steps, vectors,
dimensions) or ``(S, T, N, d)`` (``S`` posterior draws), given as :class:`torch.Tensor`
on any device or as anything :func:`numpy.asarray` accepts (numpy arrays, xarray
DataArrays). Results follow the input: a tensor on the input's device for tensor
input, a numpy array for any other input. Similarities are cosine similarities.

Vectors that do not exist in a time step (a word that does not occur in a bin) are
flagged by a boolean ``present`` mask of shape ``(T, N)``; queries never return an
absent vector as a neighbour and report ``NaN`` for its similarities.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

__all__ = [
    "cosine_between_times",
    "drift",
    "first_last_cosine",
    "nearest_neighbours",
    "similarity_over_time",
]

logger = logging.getLogger(__name__)


def _as_tensor(X, name: str = "X") -> tuple[torch.Tensor, bool]:
    """Convert ``X`` to a floating tensor; also say whether ``X`` was a tensor."""
    if isinstance(X, torch.Tensor):
        tensor = X.detach()
        is_tensor = True
    else:
        try:
            tensor = torch.as_tensor(np.asarray(X))
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"{name} must be a tensor or an array, but got {type(X).__name__}"
            ) from error
        is_tensor = False
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    return tensor, is_tensor


def _like_input(result: torch.Tensor, is_tensor: bool):
    return result if is_tensor else result.cpu().numpy()


def _check_embeddings(X: torch.Tensor, name: str, allow_samples: bool) -> None:
    shapes = "(T, N, d) or (S, T, N, d)" if allow_samples else "(T, N, d)"
    if X.dim() != 3 and not (allow_samples and X.dim() == 4):
        raise ValueError(f"{name} must have shape {shapes}, but got {tuple(X.shape)}")


def _time_index(t, num_steps: int, name: str) -> int:
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
        raise TypeError(f"{name} must be an int, but got {t!r}")
    if not -num_steps <= t < num_steps:
        raise ValueError(f"{name}={t} is out of range for {num_steps} time steps")
    return int(t) % num_steps


def _vector_index(query, num_vectors: int, vocab, name: str) -> int:
    if isinstance(query, str):
        if vocab is None:
            raise ValueError(f"{name}={query!r} is a word, so vocab must be given")
        try:
            return list(vocab).index(query)
        except ValueError:
            raise ValueError(f"{name}={query!r} is not in the vocabulary") from None
    if isinstance(query, bool) or not isinstance(query, (int, np.integer)):
        raise TypeError(f"{name} must be an int or a word, but got {query!r}")
    if not -num_vectors <= query < num_vectors:
        raise ValueError(f"{name}={query} is out of range for {num_vectors} vectors")
    return int(query) % num_vectors


def _present_mask(present, shape: tuple, device) -> torch.Tensor | None:
    """Check a boolean ``(T, N)`` presence mask and move it to ``device``."""
    if present is None:
        return None
    if isinstance(present, torch.Tensor):
        mask = present.detach().to(device)
    else:
        mask = torch.as_tensor(np.asarray(present), device=device)
    if mask.dtype != torch.bool:
        raise TypeError(f"present must be a boolean mask, but got dtype {mask.dtype}")
    if tuple(mask.shape) != shape:
        raise ValueError(
            f"present must have shape (T, N) = {shape}, but got {tuple(mask.shape)}"
        )
    return mask


def cosine_between_times(X, t_from: int, t_to: int, *, present=None):
    """Cosine similarity of each vector at time ``t_from`` with itself at ``t_to``.

    :param X: embeddings of shape ``(T, N, d)`` or draws of shape ``(S, T, N, d)``.
    :type X: torch.Tensor or numpy.ndarray
    :param int t_from: first time index (negative values count from the end).
    :param int t_to: second time index.
    :param present: optional boolean mask of shape ``(T, N)``; vectors absent at
        either time get ``NaN``.
    :returns: cosines of shape ``(N,)``, or ``(S, N)`` for draws.
    :rtype: torch.Tensor or numpy.ndarray
    :raises ValueError: if a shape or a time index is wrong.
    """
    X, is_tensor = _as_tensor(X)
    _check_embeddings(X, "X", allow_samples=True)
    num_steps, num_vectors = X.shape[-3], X.shape[-2]
    t_from = _time_index(t_from, num_steps, "t_from")
    t_to = _time_index(t_to, num_steps, "t_to")
    mask = _present_mask(present, (num_steps, num_vectors), X.device)

    cosines = F.cosine_similarity(X[..., t_from, :, :], X[..., t_to, :, :], dim=-1)
    if mask is not None:
        both = mask[t_from] & mask[t_to]
        cosines = cosines.masked_fill(~both, float("nan"))
    return _like_input(cosines, is_tensor)


def first_last_cosine(X, *, present=None):
    """Cosine similarity of each vector's first and last time step.

    Near 1 for most vectors once the relative rotations between time steps are removed;
    spread out, even negative, while they remain (the paper's Figure 4).

    :param X: embeddings of shape ``(T, N, d)`` or draws of shape ``(S, T, N, d)``.
    :type X: torch.Tensor or numpy.ndarray
    :param present: optional boolean mask of shape ``(T, N)``.
    :returns: cosines of shape ``(N,)``, or ``(S, N)`` for draws.
    :rtype: torch.Tensor or numpy.ndarray
    """
    return cosine_between_times(X, 0, -1, present=present)


def nearest_neighbours(
    X,
    query,
    t_from: int,
    t_to: int,
    k: int = 5,
    present=None,
    *,
    vocab: Sequence[str] | None = None,
    include_query: bool | None = None,
) -> list[tuple[int, float]]:
    """The ``k`` vectors at time ``t_to`` most similar to ``query``'s vector at ``t_from``.

    With ``t_from`` the last and ``t_to`` the first time step this is the paper's "word
    aging" query: which words of the first bin resemble a modern word most. Vectors
    absent at ``t_to`` are never returned, and fewer than ``k`` pairs come back when
    fewer vectors are present.

    :param X: posterior means of shape ``(T, N, d)``.
    :type X: torch.Tensor or numpy.ndarray
    :param query: index of the query vector, or a word of ``vocab``.
    :type query: int or str
    :param int t_from: time index of the query vector (negative counts from the end).
    :param int t_to: time index of the candidate vectors.
    :param int k: number of neighbours (default 5).
    :param present: optional boolean mask of shape ``(T, N)``; the query must be
        present at ``t_from``.
    :param vocab: the words, needed only when ``query`` is a word.
    :param bool include_query: whether the query's own vector at ``t_to`` may be
        returned; by default it may, unless ``t_from == t_to``.
    :returns: ``(index, cosine)`` pairs, most similar first.
    :rtype: list
    :raises ValueError: if a shape or an index is wrong, or the query is absent at
        ``t_from``.
    """
    X, _ = _as_tensor(X)
    _check_embeddings(X, "X", allow_samples=False)
    num_steps, num_vectors = X.shape[0], X.shape[1]
    t_from = _time_index(t_from, num_steps, "t_from")
    t_to = _time_index(t_to, num_steps, "t_to")
    index = _vector_index(query, num_vectors, vocab, "query")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, but got {k!r}")
    mask = _present_mask(present, (num_steps, num_vectors), X.device)
    if mask is not None and not mask[t_from, index]:
        raise ValueError(f"query {query!r} is absent at time index {t_from}")
    if include_query is None:
        include_query = t_from != t_to

    cosines = F.cosine_similarity(X[t_from, index], X[t_to], dim=-1)
    candidates = torch.ones(num_vectors, dtype=torch.bool, device=X.device)
    if mask is not None:
        candidates &= mask[t_to]
    if not include_query:
        candidates[index] = False
    cosines = cosines.masked_fill(~candidates, -float("inf"))

    num_found = min(int(k), int(candidates.sum()))
    values, indices = torch.topk(cosines, num_found)
    return [(int(i), float(c)) for i, c in zip(indices.tolist(), values.tolist())]


def similarity_over_time(
    X,
    first,
    second,
    *,
    times: Sequence | None = None,
    vocab: Sequence[str] | None = None,
    present=None,
    level: float = 0.9,
) -> pd.DataFrame:
    """Cosine similarity of two vectors at every time step, with a credible band.

    Given draws ``(S, T, N, d)`` the band is the equal-tailed interval of the
    similarity's posterior at the given ``level``; given means ``(T, N, d)`` there is
    no band and ``lower``/``upper`` are ``NaN``.

    :param X: embeddings of shape ``(T, N, d)`` or draws of shape ``(S, T, N, d)``.
    :type X: torch.Tensor or numpy.ndarray
    :param first: index or word of the first vector.
    :type first: int or str
    :param second: index or word of the second vector.
    :type second: int or str
    :param times: labels of the time steps (e.g. years), default ``0 .. T - 1``.
    :param vocab: the words, needed only when ``first`` or ``second`` is a word.
    :param present: optional boolean mask of shape ``(T, N)``; time steps where
        either vector is absent get ``NaN``.
    :param float level: probability mass of the credible band (default 0.9).
    :returns: a frame indexed by ``time`` with columns ``mean`` (posterior mean of the
        similarity, or the similarity of the means), ``lower`` and ``upper``;
        ``attrs["level"]`` holds the band's level (``None`` without draws).
    :rtype: pandas.DataFrame
    :raises ValueError: if a shape, an index, ``times`` or ``level`` is wrong.
    """
    X, _ = _as_tensor(X)
    _check_embeddings(X, "X", allow_samples=True)
    num_steps, num_vectors = X.shape[-3], X.shape[-2]
    i = _vector_index(first, num_vectors, vocab, "first")
    j = _vector_index(second, num_vectors, vocab, "second")
    if times is None:
        times = range(num_steps)
    if len(times) != num_steps:
        raise ValueError(
            f"times has {len(times)} labels but X has {num_steps} time steps"
        )
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), but got {level}")
    mask = _present_mask(present, (num_steps, num_vectors), X.device)

    cosines = F.cosine_similarity(X[..., i, :], X[..., j, :], dim=-1)
    if X.dim() == 4:
        tail = (1 - level) / 2
        probs = torch.tensor([tail, 1 - tail], dtype=cosines.dtype, device=X.device)
        lower, upper = torch.quantile(cosines, probs, dim=0)
        mean = cosines.mean(0)
    else:
        mean = cosines
        lower = upper = torch.full_like(mean, float("nan"))
    frame = torch.stack([mean, lower, upper], dim=-1)
    if mask is not None:
        frame = frame.masked_fill(~(mask[:, i] & mask[:, j])[:, None], float("nan"))

    index = pd.Index(list(times), name="time")
    columns = ["mean", "lower", "upper"]
    frame = pd.DataFrame(frame.cpu().numpy(), index=index, columns=columns)
    frame.attrs["level"] = level if X.dim() == 4 else None
    return frame


def drift(
    X,
    t_from: int = 0,
    t_to: int = -1,
    *,
    vocab: Sequence[str] | None = None,
    present=None,
) -> pd.DataFrame:
    """Each vector's drift between two time steps, largest drift first.

    :param X: posterior means of shape ``(T, N, d)``.
    :type X: torch.Tensor or numpy.ndarray
    :param int t_from: first time index (default the first).
    :param int t_to: second time index (default the last).
    :param vocab: labels of the ``N`` vectors (default ``0 .. N - 1``).
    :param present: optional boolean mask of shape ``(T, N)``; vectors absent at
        either time get ``NaN`` and come last.
    :returns: a frame indexed by the labels with columns ``cosine`` (similarity of the
        two vectors), ``distance`` (Euclidean norm of their difference) and
        ``relative_distance`` (``distance`` over the mean of the two norms), sorted by
        ``cosine``, lowest first.
    :rtype: pandas.DataFrame
    :raises ValueError: if a shape, a time index or ``vocab``'s length is wrong.
    """
    X, _ = _as_tensor(X)
    _check_embeddings(X, "X", allow_samples=False)
    num_steps, num_vectors = X.shape[0], X.shape[1]
    if vocab is None:
        vocab = range(num_vectors)
    if len(vocab) != num_vectors:
        raise ValueError(
            f"vocab has {len(vocab)} labels but X has {num_vectors} vectors"
        )
    cosines = cosine_between_times(X, t_from, t_to, present=present)
    start = X[_time_index(t_from, num_steps, "t_from")]
    end = X[_time_index(t_to, num_steps, "t_to")]

    distance = (end - start).norm(dim=-1)
    scale = (start.norm(dim=-1) + end.norm(dim=-1)) / 2
    relative = distance / scale.clamp(min=torch.finfo(X.dtype).tiny)
    table = torch.stack([cosines, distance, relative], dim=-1)
    table = table.masked_fill(cosines.isnan()[:, None], float("nan"))

    columns = ["cosine", "distance", "relative_distance"]
    frame = pd.DataFrame(table.cpu().numpy(), index=list(vocab), columns=columns)
    return frame.sort_values("cosine", na_position="last", kind="stable")
