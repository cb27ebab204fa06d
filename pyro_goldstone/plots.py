# SPDX-License-Identifier: Apache-2.0
"""Figures of training runs and fitted embeddings, written without a display.

Every function builds a :class:`matplotlib.figure.Figure` directly (no ``pyplot``, so
no display and no global backend switch is needed), writes it to ``path`` if one is
given, and returns it. Arrays may be tensors on any device or numpy arrays.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

__all__ = [
    "plot_similarity_histogram",
    "plot_similarity_over_time",
    "plot_training_curves",
    "plot_trajectory_snapshots",
]

logger = logging.getLogger(__name__)

_TITLES = {
    "loss": "Training loss",
    "prior_energy": "Prior energy of the means",
}


def _numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _save(fig: Figure, path, dpi: int) -> Figure:
    if path is not None:
        fig.savefig(path, dpi=dpi)
        logger.info("wrote %s", path)
    return fig


def _is_goldstone(label: str) -> bool:
    return str(label).lower().startswith("goldstone")


def plot_training_curves(
    runs: Mapping[str, Mapping],
    path=None,
    *,
    keys: Sequence[str] = ("loss", "prior_energy"),
    logy: bool = True,
    x: str = "steps",
    title: str | None = None,
    dpi: int = 120,
) -> Figure:
    """Curves of several runs side by side, one panel per recorded quantity.

    Goldstone runs (labels starting with ``"goldstone"``) are drawn solid, baselines
    dashed. Entries that are ``None`` (the loss at step 0) are skipped. A panel whose
    values are not all positive falls back to a linear axis.

    :param dict runs: label to run, as returned by :func:`pyro_goldstone.training.train`.
    :param path: file to write (PNG by its suffix), or ``None``.
    :param tuple keys: the run keys to plot, one panel each.
    :param bool logy: whether to use a logarithmic value axis (default ``True``).
    :param str x: the run key for the horizontal axis, ``"steps"`` or ``"seconds"``.
    :param str title: title of the figure.
    :param int dpi: resolution of the written file.
    :returns: the figure.
    :rtype: matplotlib.figure.Figure
    :raises ValueError: if ``runs`` or ``keys`` is empty or a run lacks a key.
    """
    if not runs:
        raise ValueError("runs must hold at least one run")
    if not keys:
        raise ValueError("keys must name at least one quantity")
    for label, run in runs.items():
        missing = [key for key in (x, *keys) if key not in run]
        if missing:
            raise ValueError(f"run {label!r} lacks the keys {missing}")

    fig = Figure(figsize=(5.5 * len(keys), 4.2), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        positive = True
        for label, run in runs.items():
            pairs = [(s, v) for s, v in zip(run[x], run[key]) if v is not None]
            if not pairs:
                continue
            xs, ys = map(np.asarray, zip(*pairs))
            positive &= bool(np.all(ys > 0))
            style = "-" if _is_goldstone(label) else "--"
            ax.plot(xs, ys, style, label=label, linewidth=1.6)
        if logy and positive:
            ax.set_yscale("log")
        ax.set_xlabel("step" if x == "steps" else x)
        ax.set_ylabel(key.replace("_", " "))
        ax.set_title(_TITLES.get(key, key.replace("_", " ")))
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def _projection(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Centre and 2-D basis (principal axes) of the stacked rows of ``arrays``."""
    points = np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays])
    centre = points.mean(0)
    dim = points.shape[-1]
    if dim <= 2:
        return centre, np.eye(dim, 2)
    _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
    return centre, vt[:2].T


def plot_trajectory_snapshots(
    snapshots: Mapping[str, Sequence[tuple[int, object]]],
    path=None,
    *,
    vectors: Sequence[int] | None = None,
    max_vectors: int = 12,
    title: str | None = None,
    dpi: int = 120,
) -> Figure:
    """Trajectories of embedding vectors over time, at several training steps.

    One row per run (e.g. baseline and Goldstone, as in the paper's Figure 2), one
    column per snapshot. In each panel every vector's points over the ``T`` time steps
    are joined into a chain, one colour per vector; a circle marks the first time step
    and a square the last. All panels share one 2-D projection, the principal axes of
    the last snapshots of all rows, and one scale, so they can be compared directly.

    :param dict snapshots: row label to a list of ``(step, X)`` pairs, ``X`` of shape
        ``(T, N, d)``.
    :param path: file to write, or ``None``.
    :param vectors: indices of the vectors to draw (default the first ``max_vectors``).
    :param int max_vectors: how many vectors to draw when ``vectors`` is not given.
    :param str title: title of the figure.
    :param int dpi: resolution of the written file.
    :returns: the figure.
    :rtype: matplotlib.figure.Figure
    :raises ValueError: if ``snapshots`` is empty or the arrays disagree in shape.
    """
    rows = {
        label: [(s, _numpy(X)) for s, X in snaps] for label, snaps in snapshots.items()
    }
    if not rows or not all(rows.values()):
        raise ValueError("snapshots must map each row label to a non-empty list")
    shapes = {X.shape for snaps in rows.values() for _, X in snaps}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"every snapshot must have one shape (T, N, d), got {shapes}")
    num_vectors = next(iter(shapes))[1]
    if vectors is None:
        vectors = range(min(max_vectors, num_vectors))
    vectors = list(vectors)
    if not vectors or not all(-num_vectors <= i < num_vectors for i in vectors):
        raise ValueError(f"vectors must be indices below {num_vectors}, got {vectors}")

    centre, basis = _projection([snaps[-1][1][:, vectors] for snaps in rows.values()])
    num_cols = max(len(snaps) for snaps in rows.values())
    fig = Figure(figsize=(3.2 * num_cols, 3.2 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), num_cols, squeeze=False, sharex=True, sharey=True)
    colours = [f"C{i % 10}" for i in range(len(vectors))]
    for axes_row, (label, snaps) in zip(axes, rows.items()):
        for ax, (step, X) in zip(axes_row, snaps):
            points = (X[:, vectors] - centre) @ basis
            for n, colour in enumerate(colours):
                ax.plot(*points[:, n].T, "-", color=colour, linewidth=0.9, alpha=0.8)
                ax.plot(*points[0, n], "o", color=colour, markersize=4)
                ax.plot(*points[-1, n], "s", color=colour, markersize=4)
            ax.set_title(f"{label}, step {step}", fontsize="medium")
            ax.set_aspect("equal", adjustable="box")
        for ax in axes_row[len(snaps) :]:
            ax.set_axis_off()
        axes_row[0].set_ylabel("principal axis 2")
    for ax in axes[-1]:
        ax.set_xlabel("principal axis 1")

    handles = [
        Line2D([], [], color="0.3", marker="o", linestyle="-", label="first time step"),
        Line2D([], [], color="0.3", marker="s", linestyle="-", label="last time step"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="small")
    fig.suptitle(title or f"Trajectories over time of {len(vectors)} vectors")
    return _save(fig, path, dpi)


def plot_similarity_histogram(
    cosines: Mapping[str, object],
    path=None,
    *,
    bins: int = 40,
    xlabel: str = "cosine similarity of first and last time step",
    title: str | None = None,
    dpi: int = 120,
) -> Figure:
    """Overlaid histograms of cosine similarities, one per run (the paper's Figure 4).

    ``NaN`` entries (vectors absent at one of the two times) are left out; each
    legend entry gives the median of the run.

    :param dict cosines: label to an array of cosines of shape ``(N,)``, e.g. from
        :func:`pyro_goldstone.analysis.first_last_cosine`.
    :param path: file to write, or ``None``.
    :param int bins: number of bins on ``[-1, 1]``.
    :param str xlabel: label of the horizontal axis.
    :param str title: title of the figure.
    :param int dpi: resolution of the written file.
    :returns: the figure.
    :rtype: matplotlib.figure.Figure
    :raises ValueError: if ``cosines`` is empty or ``bins`` is not positive.
    """
    if not cosines:
        raise ValueError("cosines must hold at least one array")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, but got {bins!r}")

    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.subplots()
    edges = np.linspace(-1.0, 1.0, bins + 1)
    for label, values in cosines.items():
        values = _numpy(values).ravel().astype(float)
        values = values[np.isfinite(values)]
        median = np.median(values) if values.size else math.nan
        ax.hist(
            np.clip(values, -1.0, 1.0),
            bins=edges,
            histtype="stepfilled",
            alpha=0.35,
            edgecolor="black" if _is_goldstone(label) else None,
            label=f"{label} (median {median:.2f}, n={values.size})",
        )
    ax.set_xlim(-1.0, 1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("number of vectors")
    ax.set_title(title or "Similarity of each vector across time")
    ax.legend(fontsize="small", loc="upper left")
    return _save(fig, path, dpi)


def plot_similarity_over_time(
    curves: Mapping[str, object],
    path=None,
    *,
    xlabel: str = "time",
    title: str | None = None,
    dpi: int = 120,
) -> Figure:
    """Similarity of word pairs over time, with credible bands where available.

    :param dict curves: label (e.g. ``"car / horse"``) to a frame from
        :func:`pyro_goldstone.analysis.similarity_over_time` (indexed by time, columns
        ``mean``, ``lower``, ``upper``) or a mapping with a ``time`` and those keys.
    :param path: file to write, or ``None``.
    :param str xlabel: label of the horizontal axis.
    :param str title: title of the figure.
    :param int dpi: resolution of the written file.
    :returns: the figure.
    :rtype: matplotlib.figure.Figure
    :raises ValueError: if ``curves`` is empty or a curve lacks the ``mean`` column.
    """
    if not curves:
        raise ValueError("curves must hold at least one curve")

    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    levels = set()
    for label, curve in curves.items():
        frame = pd.DataFrame(curve)
        if "time" in frame.columns:
            frame = frame.set_index("time")
        if "mean" not in frame.columns:
            raise ValueError(f"curve {label!r} lacks a 'mean' column")
        (line,) = ax.plot(frame.index, frame["mean"], "-o", markersize=3, label=label)
        if {"lower", "upper"} <= set(frame.columns) and frame["lower"].notna().any():
            levels.add(getattr(curve, "attrs", {}).get("level"))
            ax.fill_between(
                frame.index,
                frame["lower"].astype(float),
                frame["upper"].astype(float),
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cosine similarity")
    if levels == {None} or len(levels) > 1:
        title = title or "Similarity over time (bands: credible intervals)"
    elif levels:
        level = next(iter(levels))
        title = title or f"Similarity over time (bands: {level:.0%} credible interval)"
    ax.set_title(title or "Similarity over time")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path, dpi)
