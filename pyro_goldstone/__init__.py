# SPDX-License-Identifier: Apache-2.0
"""Remove Goldstone modes from stochastic variational inference in Pyro.

Time-series embedding models (dynamic matrix factorisations, dynamic word embeddings) are
invariant under a rotation of each time step's embedding space; the rotations are only
weakly fixed by the time-series prior and plain optimisers remove them very slowly. This
package removes them with cheap gauge-field natural-gradient or Procrustes steps.
"""

from pyro_goldstone.coupling import *  # noqa: F401,F403
from pyro_goldstone.distributions import *  # noqa: F401,F403
from pyro_goldstone.gauge import *  # noqa: F401,F403
from pyro_goldstone.guides import *  # noqa: F401,F403
from pyro_goldstone.optim import *  # noqa: F401,F403

__version__ = "0.1.0"
