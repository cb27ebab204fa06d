# SPDX-License-Identifier: Apache-2.0
"""Export of fitted embeddings: ArviZ ``InferenceData`` and word2vec text files.

:func:`to_inference_data` draws from a fitted guide and labels every axis (``time``,
``word`` / ``user`` / ``item``, ``dim``) so the posterior can be summarised and sliced
with ArviZ and xarray. :func:`export_word2vec` writes the vectors of each time step in
the word2vec text format, which gensim's ``KeyedVectors.load_word2vec_format`` and
most embedding tools read.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pyro
import torch
from pyro import poutine

__all__ = [
    "export_word2vec",
    "to_inference_data",
    "write_word2vec",
]

logger = logging.getLogger(__name__)

_SAMPLE_DIMS = ("chain", "draw")


def _check_sites(sites: Mapping, coords: Mapping) -> None:
    if not isinstance(sites, Mapping) or not sites:
        raise ValueError("sites must map at least one site name to its dimension names")
    for name, dims in sites.items():
        if isinstance(dims, str) or not all(isinstance(dim, str) for dim in dims):
            raise TypeError(f"sites[{name!r}] must be a tuple of dimension names")
        if len(set(dims)) != len(dims) or set(dims) & set(_SAMPLE_DIMS):
            raise ValueError(
                f"sites[{name!r}] = {tuple(dims)} must name distinct dimensions "
                f"other than {_SAMPLE_DIMS}"
            )
    used = {dim for dims in sites.values() for dim in dims}
    unused = sorted(set(coords) - used)
    if unused:
        raise ValueError(f"coords names dimensions {unused} that no site uses")


def _site_value(name: str, traces: list, model_given: bool) -> torch.Tensor:
    """The value of sample site ``name`` in the first trace that has it."""
    for trace in traces:
        node = trace.nodes.get(name)
        if node is None or node["type"] != "sample":
            continue
        if node["is_observed"] and not node["infer"].get("_deterministic", False):
            raise ValueError(f"site {name!r} is observed; ask for latent sites")
        for frame in node["cond_indep_stack"]:
            if frame.full_size is not None and frame.size < frame.full_size:
                raise ValueError(
                    f"site {name!r} is subsampled by plate {frame.name!r} "
                    f"({frame.size} of {frame.full_size}); pass model_args or "
                    "model_kwargs that draw every entry"
                )
        return node["value"]
    where = "model or guide" if model_given else "guide"
    available = sorted(
        n
        for trace in traces
        for n, node in trace.nodes.items()
        if node["type"] == "sample"
    )
    raise ValueError(f"site {name!r} is not a sample site of the {where}: {available}")


def _draw(guide, model, args, kwargs, names, num_samples) -> dict[str, np.ndarray]:
    """``num_samples`` joint draws of the sites ``names``, shaped ``(1, S, ...)``."""
    draws = {}
    with torch.no_grad():
        for s in range(num_samples):
            traces = [poutine.trace(guide).get_trace(*args, **kwargs)]
            if model is not None:
                replayed = poutine.replay(model, trace=traces[0])
                traces.insert(0, poutine.trace(replayed).get_trace(*args, **kwargs))
            for name in names:
                value = _site_value(name, traces, model is not None)
                if s == 0:
                    numpy_dtype = torch.empty(0, dtype=value.dtype).numpy().dtype
                    shape = (1, num_samples, *value.shape)
                    draws[name] = np.empty(shape, dtype=numpy_dtype)
                draws[name][0, s] = value.cpu().numpy()
    return draws


def _dimension_sizes(arrays: Mapping, sites: Mapping, leading: int) -> dict[str, int]:
    """Size of every named dimension; all arrays must agree."""
    sizes, owner = {}, {}
    for name, array in arrays.items():
        shape = array.shape[leading:]
        dims = tuple(sites[name])
        if len(shape) != len(dims):
            raise ValueError(
                f"site {name!r} has shape {tuple(shape)} but sites names "
                f"{len(dims)} dimensions {dims}"
            )
        for dim, size in zip(dims, shape):
            if dim in sizes and sizes[dim] != size:
                raise ValueError(
                    f"dimension {dim!r} has size {sizes[dim]} in site {owner[dim]!r} "
                    f"but {size} in site {name!r}"
                )
            sizes[dim], owner[dim] = size, name
    return sizes


def _posterior_means(draws: Mapping, means: Mapping | None) -> dict[str, np.ndarray]:
    """Means given by the user, else the guide's ``{name}_loc``, else draw averages."""
    means = {} if means is None else means
    unknown = sorted(set(means) - set(draws))
    if unknown:
        raise ValueError(f"means names sites {unknown} that are not in sites")
    store = pyro.get_param_store()
    result = {}
    for name, array in draws.items():
        shape = array.shape[2:]
        if name in means:
            value = means[name]
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            value = np.asarray(value)
            if value.shape != shape:
                raise ValueError(
                    f"means[{name!r}] has shape {value.shape} but the site has {shape}"
                )
        elif f"{name}_loc" in store and tuple(store[f"{name}_loc"].shape) == shape:
            value = store[f"{name}_loc"].detach().cpu().numpy()
        else:
            logger.debug("site %r: posterior mean estimated from the draws", name)
            value = array.mean(axis=(0, 1))
        result[name] = value
    return result


def to_inference_data(
    guide,
    *,
    num_samples: int,
    sites: Mapping[str, Sequence[str]],
    coords: Mapping[str, Sequence] | None = None,
    model=None,
    model_args: tuple = (),
    model_kwargs: Mapping | None = None,
    means: Mapping | None = None,
    attrs: Mapping | None = None,
):
    """Draw from a fitted guide into an :class:`arviz.InferenceData` with named axes.

    The ``posterior`` group holds ``num_samples`` joint draws of every site in ``sites``
    with one chain (dimensions ``("chain", "draw", *sites[name])``). The
    ``posterior_means`` group holds the posterior means of the same sites without the
    chain and draw dimensions: ``means[name]`` if given, else the parameter
    ``f"{name}_loc"`` of the param store when its shape matches (the naming of
    :mod:`pyro_goldstone.guides`), else the average of the draws.

    With a ``model``, each draw also replays the model on the guide's values, so
    deterministic sites of the model (``pyro.deterministic``) can be asked for.

    .. note:: Every site must be drawn in full. A guide that subsamples (a plate with
        ``subsample_size``) must be called with arguments that turn subsampling off,
        passed as ``model_args``/``model_kwargs``; a subsampled site raises.

    Example::

        idata = to_inference_data(
            guide,
            num_samples=100,
            sites={"U": ("time", "word", "dim"), "V": ("time", "word", "dim")},
            coords={"time": years, "word": vocab},
        )
        idata.posterior_means["U"].sel(word="car")

    :param callable guide: the fitted guide.
    :param int num_samples: number of draws.
    :param dict sites: site name to the names of its dimensions, e.g.
        ``{"U": ("time", "user", "dim")}``; a site of shape ``(T, N, d)`` needs three.
    :param dict coords: dimension name to its labels (years or bin labels, words, the
        original user and item ids); dimensions without labels are numbered from 0.
    :param callable model: the model, needed only for its deterministic sites.
    :param tuple model_args: positional arguments of the guide and the model.
    :param dict model_kwargs: keyword arguments of the guide and the model.
    :param dict means: site name to its posterior mean, overriding the default.
    :param dict attrs: attributes stored on every group.
    :returns: the draws and the posterior means.
    :rtype: arviz.InferenceData
    :raises ValueError: if ``num_samples`` is not positive, a site is missing,
        observed or subsampled, or the sizes of a dimension disagree between sites,
        ``coords`` or ``means``; the message names the dimension and both sizes.
    """
    import arviz as az

    if isinstance(num_samples, bool) or not isinstance(num_samples, int):
        raise TypeError(f"num_samples must be an int, but got {num_samples!r}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, but got {num_samples}")
    coords = {dim: np.asarray(labels) for dim, labels in (coords or {}).items()}
    _check_sites(sites, coords)
    model_kwargs = dict(model_kwargs or {})

    draws = _draw(guide, model, model_args, model_kwargs, list(sites), num_samples)
    sizes = _dimension_sizes(draws, sites, leading=2)
    for dim, labels in coords.items():
        if len(labels) != sizes[dim]:
            raise ValueError(
                f"coords[{dim!r}] has {len(labels)} labels but dimension {dim!r} "
                f"has size {sizes[dim]}"
            )
    mean_arrays = _posterior_means(draws, means)

    dims = {name: list(site_dims) for name, site_dims in sites.items()}
    attrs = {"num_samples": num_samples, **(attrs or {})}
    datasets = {}
    for group, data, sample_dims in (
        ("posterior", draws, list(_SAMPLE_DIMS)),
        ("posterior_means", mean_arrays, []),
    ):
        datasets[group] = az.dict_to_dataset(
            data,
            coords=coords,
            dims=dims,
            default_dims=sample_dims,
            attrs=attrs,
            library=pyro,
        )
    idata = az.InferenceData(**datasets)
    logger.info("drew %d samples of the sites %s", num_samples, list(sites))
    return idata


def _check_words(words: Sequence[str]) -> None:
    seen = set()
    for index, word in enumerate(words):
        if not isinstance(word, str) or not word or word.split() != [word]:
            raise ValueError(
                f"word {index} ({word!r}) must be a non-empty string without whitespace"
            )
        if word in seen:
            raise ValueError(f"word {word!r} occurs twice")
        seen.add(word)


def write_word2vec(path, vectors, words: Sequence[str], *, precision: int = 6) -> None:
    """Write one matrix of vectors in the word2vec text format.

    The first line holds the number of words and the dimension; each further line a
    word and its coordinates, separated by single spaces.

    :param path: the file to write (UTF-8).
    :param vectors: the vectors, shape ``(N, d)``.
    :type vectors: torch.Tensor or numpy.ndarray
    :param words: the ``N`` words, unique and without whitespace.
    :param int precision: significant digits of each coordinate (default 6).
    :raises ValueError: if the shapes disagree or a word is empty, repeated or
        contains whitespace.
    """
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().cpu().numpy()
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must have shape (N, d), but got {vectors.shape}")
    if len(words) != len(vectors):
        raise ValueError(
            f"words has {len(words)} entries but vectors has {len(vectors)}"
        )
    _check_words(words)

    frame = pd.DataFrame(vectors, index=list(words))
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(f"{vectors.shape[0]} {vectors.shape[1]}\n")
        frame.to_csv(
            f,
            sep=" ",
            header=False,
            float_format=f"%.{precision}g",
            quoting=csv.QUOTE_NONE,
            lineterminator="\n",
        )


def export_word2vec(
    X,
    vocab: Sequence[str],
    directory,
    *,
    times: Sequence | None = None,
    present=None,
    prefix: str = "vectors",
    precision: int = 6,
) -> list[str]:
    """Write the vectors of each time step to its own word2vec text file.

    File ``t`` is ``{directory}/{prefix}_{times[t]}.txt``. Words absent from a time
    step (``present[t, i]`` false) are left out of that step's file.

    :param X: the vectors, shape ``(T, N, d)``, e.g. the posterior means.
    :type X: torch.Tensor or numpy.ndarray
    :param vocab: the ``N`` words, unique and without whitespace.
    :param directory: the folder to write into (created if missing).
    :param times: labels of the time steps for the file names (default ``0 .. T-1``).
    :param present: optional boolean mask of shape ``(T, N)``.
    :param str prefix: start of every file name.
    :param int precision: significant digits of each coordinate (default 6).
    :returns: the paths written, one per time step.
    :rtype: list
    :raises ValueError: if a shape or a length disagrees, a word is invalid, or a
        time label would not make a plain file name.
    """
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"X must have shape (T, N, d), but got {X.shape}")
    num_steps, num_words = X.shape[:2]
    if len(vocab) != num_words:
        raise ValueError(f"vocab has {len(vocab)} words but X has {num_words} vectors")
    _check_words(vocab)
    labels = [str(t) for t in (range(num_steps) if times is None else times)]
    if len(labels) != num_steps:
        raise ValueError(f"times has {len(labels)} labels but X has {num_steps} steps")
    if len(set(labels)) != num_steps or any(
        os.sep in label or not label.strip() for label in labels
    ):
        raise ValueError(f"times must be distinct plain file-name parts, got {labels}")
    if present is not None:
        if isinstance(present, torch.Tensor):
            present = present.detach().cpu().numpy()
        present = np.asarray(present)
        if present.shape != (num_steps, num_words) or present.dtype != np.bool_:
            raise ValueError(
                f"present must be a boolean mask of shape {(num_steps, num_words)}, "
                f"but got {present.dtype} {present.shape}"
            )

    os.makedirs(directory, exist_ok=True)
    paths = []
    words = np.asarray(vocab, dtype=object)
    for t, label in enumerate(labels):
        keep = slice(None) if present is None else present[t]
        path = os.path.join(directory, f"{prefix}_{label}.txt")
        write_word2vec(path, X[t][keep], list(words[keep]), precision=precision)
        paths.append(path)
    logger.info("wrote %d word2vec files to %s", len(paths), directory)
    return paths
