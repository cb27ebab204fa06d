# SPDX-License-Identifier: Apache-2.0
"""Real data sets: MovieLens ratings and dated text corpora."""

# the submodules, loaded by ``from pyro_goldstone.data import *``
__all__ = ["cooccurrence", "corpus", "movielens", "synthetic"]
