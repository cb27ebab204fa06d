# SPDX-License-Identifier: Apache-2.0
"""Synthetic data and initialisations for the dense dynamic matrix factorisation.

The paper's first experiment (SPEC section 4.1) fits ``Y_t ~ U_t V_t^T`` to
*time-independent* data ``Y_t = Y = A B^T + noise`` with standard normal ``A`` and ``B``:
at the optimum every time step has the same embeddings (up to one common rotation), so the
points of each embedding vector over time contract to one point and the prior energy of
the fit goes to its minimum. :func:`make_dynamic_mf_data` generates these data and, as an
option, data whose true factors drift slowly over time and are rotated per step by known
random rotations (the rotations leave ``A_t B_t^T`` unchanged; they are the gauge a fit
cannot recover and a gauge fixer has to remove before factors are compared).

Two initialisations of the embedding means are provided (SPEC section 2c):

- :func:`twisted_init`: one random draw shared by every time step, then rotated by a
  rotation that turns smoothly along the chain. Only Goldstone modes (continuous relative
  rotations) separate the time steps.
- :func:`independent_init`: an independent draw for every time step. Neighbouring time
  steps then differ by arbitrary orthogonal matrices, reflections included, which no
  rotation and hence no gradient method can remove.

Every function takes ``dtype``, ``device`` and an optional :class:`torch.Generator` (which
must live on ``device``); without one, PyTorch's global generator is used, so
``pyro.set_rng_seed`` makes the draws reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, Optional, Union

import torch

__all__ = [
    "DynamicMFData",
    "independent_init",
    "make_dynamic_mf_data",
    "random_rotations",
    "twisted_init",
]

_Sizes = Union[int, Sequence[int]]


class DynamicMFData(NamedTuple):
    """Synthetic data of a dense dynamic matrix factorisation.

    :ivar torch.Tensor Y: observations of shape ``(T, n, m)``.
    :ivar torch.Tensor A: true row factors of shape ``(T, n, d)``, rotated by ``rotations``.
    :ivar torch.Tensor B: true column factors of shape ``(T, m, d)``, rotated likewise.
    :ivar torch.Tensor rotations: the known rotations ``(T, d, d)`` applied to the true
        factors (identities unless ``rotate=True``).
    :ivar float noise: standard deviation of the Gaussian noise in ``Y``.
    """

    Y: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    rotations: torch.Tensor
    noise: float


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, but got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, but got {value}")
    return value


def _check_non_negative(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, but got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be finite and non-negative, but got {value}")
    return float(value)


def _check_sizes(sizes: _Sizes) -> tuple[int, ...]:
    if isinstance(sizes, int) and not isinstance(sizes, bool):
        return (_check_positive_int(sizes, "num_vectors"),)
    if not isinstance(sizes, Sequence) or len(sizes) == 0:
        raise TypeError(
            f"num_vectors must be an int or a non-empty sequence of ints, but got {sizes!r}"
        )
    return tuple(_check_positive_int(n, "num_vectors") for n in sizes)


def _split(X: torch.Tensor, sizes: tuple[int, ...], single: bool):
    if single:
        return X
    return list(torch.split(X, sizes, dim=1))


def random_rotations(
    num: int,
    dim: int,
    *,
    generator: Optional[torch.Generator] = None,
    dtype: Optional[torch.dtype] = None,
    device=None,
) -> torch.Tensor:
    """Independent rotations drawn uniformly (Haar measure) from ``SO(dim)``.

    Uses the QR decomposition of a Gaussian matrix with the signs of ``R``'s diagonal
    absorbed into ``Q``, then flips one column where the determinant is negative.

    :param int num: number of rotations.
    :param int dim: dimension ``d``.
    :param torch.Generator generator: optional random number generator on ``device``.
    :param torch.dtype dtype: floating point type (default: PyTorch's default dtype).
    :param device: device of the result (default: CPU).
    :returns: rotations of shape ``(num, d, d)``.
    :rtype: torch.Tensor
    """
    _check_positive_int(num, "num")
    _check_positive_int(dim, "dim")
    gaussian = torch.randn(
        num, dim, dim, generator=generator, dtype=dtype, device=device
    )
    q, r = torch.linalg.qr(gaussian)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    q = q * signs.unsqueeze(-2)

    # move from O(d) to SO(d) by negating the first column of the improper ones
    flip = torch.linalg.det(q) < 0
    q[flip, :, 0] = -q[flip, :, 0]
    return q


def make_dynamic_mf_data(
    num_rows: int = 50,
    num_cols: int = 50,
    num_steps: int = 100,
    dim: int = 3,
    *,
    noise: float = 0.5,
    drift: float = 0.0,
    rotate: bool = False,
    noise_per_step: bool = False,
    generator: Optional[torch.Generator] = None,
    dtype: Optional[torch.dtype] = None,
    device=None,
) -> DynamicMFData:
    """Draw data ``Y_t = A_t B_t^T + noise`` of a dense dynamic matrix factorisation.

    With ``drift = 0`` (the default, as in the paper) the data are time independent:
    ``A`` and ``B`` have standard normal entries and one noisy matrix ``Y`` is repeated at
    every time step. With ``drift > 0`` the true factors follow Gaussian random walks,
    ``A_{t+1} = A_t + drift * eps_t`` (likewise ``B``), and every time step gets its own
    noise. With ``rotate=True`` the true factors of step ``t`` are further multiplied by a
    known Haar-random rotation ``R_t``; this leaves ``Y`` unchanged. With
    ``noise_per_step=True`` time-independent factors get a fresh noise draw at every time
    step, so the fitted means differ per step and the converged prior energy is clearly
    positive (with one repeated ``Y`` it is close to zero).

    :param int num_rows: rows ``n`` of each ``Y_t`` (users).
    :param int num_cols: columns ``m`` of each ``Y_t`` (items).
    :param int num_steps: number of time steps ``T``.
    :param int dim: rank ``d`` of the true factors.
    :param float noise: standard deviation of the Gaussian noise (default 0.5).
    :param float drift: standard deviation of the random-walk steps of the true factors
        per time step (default 0: time-independent data).
    :param bool rotate: whether to rotate the true factors per step by known rotations.
    :param bool noise_per_step: draw the noise of time-independent data anew for every
        time step (default ``False``: one noisy ``Y`` repeated, as in the paper).
    :param torch.Generator generator: optional random number generator on ``device``.
    :param torch.dtype dtype: floating point type (default: PyTorch's default dtype).
    :param device: device of the tensors (default: CPU).
    :rtype: DynamicMFData
    :raises ValueError: if a size is not positive or ``noise`` or ``drift`` is negative.
    """
    for value, name in (
        (num_rows, "num_rows"),
        (num_cols, "num_cols"),
        (num_steps, "num_steps"),
        (dim, "dim"),
    ):
        _check_positive_int(value, name)
    noise = _check_non_negative(noise, "noise")
    drift = _check_non_negative(drift, "drift")
    options = {"generator": generator, "dtype": dtype, "device": device}

    A = torch.randn(num_rows, dim, **options)
    B = torch.randn(num_cols, dim, **options)
    if drift > 0:
        steps_A = drift * torch.randn(num_steps - 1, num_rows, dim, **options)
        steps_B = drift * torch.randn(num_steps - 1, num_cols, dim, **options)
        A = torch.cat([A[None], A + steps_A.cumsum(0)])
        B = torch.cat([B[None], B + steps_B.cumsum(0)])
        Y = A @ B.transpose(-1, -2)
        Y = Y + noise * torch.randn(Y.shape, **options)
    elif noise_per_step:
        Y = A @ B.T + noise * torch.randn(num_steps, num_rows, num_cols, **options)
        A, B = A.expand(num_steps, -1, -1), B.expand(num_steps, -1, -1)
    else:
        Y = A @ B.T + noise * torch.randn(num_rows, num_cols, **options)
        A, B = A.expand(num_steps, -1, -1), B.expand(num_steps, -1, -1)
        Y = Y.expand(num_steps, -1, -1)

    if rotate:
        rotations = random_rotations(num_steps, dim, **options)
    else:
        rotations = torch.eye(dim, dtype=A.dtype, device=A.device).expand(
            num_steps, dim, dim
        )
    A, B = A @ rotations, B @ rotations
    return DynamicMFData(Y.contiguous(), A, B, rotations.contiguous(), noise)


def twisted_init(
    num_steps: int,
    num_vectors: _Sizes,
    dim: int,
    *,
    scale: float = 1.0,
    twist: float = math.pi,
    generator: Optional[torch.Generator] = None,
    dtype: Optional[torch.dtype] = None,
    device=None,
):
    """One random draw shared by all time steps, twisted by a rotation along the chain.

    A random plane of the embedding space is drawn, and time step ``t`` is rotated in that
    plane by the angle ``twist * t / (T - 1)``, so neighbouring time steps differ only by
    a small rotation (a pure Goldstone mode) and the first and last by ``twist``. The
    local loss is the same at every time step; only the prior sees the twist.

    :param int num_steps: number of time steps ``T``.
    :param num_vectors: ``N``, or a sequence of sizes ``(N_1, N_2, ...)`` of tensors that
        share the rotation (users and items).
    :type num_vectors: int or tuple
    :param int dim: embedding dimension ``d``.
    :param float scale: standard deviation of the shared draw (default 1).
    :param float twist: total rotation angle in radians between the first and the last
        time step (default pi). Ignored for ``dim = 1``, which has no rotations.
    :param torch.Generator generator: optional random number generator on ``device``.
    :param torch.dtype dtype: floating point type (default: PyTorch's default dtype).
    :param device: device of the result (default: CPU).
    :returns: a tensor of shape ``(T, N, d)``, or a list of tensors ``(T, N_k, d)``.
    :raises ValueError: if a size is not positive or ``scale`` or ``twist`` is invalid.
    """
    _check_positive_int(num_steps, "num_steps")
    _check_positive_int(dim, "dim")
    sizes = _check_sizes(num_vectors)
    scale = _check_non_negative(scale, "scale")
    if isinstance(twist, bool) or not isinstance(twist, (int, float)):
        raise TypeError(f"twist must be a real number, but got {twist!r}")
    if not math.isfinite(twist):
        raise ValueError(f"twist must be finite, but got {twist}")
    options = {"generator": generator, "dtype": dtype, "device": device}

    shared = scale * torch.randn(sum(sizes), dim, **options)
    if dim == 1:
        X = shared.expand(num_steps, -1, -1).clone()
        return _split(X, sizes, isinstance(num_vectors, int))

    # an orthonormal pair (u, v) spans the plane; K = u v^T - v u^T generates its rotation
    plane, _ = torch.linalg.qr(torch.randn(dim, 2, **options))
    u, v = plane[:, :1], plane[:, 1:]
    generator_matrix = u @ v.T - v @ u.T
    fraction = torch.linspace(0, 1, num_steps, dtype=shared.dtype, device=shared.device)
    angles = twist * fraction if num_steps > 1 else torch.zeros_like(fraction)
    rotations = torch.linalg.matrix_exp(angles[:, None, None] * generator_matrix)
    X = shared @ rotations
    return _split(X, sizes, isinstance(num_vectors, int))


def independent_init(
    num_steps: int,
    num_vectors: _Sizes,
    dim: int,
    *,
    scale: float = 1.0,
    generator: Optional[torch.Generator] = None,
    dtype: Optional[torch.dtype] = None,
    device=None,
):
    """An independent random draw for every time step.

    :param int num_steps: number of time steps ``T``.
    :param num_vectors: ``N``, or a sequence of sizes ``(N_1, N_2, ...)`` of tensors that
        share the rotation (users and items).
    :type num_vectors: int or tuple
    :param int dim: embedding dimension ``d``.
    :param float scale: standard deviation of every entry (default 1).
    :param torch.Generator generator: optional random number generator on ``device``.
    :param torch.dtype dtype: floating point type (default: PyTorch's default dtype).
    :param device: device of the result (default: CPU).
    :returns: a tensor of shape ``(T, N, d)``, or a list of tensors ``(T, N_k, d)``.
    :raises ValueError: if a size is not positive or ``scale`` is negative.
    """
    _check_positive_int(num_steps, "num_steps")
    _check_positive_int(dim, "dim")
    sizes = _check_sizes(num_vectors)
    scale = _check_non_negative(scale, "scale")
    X = scale * torch.randn(
        num_steps, sum(sizes), dim, generator=generator, dtype=dtype, device=device
    )
    return _split(X, sizes, isinstance(num_vectors, int))
