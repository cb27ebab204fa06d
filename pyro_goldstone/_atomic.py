# SPDX-License-Identifier: Apache-2.0
"""Atomic file writes (internal): a reader never sees a half-written file."""

from __future__ import annotations

import contextlib
import os
import tempfile

__all__ = ["atomic_write"]


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb"):
    """Open a temporary file beside ``path`` and rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` keeps its old content.
    The file gets the permissions the user's umask gives any new file (a
    :mod:`tempfile` file alone would be 0600).

    :param str path: the file to write.
    :param str mode: ``"wb"`` or ``"w"``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as file:
            yield file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
