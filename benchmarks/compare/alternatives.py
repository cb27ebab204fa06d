# SPDX-License-Identifier: Apache-2.0
"""The alternatives to Goldstone steps that a user could try instead.

- :class:`TimeDCTAdam`: Pyro's :class:`pyro.optim.dct_adam.DCTAdam` with the time
  dimension of every time-indexed parameter marked, as DCTAdam requires.
- :class:`RiemannianGaugeFixer`: a gauge phase that descends per-step rotations
  ``R_t`` on the Stiefel manifold with :class:`geoopt.optim.RiemannianAdam` on the
  prior energy of ``X_t R_t`` (skipped with a logged message if ``geoopt`` is not
  installed).
- :func:`align_post_hoc`: sequential orthogonal Procrustes on the final means of a
  finished run, as diachronic-embedding tools align their time slices.
"""

from __future__ import annotations

import logging
import math
import time

import pyro
import torch
from pyro.optim.dct_adam import DCTAdam

from pyro_goldstone.gauge import (
    energy_from_overlaps,
    optimal_rotations,
    prior_energy,
    rotate,
)
from pyro_goldstone.gauge_phase import GaugeFixer
from pyro_goldstone.optim import GoldstonePyroOptim

try:
    import geoopt
except ImportError:  # the optional extra "bench"
    geoopt = None

__all__ = [
    "NO_CLIPPING",
    "RiemannianGaugeFixer",
    "TimeDCTAdam",
    "align_post_hoc",
    "param_snapshot",
    "restore_params",
    "riemannian_optim",
]

logger = logging.getLogger(__name__)

#: a clipping bound that switches DCTAdam's elementwise clamp off, as the Adam baselines
#: of the models do not clip
NO_CLIPPING = 1e30


class TimeDCTAdam(DCTAdam):
    """Pyro's DCTAdam with every parameter of ``num_steps`` steps along dim -3 marked.

    DCTAdam adds a frequency-domain Adam only for parameters with a ``_pyro_dct_dim``
    attribute; the guides of the three models keep their time steps in dimension -3
    of ``(T, N, d)`` tensors (means and scales), so those get ``_pyro_dct_dim = -3``.
    Pyro builds one torch optimiser per parameter on first use, so parameters created
    lazily by the guide are marked too.

    :param params: the parameters, as for :class:`torch.optim.Optimizer`.
    :param int num_steps: the number of time steps ``T``.
    :param options: keyword options of :class:`~pyro.optim.dct_adam.DCTAdam`.
    """

    def __init__(self, params, *, num_steps: int, **options):
        params = list(params)
        for param in params:
            if param.dim() >= 3 and param.shape[-3] == num_steps:
                param._pyro_dct_dim = -3
        super().__init__(params, **options)


class RiemannianGaugeFixer(GaugeFixer):
    """A gauge phase by Riemannian Adam on ``SO(d)`` instead of the package's solvers.

    Each phase starts from ``R_t = I`` (a :class:`geoopt.ManifoldParameter` on
    :class:`geoopt.Stiefel`, shape ``(T, d, d)``), takes ``num_steps`` steps of
    :class:`geoopt.optim.RiemannianAdam` (fresh state) on the prior energy of
    ``X_t R_t`` computed from the overlaps (:func:`~pyro_goldstone.gauge.
    energy_from_overlaps`, ``O(T d^3)`` per step) and hands the rotations to the
    :class:`~pyro_goldstone.gauge_phase.GaugeFixer` machinery, which rotates the means
    and the base optimiser's first moments exactly as for Goldstone steps. Starting at
    the identity, the retraction stays in ``SO(d)``: reflections are never removed. A
    phase that would raise the energy is rejected (identity rotations), as a Goldstone
    phase is.

    :param coupling: the :class:`~pyro_goldstone.coupling.Coupling` of the prior.
    :param int interval: base steps between phases.
    :param int num_steps: Riemannian Adam steps per phase.
    :param float lr: Riemannian Adam's learning rate.
    :raises ImportError: if ``geoopt`` is not installed.
    """

    def __init__(self, coupling, *, interval: int, num_steps: int, lr: float):
        if geoopt is None:
            raise ImportError("the Riemannian alternative needs geoopt")
        super().__init__(None, coupling, interval=interval, reflections="never")
        self.riemannian_steps = num_steps
        self.riemannian_lr = lr

    def _solve(self, views, S, M, heal: bool):
        T, d = S.shape[0], S.shape[-1]
        S, M = S.detach(), M.detach()
        energy_before = energy_from_overlaps(S, M, self.coupling)
        eye = torch.eye(d, dtype=S.dtype, device=S.device).repeat(T, 1, 1)
        R = geoopt.ManifoldParameter(eye.clone(), manifold=geoopt.Stiefel())
        optimizer = geoopt.optim.RiemannianAdam([R], lr=self.riemannian_lr)
        with torch.enable_grad():
            for _ in range(self.riemannian_steps):
                optimizer.zero_grad()
                energy_from_overlaps(S, M, self.coupling, R).backward()
                optimizer.step()
        rotations = R.detach()
        energy_after = energy_from_overlaps(S, M, self.coupling, rotations)
        if not energy_after < energy_before:
            return eye, energy_before, energy_before
        return rotations, energy_before, energy_after


def riemannian_optim(base, param_names, coupling, *, interval, num_steps, lr):
    """``base`` with a :class:`RiemannianGaugeFixer` phase after every ``interval``
    steps, or ``None`` if ``geoopt`` is not installed (the caller skips the row).

    The wrapper is a :class:`~pyro_goldstone.optim.GoldstonePyroOptim` whose gauge
    fixer is replaced, so parameter lookup, moment rotation and records are shared.

    :param base: the base Pyro optimiser (the one the Goldstone runs use).
    :param list param_names: the means that rotate together.
    :param coupling: the prior's coupling graph.
    :param int interval: base steps between phases.
    :param int num_steps: Riemannian Adam steps per phase.
    :param float lr: Riemannian Adam's learning rate.
    :rtype: GoldstonePyroOptim or None
    """
    if geoopt is None:
        return None
    optim = GoldstonePyroOptim(base, param_names, coupling, interval=interval)
    optim.fixer = RiemannianGaugeFixer(
        coupling, interval=interval, num_steps=num_steps, lr=lr
    )
    return optim


def param_snapshot() -> dict:
    """A copy of the param store: unconstrained tensors and constraints.

    :rtype: dict
    """
    store = pyro.get_param_store()
    params = {name: value.detach().clone() for name, value in store.named_parameters()}
    return {"params": params, "constraints": store.get_state()["constraints"]}


def restore_params(snapshot: dict) -> None:
    """Replace the param store by a copy of a :func:`param_snapshot`.

    :param dict snapshot: from :func:`param_snapshot`.
    """
    store = pyro.get_param_store()
    store.clear()
    params = {
        name: value.clone().requires_grad_()
        for name, value in snapshot["params"].items()
    }
    store.set_state({"params": params, "constraints": snapshot["constraints"]})


def align_post_hoc(param_names, coupling, repeats: int = 3) -> dict:
    """Align the means in the param store by sequential orthogonal Procrustes.

    The means named ``param_names`` are rotated in place by
    ``optimal_rotations(..., "procrustes", allow_reflections=True)`` (one sweep along
    the chain over ``O(d)``, the exact minimum of the prior energy over rotations);
    the time covers the overlaps, the sweep and the rotation, the fastest of
    ``repeats`` computations (a millisecond task on shared cores is easily delayed).

    :param list param_names: the means that share one rotation per time step.
    :param coupling: the prior's coupling graph (a chain or tree).
    :param int repeats: how often the alignment is computed and timed.
    :returns: ``energy_before``, ``energy_after`` and ``alignment_seconds``.
    :rtype: dict
    """
    store = pyro.get_param_store()
    unconstrained = dict(store.named_parameters())
    means = [unconstrained[name] for name in param_names]
    with torch.no_grad():
        before = prior_energy(means, coupling).item()
        seconds = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            rotations = optimal_rotations(
                means, coupling, "procrustes", allow_reflections=True
            )
            aligned = rotate(means, rotations)
            seconds = min(seconds, time.perf_counter() - start)
        for mean, value in zip(means, aligned):
            mean.copy_(value)
        after = prior_energy(means, coupling).item()
    logger.info(
        "post-hoc alignment: prior energy %.6g -> %.6g in %.3g s",
        before,
        after,
        seconds,
    )
    return {
        "energy_before": before,
        "energy_after": after,
        "alignment_seconds": seconds,
    }
