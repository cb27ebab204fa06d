# SPDX-License-Identifier: Apache-2.0
"""The gauge phase of Goldstone gradient descent for plain PyTorch parameters.

:class:`GaugeFixer` runs, after every ``interval`` steps of any optimiser, one gauge phase
on a group of embedding tensors that share one rotation per time step: it computes the
overlaps ``X_t^T X_t'``, finds the rotations ``R_t`` that lower the time-series prior
with :func:`~pyro_goldstone.gauge.solve_gauge`, and rotates the tensors in place,
``X_t <- X_t R_t``, together with the optimiser's first moments. The Pyro wrapper
:class:`~pyro_goldstone.optim.GoldstonePyroOptim` uses it internally.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Optional

import torch

from pyro_goldstone.coupling import Coupling
from pyro_goldstone.gauge import overlaps, solve_gauge

__all__ = [
    "DEFAULT_GAUGE_STEPS",
    "DEFAULT_INTERVAL",
    "FIRST_MOMENT_KEYS",
    "SECOND_MOMENT_KEYS",
    "GaugeFixer",
    "resolve_coupling",
]

logger = logging.getLogger(__name__)

#: Base steps between two gauge phases (see :class:`GaugeFixer` for the measurement).
DEFAULT_INTERVAL = 10
#: Natural-gradient steps per gauge phase.
DEFAULT_GAUGE_STEPS = 5
#: Optimiser state entries that transform like the gradient or the parameter (first
#: moments, ASGD's average). Centred RMSprop's ``grad_avg`` is left out on purpose: it
#: is subtracted squared from ``square_avg`` under a square root, which a rotated
#: ``grad_avg`` could make negative.
FIRST_MOMENT_KEYS = ("exp_avg", "momentum_buffer", "ax")
#: Optimiser state entries that average squared gradients per coordinate (Adam's and
#: AMSGrad's, Adagrad's sum, RMSprop's average).
SECOND_MOMENT_KEYS = ("exp_avg_sq", "max_exp_avg_sq", "sum", "square_avg")

_METHODS = ("natural_gradient", "taylor", "procrustes")
_REFLECTIONS = ("auto", "first", "always", "never")
_MOMENTS = ("rotate", "first", "keep", "reset")
_STATE_KEYS = ("num_steps", "num_phases", "gauge_fields", "records")


def resolve_coupling(coupling) -> Coupling:
    """Return the :class:`~pyro_goldstone.coupling.Coupling` of a coupling or a prior.

    :param coupling: a :class:`~pyro_goldstone.coupling.Coupling`, or any object (such as
        a prior distribution) whose ``.coupling`` attribute is one.
    :rtype: Coupling
    :raises TypeError: if neither holds.
    """
    if isinstance(coupling, Coupling):
        return coupling
    inner = getattr(coupling, "coupling", None)
    if isinstance(inner, Coupling):
        return inner
    raise TypeError(
        "coupling must be a Coupling or an object with a .coupling attribute, "
        f"but got {type(coupling).__name__}"
    )


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, but got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, but got {value}")
    return value


def _check_choice(value, name: str, choices: tuple) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, but got {value!r}")
    return value


def _moved(tensor: torch.Tensor, time_dim: int, embed_dim: int) -> torch.Tensor:
    """A view of ``tensor`` with time first and embedding last, shape ``(T, ..., d)``."""
    return tensor.movedim((time_dim, embed_dim), (0, -1))


def _rotate_in_place(tensor, rotations, time_dim: int, embed_dim: int) -> None:
    view = _moved(tensor, time_dim, embed_dim)
    flat = view.reshape(view.shape[0], -1, view.shape[-1])
    view.copy_((flat @ rotations.to(tensor.dtype)).reshape(view.shape))


def _as_optimizers(optimizer) -> list:
    if optimizer is None:
        return []
    items = [optimizer] if not isinstance(optimizer, Sequence) else list(optimizer)
    result = []
    for item in items:
        # learning-rate schedulers keep the optimiser they drive in .optimizer
        item = getattr(item, "optimizer", item)
        if not isinstance(item, torch.optim.Optimizer):
            raise TypeError(
                "optimizer must be a torch.optim.Optimizer, a scheduler or a sequence "
                f"of them, but got {type(item).__name__}"
            )
        result.append(item)
    return result


class GaugeFixer:
    """Remove Goldstone modes from embedding tensors after ordinary optimiser steps.

    Call :meth:`step` after every step of a :class:`torch.optim.Optimizer`; after every
    ``interval`` calls it runs one gauge phase. A phase computes the overlaps of the
    parameters (cost ``O(|E| N d^2)``), minimises the prior energy over one rotation per
    time step (cost ``O(T d^3)``, independent of ``N``), and rotates in place

    .. math::

        X_t \\leftarrow X_t R_t, \\qquad m_t \\leftarrow m_t R_t,

    where ``m`` are the optimiser's first moments (``exp_avg``, ``momentum_buffer``).
    All tensors keep their identity, so the optimiser's state stays attached. The local
    losses are rotation invariant, so a phase only ever lowers the prior.

    **Reflections.** Time steps that were initialised independently sit in different
    reflection sectors that no rotation can join. A phase then starts with a Procrustes
    sweep over ``O(d)`` along a spanning tree of the coupling, which heals such defects.
    With ``reflections="auto"`` (default) a phase does so whenever some edge's overlap
    ``M_tt' = X_t^T X_t'`` has a negative determinant, which is exactly when the best
    orthogonal map between the two steps is a reflection (a check of ``O(|E| d^3)``);
    ``"first"`` does so in the first phase only, ``"always"`` in every phase and
    ``"never"`` only ever rotates within ``SO(d)``. Measured on a dense dynamic
    factorisation (``T = 30``, ``20 x 20``, ``d = 3``, Adam, means drawn independently
    per step, 500 steps): sectors re-form after the first phase while the fit takes
    shape, so ``"first"`` ended at a prior energy of 2.8e3 and ``"auto"`` at 28, the
    same as ``"always"``, with sweeps in 3 of its 50 phases.

    **Optimiser state.** ``moments="rotate"`` (default) rotates every first moment of
    the optimiser (the entries :data:`FIRST_MOMENT_KEYS` of the parameter's shape) with
    the parameter, ``m_t <- m_t R_t``, since the gradient transforms like it. Second
    moments (:data:`SECOND_MOMENT_KEYS`) are per-coordinate averages of squared
    gradients and have no exact transform; they are mixed as the squares of a rotated
    vector with independent coordinates would be, ``v_t <- v_t (R_t * R_t)`` (entrywise
    square), which keeps them positive and keeps their sum over the embedding
    dimension. ``"first"`` rotates the first moments only, ``"keep"`` leaves all state
    alone and ``"reset"`` drops the state of the rotated parameters. Centred RMSprop's
    state (``grad_avg``) is left alone by every policy but ``"reset"``, since its
    ``square_avg - grad_avg^2`` must stay positive.

    Measured on the dynamic word embeddings of ``models/dwe.py`` (2,000 words, 24
    bins, ``d = 50``, ClippedAdam, diffusion 0.001, 200 steps): prior energy 1.16e5
    with ``"rotate"``, 1.17e5 with ``"keep"``, 1.24e5 with Adam alone, but 2.8e6 with
    ``"first"``: a large rotation puts big first moments on coordinates whose second
    moments are small, and Adam's steps there blow up. On the ``d = 3`` problem of
    :class:`~pyro_goldstone.optim.GoldstonePyroOptim` the policies differ little.

    **Defaults.** See :class:`~pyro_goldstone.optim.GoldstonePyroOptim` for the
    measurements behind ``interval`` and ``gauge_steps``.

    Usage with plain PyTorch (``U`` and ``V`` are ``torch.nn.Parameter`` of shapes
    ``(T, n, d)`` and ``(T, m, d)``)::

        optimizer = torch.optim.Adam([U, V], lr=0.05)
        fixer = GaugeFixer([U, V], Coupling.chain(T, 10.0), optimizer=optimizer)
        for step in range(num_steps):
            optimizer.zero_grad()
            loss(U, V).backward()
            optimizer.step()
            fixer.step()  # a gauge phase after every ``interval`` steps

    :param params: a tensor or a sequence of tensors that share one rotation per time
        step (e.g. user and item embeddings), each with ``T`` along ``time_dim`` and
        ``d`` along ``embed_dim``; or ``None`` to :meth:`bind` them later.
    :param coupling: the :class:`~pyro_goldstone.coupling.Coupling` of the prior, or
        an object with a ``.coupling`` attribute.
    :param optimizer: a :class:`torch.optim.Optimizer` (or scheduler, or a sequence of
        them) whose state for ``params`` follows ``moments``; ``None`` for none.
    :param names: names of the parameters, used in messages and records.
    :param int time_dim: the time dimension of every parameter (default: 0).
    :param int embed_dim: the embedding dimension of every parameter (default: -1).
    :param interval: steps between gauge phases, or ``None`` to run phases only when
        :meth:`gauge_phase` is called (default: :data:`DEFAULT_INTERVAL`).
    :type interval: int or None
    :param int gauge_steps: natural-gradient steps per phase; ignored by
        ``"procrustes"`` (default: :data:`DEFAULT_GAUGE_STEPS`).
    :param str method: ``"natural_gradient"``, ``"taylor"`` or ``"procrustes"``, passed
        to :func:`~pyro_goldstone.gauge.solve_gauge` (default: ``"natural_gradient"``).
    :param str reflections: ``"auto"``, ``"first"``, ``"always"`` or ``"never"``
        (default: ``"auto"``).
    :param str moments: ``"rotate"``, ``"first"``, ``"keep"`` or ``"reset"``
        (default: ``"rotate"``).
    :raises TypeError: if an argument has the wrong type.
    :raises ValueError: if an option is unknown or the parameters do not fit together
        or with the coupling.
    """

    def __init__(
        self,
        params,
        coupling,
        *,
        optimizer=None,
        names: Optional[Sequence[str]] = None,
        time_dim: int = 0,
        embed_dim: int = -1,
        interval: Optional[int] = DEFAULT_INTERVAL,
        gauge_steps: int = DEFAULT_GAUGE_STEPS,
        method: str = "natural_gradient",
        reflections: str = "auto",
        moments: str = "rotate",
    ):
        self.coupling = resolve_coupling(coupling)
        if isinstance(time_dim, bool) or not isinstance(time_dim, int):
            raise TypeError(f"time_dim must be an int, but got {time_dim!r}")
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int):
            raise TypeError(f"embed_dim must be an int, but got {embed_dim!r}")
        if time_dim == embed_dim:
            raise ValueError(
                f"time_dim={time_dim} and embed_dim={embed_dim} name the same dimension"
            )
        if interval is not None:
            _check_int(interval, "interval", 1)
        self.time_dim = time_dim
        self.embed_dim = embed_dim
        self.interval = interval
        self.gauge_steps = _check_int(gauge_steps, "gauge_steps", 1)
        self.method = _check_choice(method, "method", _METHODS)
        if self.method == "procrustes" and not self.coupling.is_tree:
            raise ValueError(
                "method='procrustes' is exact only on trees (chains included), but the "
                "coupling graph has a cycle; use method='natural_gradient'"
            )
        self.reflections = _check_choice(reflections, "reflections", _REFLECTIONS)
        self._tree_mask = None
        self.moments = _check_choice(moments, "moments", _MOMENTS)
        self.optimizers = _as_optimizers(optimizer)

        self.params: Optional[list] = None
        self.names: Optional[list] = None
        self.num_steps = 0
        self.num_phases = 0
        self.gauge_fields: Optional[torch.Tensor] = None
        self.records: list = []
        if params is not None:
            self.bind(params, names)

    # ----- binding and validation -----

    def bind(self, params, names: Optional[Sequence[str]] = None) -> None:
        """Check and attach the tensors that later phases rotate.

        Nothing changes unless all checks pass.

        :param params: a tensor or a sequence of tensors, as in the constructor.
        :param names: their names for messages (default: ``params[i]``).
        :raises TypeError: if a parameter is not a floating-point tensor.
        :raises ValueError: if a parameter is a flat vector, if ``time_dim`` and
            ``embed_dim`` do not fit it, or if the time sizes, embedding sizes, devices
            or dtypes disagree with each other or with the coupling.
        """
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        if not params:
            raise ValueError("params must contain at least one tensor")
        if names is None:
            names = [f"params[{i}]" for i in range(len(params))]
        names = [str(name) for name in names]
        if len(names) != len(params):
            raise ValueError(
                f"names must name every parameter: {len(params)} params, "
                f"{len(names)} names"
            )
        for name, param in zip(names, params):
            self._check_param(name, param)

        first = params[0]
        embed_size = first.shape[self.embed_dim]
        for name, param in zip(names[1:], params[1:]):
            if param.shape[self.embed_dim] != embed_size:
                raise ValueError(
                    f"parameter {name!r} has embedding size {param.shape[self.embed_dim]}"
                    f" along embed_dim={self.embed_dim}, but {names[0]!r} has "
                    f"{embed_size}; parameters that rotate together need one size"
                )
            if param.device != first.device or param.dtype != first.dtype:
                raise ValueError(
                    f"parameter {name!r} is {param.dtype} on {param.device}, but "
                    f"{names[0]!r} is {first.dtype} on {first.device}"
                )
        shape = (self.coupling.num_steps, embed_size, embed_size)
        if self.gauge_fields is not None and tuple(self.gauge_fields.shape) != shape:
            raise ValueError(
                f"the stored gauge fields have shape {tuple(self.gauge_fields.shape)}, "
                f"but parameters of embedding size {embed_size} need {shape}"
            )
        self.params, self.names = params, names

    def _check_param(self, name: str, param) -> None:
        if not isinstance(param, torch.Tensor):
            raise TypeError(
                f"parameter {name!r} must be a tensor, but got {type(param).__name__}"
            )
        if not param.dtype.is_floating_point:
            raise TypeError(
                f"parameter {name!r} must be floating point, not {param.dtype}"
            )
        if param.dim() < 2:
            raise ValueError(
                f"parameter {name!r} has shape {tuple(param.shape)}, a flat vector; a "
                "gauge phase needs the means with separate time and embedding "
                "dimensions, e.g. shape (T, N, d). Guides that keep all means in one "
                "vector (AutoDiagonalNormal, AutoMultivariateNormal, "
                "AutoLowRankMultivariateNormal) cannot be used; use AutoNormal, "
                "AutoDelta or a guide with its own pyro.param per embedding"
            )
        ndim = param.dim()
        for dim_name, dim in (
            ("time_dim", self.time_dim),
            ("embed_dim", self.embed_dim),
        ):
            if not -ndim <= dim < ndim:
                raise ValueError(
                    f"{dim_name}={dim} is out of range for parameter {name!r} of shape "
                    f"{tuple(param.shape)}"
                )
        if self.time_dim % ndim == self.embed_dim % ndim:
            raise ValueError(
                f"time_dim={self.time_dim} and embed_dim={self.embed_dim} name the same "
                f"dimension of parameter {name!r} of shape {tuple(param.shape)}"
            )
        num_steps = param.shape[self.time_dim]
        if num_steps != self.coupling.num_steps:
            raise ValueError(
                f"parameter {name!r} has {num_steps} time steps along "
                f"time_dim={self.time_dim} (shape {tuple(param.shape)}), but the "
                f"coupling has {self.coupling.num_steps}"
            )

    def _locate_non_finite(self) -> str:
        for name, param in zip(self.names, self.params):
            bad = ~torch.isfinite(param)
            if bad.any():
                index = tuple(int(i) for i in bad.nonzero()[0])
                return (
                    f"parameter {name!r} has {int(bad.sum())} non-finite values, the "
                    f"first at index {index} (time step {index[self.time_dim]})"
                )
        return "the overlaps X_t^T X_t overflow"

    # ----- the gauge phase -----

    def step(self) -> Optional[dict]:
        """Count one optimiser step and run a gauge phase if one is due.

        :returns: the phase's record (see :meth:`gauge_phase`), or ``None``.
        :rtype: dict or None
        """
        if self.params is None:
            raise RuntimeError("GaugeFixer.step() needs parameters; call bind() first")
        self.num_steps += 1
        if self.interval is not None and self.num_steps % self.interval == 0:
            return self.gauge_phase()
        return None

    __call__ = step

    def gauge_phase(self) -> dict:
        """Run one gauge phase now and rotate the parameters in place.

        :returns: a record with keys ``step``, ``phase``, ``method``, ``reflections``
            (whether reflections were allowed), ``energy_before``, ``energy_after``
            (prior energy of the parameters) and ``rotation_angle`` (largest over time
            steps of ``2 asin(||R_t - I||_F / sqrt(8))``, the angle of a rotation
            within one plane, in radians); it is also appended to :attr:`records`.
        :rtype: dict
        :raises ValueError: if a parameter has non-finite values; nothing is rotated.
        """
        if self.params is None:
            raise RuntimeError("GaugeFixer.gauge_phase() needs parameters; call bind()")
        views = [_moved(p, self.time_dim, self.embed_dim) for p in self.params]
        views = [v.reshape(v.shape[0], -1, v.shape[-1]) for v in views]
        with torch.no_grad():
            S, M = overlaps(views, self.coupling)
            if not bool(torch.isfinite(S).all()):
                raise ValueError(
                    f"{self._locate_non_finite()}; no rotation was applied"
                )
            heal = self._heal(M)
            rotations, energy_before, energy_after = self._solve(views, S, M, heal)
            for param in self.params:
                _rotate_in_place(param, rotations, self.time_dim, self.embed_dim)
            self._transform_moments(rotations)
            record = self._record(rotations, energy_before, energy_after, heal)
        self.num_phases += 1
        self.records.append(record)
        logger.debug(
            "gauge phase %d at step %d (%s%s): prior energy %.6g -> %.6g, "
            "rotation angle %.3g",
            record["phase"],
            record["step"],
            record["method"],
            ", reflections" if heal else "",
            record["energy_before"],
            record["energy_after"],
            record["rotation_angle"],
        )
        return record

    def _heal(self, M: torch.Tensor) -> bool:
        """Whether this phase starts with a sweep over ``O(d)`` (see the class)."""
        if self.reflections == "auto":
            # the sign of det M_tt' is the determinant of the best orthogonal map
            # between the two steps; slogdet neither overflows nor underflows for large d.
            # Only the sweep's tree edges count: the product of the signs around a cycle
            # is the same in every gauge, so a sweep cannot mend an off-tree edge
            signs = torch.linalg.slogdet(M[self._tree_edges(M.device)]).sign
            return bool((signs < 0).any())
        if self.reflections == "first":
            return self.num_phases == 0
        return self.reflections == "always"

    def _tree_edges(self, device) -> torch.Tensor:
        """Mask ``(E,)`` of the coupling's edges that lie on its spanning tree."""
        if self._tree_mask is None or self._tree_mask.device != device:
            parents, children, _ = self.coupling.spanning_tree()
            tree = set(zip(parents.tolist(), children.tolist()))
            mask = [
                (a, b) in tree or (b, a) in tree
                for a, b in self.coupling.edges.tolist()
            ]
            self._tree_mask = torch.tensor(mask, dtype=torch.bool, device=device)
        return self._tree_mask

    def _solve(self, views, S, M, heal: bool):
        rotations = None
        if heal or self.method == "procrustes":
            if self.coupling.is_tree:
                # the sweep is the exact minimum on a tree; nothing is left to polish
                result = solve_gauge(
                    views,
                    self.coupling,
                    "procrustes",
                    allow_reflections=heal,
                    overlaps=(S, M),
                )
                if heal:
                    self.gauge_fields = None
                return result.rotations, result.energy_before, result.energy_after
            # a graph with cycles: a sweep over O(d) along a maximum-weight spanning
            # tree (kept only if it lowers the energy; no natural-gradient step yet)
            result = solve_gauge(
                views,
                self.coupling,
                "natural_gradient",
                allow_reflections=True,
                num_steps=0,
                overlaps=(S, M),
            )
            rotations, energy_before = result.rotations, result.energy_before
            # overlaps of the rotated embeddings, without another pass over them
            edges = self.coupling.edges.to(S.device)
            S = rotations.mT @ S @ rotations
            M = rotations[edges[:, 0]].mT @ M @ rotations[edges[:, 1]]
            # the sweep moved to a new frame: the old gauge fields no longer apply
            self.gauge_fields = None

        gauge_fields = self.gauge_fields
        if gauge_fields is not None:
            gauge_fields = gauge_fields.to(device=S.device, dtype=S.dtype)
        result = solve_gauge(
            views,
            self.coupling,
            self.method,
            gauge_fields=gauge_fields,
            num_steps=self.gauge_steps,
            overlaps=(S, M),
        )
        self.gauge_fields = result.gauge_fields
        if rotations is None:
            return result.rotations, result.energy_before, result.energy_after
        return rotations @ result.rotations, energy_before, result.energy_after

    def _transform_moments(self, rotations) -> None:
        if self.moments == "keep":
            return
        squares = rotations.square()
        for optimizer in self.optimizers:
            for param in self.params:
                state = optimizer.state.get(param)
                if not state:
                    continue
                if self.moments == "reset":
                    del optimizer.state[param]
                    continue
                keys = [(FIRST_MOMENT_KEYS, rotations)]
                if self.moments == "rotate" and "grad_avg" not in state:
                    keys.append((SECOND_MOMENT_KEYS, squares))
                for names, matrices in keys:
                    for key in names:
                        value = state.get(key)
                        if (
                            isinstance(value, torch.Tensor)
                            and value.shape == param.shape
                        ):
                            _rotate_in_place(
                                value, matrices, self.time_dim, self.embed_dim
                            )

    def _record(self, rotations, energy_before, energy_after, heal: bool) -> dict:
        eye = torch.eye(
            rotations.shape[-1], dtype=rotations.dtype, device=rotations.device
        )
        chord = torch.linalg.matrix_norm(rotations - eye).max() / math.sqrt(8.0)
        angle = 2.0 * torch.asin(chord.clamp(max=1.0))
        # one transfer of three numbers from the device
        values = torch.stack([energy_before, energy_after, angle]).tolist()
        return {
            "step": self.num_steps,
            "phase": self.num_phases,
            "method": self.method,
            "reflections": heal,
            "energy_before": values[0],
            "energy_after": values[1],
            "rotation_angle": values[2],
        }

    # ----- checkpointing -----

    def state_dict(self) -> dict:
        """The step counter, phase counter, gauge fields and records.

        :rtype: dict
        """
        return {
            "num_steps": self.num_steps,
            "num_phases": self.num_phases,
            "gauge_fields": self.gauge_fields,
            "records": [dict(record) for record in self.records],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`; nothing changes if it is malformed.

        :param dict state: a dictionary from :meth:`state_dict`.
        :raises TypeError: if ``state`` is not such a dictionary.
        :raises ValueError: if keys are missing or the gauge fields do not fit.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, but got {type(state).__name__}")
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"state lacks the keys {missing}")
        num_steps = _check_int(state["num_steps"], "state['num_steps']", 0)
        num_phases = _check_int(state["num_phases"], "state['num_phases']", 0)
        gauge_fields = state["gauge_fields"]
        if gauge_fields is not None:
            expected = (self.coupling.num_steps,)
            if not isinstance(gauge_fields, torch.Tensor) or gauge_fields.dim() != 3:
                raise ValueError(
                    "state['gauge_fields'] must be None or a (T, d, d) tensor"
                )
            if tuple(gauge_fields.shape[:1]) != expected:
                raise ValueError(
                    f"state['gauge_fields'] has shape {tuple(gauge_fields.shape)}, but "
                    f"the coupling has {expected[0]} time steps"
                )
            if self.params is not None:
                size = self.params[0].shape[self.embed_dim]
                if tuple(gauge_fields.shape[1:]) != (size, size):
                    raise ValueError(
                        f"state['gauge_fields'] has shape {tuple(gauge_fields.shape)}, "
                        f"but the parameters have embedding size {size}"
                    )
        try:
            records = [dict(record) for record in state["records"]]
        except (TypeError, ValueError) as error:
            raise ValueError("state['records'] must be a list of dicts") from error
        self.num_steps, self.num_phases = num_steps, num_phases
        self.gauge_fields = gauge_fields
        self.records = records
