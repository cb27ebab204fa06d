# SPDX-License-Identifier: Apache-2.0
"""Remove Goldstone modes from stochastic variational inference in Pyro.

Time-series embedding models (dynamic matrix factorisations, dynamic word embeddings) are
invariant under a rotation of each time step's embedding space; the rotations are only
weakly fixed by the time-series prior and plain optimisers remove them very slowly. This
package removes them with cheap gauge-field natural-gradient or Procrustes steps.

The names below are the public API; data loaders live in :mod:`pyro_goldstone.data`,
cross-time queries in :mod:`pyro_goldstone.analysis`, ArviZ and word2vec export in
:mod:`pyro_goldstone.export` and figures in :mod:`pyro_goldstone.plots`.
"""

from pyro_goldstone.coupling import Coupling
from pyro_goldstone.distributions import (
    GaussianMarkovChain,
    GraphLaplacianPrior,
    OrnsteinUhlenbeckPrior,
)
from pyro_goldstone.gauge import (
    GaugeResult,
    energy_from_overlaps,
    optimal_rotations,
    overlaps,
    prior_energy,
    rotate,
    rotate_,
    rotate_first_order,
    solve_gauge,
)
from pyro_goldstone.gauge_phase import GaugeFixer
from pyro_goldstone.guides import MeanFieldEmbedding, embedding_rows
from pyro_goldstone.optim import GoldstonePyroOptim

__version__ = "0.1.0"

__all__ = [
    "Coupling",
    "GaugeFixer",
    "GaugeResult",
    "GaussianMarkovChain",
    "GoldstonePyroOptim",
    "GraphLaplacianPrior",
    "MeanFieldEmbedding",
    "OrnsteinUhlenbeckPrior",
    "embedding_rows",
    "energy_from_overlaps",
    "optimal_rotations",
    "overlaps",
    "prior_energy",
    "rotate",
    "rotate_",
    "rotate_first_order",
    "solve_gauge",
]
