# SPDX-License-Identifier: Apache-2.0
"""``python -m benchmarks.compare``: see :mod:`benchmarks.compare`."""

from benchmarks.compare import main

main()
