# SPDX-License-Identifier: Apache-2.0
"""Real data sets: MovieLens ratings and dated text corpora."""
