# SPDX-License-Identifier: Apache-2.0
"""Shared helpers for the test suite."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["assert_close", "random_rotations"]


def assert_close(actual, expected, *, rtol: float = 1e-6, atol: float = 1e-8, msg=""):
    """Assert that two tensors, numbers, or nested dicts and sequences of them agree.

    Tensors are compared in the dtype and on the device of ``actual``; shapes must match
    exactly. The test is ``|actual - expected| <= atol + rtol * |expected|`` elementwise.

    :param actual: the computed value.
    :param expected: the reference value.
    :param float rtol: relative tolerance.
    :param float atol: absolute tolerance.
    :param str msg: prefix of the failure message.
    """
    if isinstance(actual, Mapping):
        assert isinstance(expected, Mapping), f"{msg}: expected a mapping"
        assert set(actual) == set(expected), (
            f"{msg}: keys {set(actual)} != {set(expected)}"
        )
        for key in actual:
            assert_close(
                actual[key], expected[key], rtol=rtol, atol=atol, msg=f"{msg}[{key!r}]"
            )
        return
    if isinstance(actual, Sequence) and not isinstance(actual, (str, torch.Tensor)):
        assert len(actual) == len(expected), (
            f"{msg}: lengths {len(actual)} != {len(expected)}"
        )
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, rtol=rtol, atol=atol, msg=f"{msg}[{i}]")
        return
    actual = torch.as_tensor(actual)
    expected = torch.as_tensor(expected, dtype=actual.dtype, device=actual.device)
    assert actual.shape == expected.shape, (
        f"{msg}: shape {actual.shape} != {expected.shape}"
    )
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{msg}: {m}"
    )


def random_rotations(num: int, d: int, dtype=torch.float64, scale=None) -> torch.Tensor:
    """Random rotations in ``SO(d)`` of shape ``(num, d, d)``.

    Haar-distributed when ``scale`` is ``None``, else ``expm`` of a random skew matrix
    whose entries have standard deviation ``scale``.
    """
    if scale is not None:
        A = scale * torch.randn(num, d, d, dtype=dtype)
        return torch.linalg.matrix_exp((A - A.mT) / 2)
    Q, R = torch.linalg.qr(torch.randn(num, d, d, dtype=dtype))
    Q = Q * R.diagonal(dim1=-2, dim2=-1).sign().unsqueeze(-2)
    flip = torch.linalg.det(Q) < 0
    Q[flip, :, 0] = -Q[flip, :, 0]
    return Q
