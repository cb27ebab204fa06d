# SPDX-License-Identifier: Apache-2.0
"""Mean-field Gaussian guides for time-indexed embeddings of shape ``(T, N, d)``.

:class:`MeanFieldEmbedding` keeps a mean ``loc`` and a positive standard deviation
``scale`` of shape ``(T, N, d)`` for one sample site in Pyro's param store, under the
names ``f"{site}_loc"`` and ``f"{site}_scale"``. The means are what
:class:`~pyro_goldstone.optim.GoldstonePyroOptim` rotates; pass their names (one list
for all sites that share a rotation, e.g. users and items) as its ``param_names``.

Usage pattern for model authors (copy it). Without subsampling::

    import pyro
    import pyro.distributions as dist
    from pyro_goldstone.distributions import GaussianMarkovChain
    from pyro_goldstone.guides import MeanFieldEmbedding, embedding_rows

    T, N, d = 10, 50, 3
    guide_x = MeanFieldEmbedding("x", T, N, d)

    def model(y):  # y: (T, N) observations of the vectors' first coordinate
        x = pyro.sample("x", GaussianMarkovChain(T, N, d, strength=10.0, sigma0=1.0))
        with pyro.plate("vectors", N, dim=-1), pyro.plate("time", T, dim=-2):
            pyro.sample("y", dist.Normal(x[..., 0], 1.0), obs=y)

    def guide(y):
        guide_x()

With subsampling over the ``N`` vectors, build the plate first, draw the site's rows
inside :func:`embedding_rows` (it scales the site by the
float ``N / B``) and give the prior ``B`` vectors; observations go inside the plate as
usual, which scales them by the same ``N / B``::

    def model(y, batch_size=None):
        vectors = pyro.plate("vectors", N, subsample_size=batch_size, dim=-1)
        with embedding_rows(vectors) as rows:
            prior = GaussianMarkovChain(T, len(rows), d, strength=10.0, sigma0=1.0)
            x = pyro.sample("x", prior)
        with vectors, pyro.plate("time", T, dim=-2):
            pyro.sample("y", dist.Normal(x[..., 0], 1.0), obs=y[:, rows])

    def guide(y, batch_size=None):
        vectors = pyro.plate("vectors", N, subsample_size=batch_size, dim=-1)
        with embedding_rows(vectors) as rows:
            guide_x(rows)

The guide's plate draws the indices and the model replays them, so both see the same
rows. Prefer :class:`~pyro.infer.TraceMeanField_ELBO`: the KL divergence between this
guide and the priors of :mod:`pyro_goldstone.distributions` is computed in closed form.

Pyro's :class:`~pyro.infer.autoguide.AutoNormal` also works with these priors when
nothing is subsampled (its means are named ``"AutoNormal.locs.<site>"``); it cannot
subsample the ``N`` vectors, which sit inside the event shape. Its default
initialisation draws from the prior, so an improper prior (no ``sigma0``) needs another
``init_loc_fn`` such as :func:`~pyro.infer.autoguide.initialization.init_to_value`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Union

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints

from pyro_goldstone.distributions import _check_count, _check_positive

__all__ = ["MeanFieldEmbedding", "embedding_rows"]


class MeanFieldEmbedding:
    """Mean-field Normal guide for one ``(T, N, d)`` embedding site.

    Calling the guide samples ``Normal(loc, scale).to_event(3)`` at ``site_name``, or
    only the given rows ``loc[:, rows]`` for a minibatch. The means start as small
    random vectors (zero is a saddle point of every factorisation model); by default one
    draw is shared by all time steps, because independent draws per step settle into
    different reflection sectors that no rotation can remove.

    :param str site_name: name of the sample site in the model.
    :param int num_steps: number of time steps ``T``.
    :param int num_vectors: number of embedding vectors ``N`` (the full size, also when
        subsampling).
    :param int dim: embedding dimension ``d``.
    :param float init_scale: initial standard deviation of the guide (default: 0.01).
    :param float loc_scale: standard deviation of the random initial means
        (default: 0.1).
    :param bool shared_init: start every time step from one shared draw (default) or
        draw each step independently.
    :param torch.dtype dtype: dtype of the parameters (default:
        ``torch.get_default_dtype()``).
    :param device: device of the parameters (default: CPU).
    :raises TypeError: if ``site_name`` is not a string or a size is not an int.
    :raises ValueError: if a size is smaller than 1 or a scale is not positive and
        finite.
    """

    def __init__(
        self,
        site_name: str,
        num_steps: int,
        num_vectors: int,
        dim: int,
        *,
        init_scale: float = 0.01,
        loc_scale: float = 0.1,
        shared_init: bool = True,
        dtype: Optional[torch.dtype] = None,
        device: Union[str, torch.device, None] = None,
    ):
        if not isinstance(site_name, str) or not site_name:
            raise TypeError(f"site_name must be a non-empty str, but got {site_name!r}")
        self.site_name = site_name
        self.shape = torch.Size(
            (
                _check_count(num_steps, "num_steps"),
                _check_count(num_vectors, "num_vectors"),
                _check_count(dim, "dim"),
            )
        )
        self.init_scale = _check_positive(init_scale, "init_scale")
        self.loc_scale = _check_positive(loc_scale, "loc_scale")
        self.shared_init = bool(shared_init)
        self.dtype = torch.get_default_dtype() if dtype is None else dtype
        self.device = torch.device("cpu") if device is None else torch.device(device)

    @property
    def loc_name(self) -> str:
        """Param-store name of the means, ``f"{site_name}_loc"``."""
        return f"{self.site_name}_loc"

    @property
    def scale_name(self) -> str:
        """Param-store name of the standard deviations, ``f"{site_name}_scale"``."""
        return f"{self.site_name}_scale"

    def _init_loc(self) -> torch.Tensor:
        T, N, d = self.shape
        draw_shape = (1, N, d) if self.shared_init else (T, N, d)
        draw = torch.randn(draw_shape, dtype=self.dtype, device=self.device)
        return (self.loc_scale * draw).expand(T, N, d).clone()

    def _init_scale(self) -> torch.Tensor:
        return torch.full(
            self.shape, self.init_scale, dtype=self.dtype, device=self.device
        )

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Register (on first use) and return the guide's parameters.

        :returns: ``(loc, scale)``, each of shape ``(T, N, d)``.
        :rtype: tuple
        :raises ValueError: if the param store holds tensors of another shape under
            these names.
        """
        loc = pyro.param(self.loc_name, self._init_loc)
        scale = pyro.param(
            self.scale_name, self._init_scale, constraint=constraints.positive
        )
        for name, value in ((self.loc_name, loc), (self.scale_name, scale)):
            if value.shape != self.shape:
                raise ValueError(
                    f"param store entry {name!r} has shape {tuple(value.shape)}, but "
                    f"this guide expects {tuple(self.shape)}; clear the param store "
                    "or use another site_name"
                )
        return loc, scale

    def __call__(self, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Sample the site, all ``N`` vectors or only the minibatch ``rows``.

        :param torch.Tensor rows: optional indices into the ``N`` vectors, shape
            ``(B,)``, e.g. from :func:`embedding_rows`.
        :returns: a sample of shape ``(T, N, d)`` or ``(T, B, d)``.
        :rtype: torch.Tensor
        :raises ValueError: if ``rows`` is not a 1-D integer tensor.
        """
        loc, scale = self.params()
        if rows is not None:
            if not isinstance(rows, torch.Tensor) or rows.dim() != 1:
                raise ValueError("rows must be a 1-D tensor of vector indices")
            if rows.dtype not in (torch.long, torch.int32):
                raise ValueError(f"rows must hold integers, but has dtype {rows.dtype}")
            rows = rows.to(loc.device)
            loc, scale = loc[:, rows], scale[:, rows]
        return pyro.sample(self.site_name, dist.Normal(loc, scale).to_event(3))

    def __repr__(self) -> str:
        T, N, d = self.shape
        return f"MeanFieldEmbedding({self.site_name!r}, T={T}, N={N}, d={d})"


@contextmanager
def embedding_rows(plate) -> Iterator[torch.Tensor]:
    """Draw the minibatch rows of a ``(T, N, d)`` site and scale it by ``N / B``.

    Use it in the model around the prior site and in the guide around the guide site,
    with the same (possibly subsampled) :class:`pyro.plate` over the ``N`` vectors;
    the site is not placed inside the plate itself (its batch dimension is not the
    vectors' dimension), so the plate's own scaling is applied here instead.

    :param pyro.plate plate: a plate of size ``N``, possibly with ``subsample_size=B``.
    :returns: the context yields the row indices, a ``LongTensor`` of shape ``(B,)``.
    :raises TypeError: if ``plate`` is not a :class:`pyro.plate`.
    """
    if not isinstance(plate, poutine.subsample_messenger.SubsampleMessenger):
        raise TypeError(f"plate must be a pyro.plate, but got {type(plate).__name__}")
    # a float ratio: an integer division would bias the ELBO when B does not divide N
    scale = plate.size / plate.subsample_size
    with poutine.scale(scale=scale):
        yield plate.indices
