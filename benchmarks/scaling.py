# SPDX-License-Identifier: Apache-2.0
"""Time and peak memory of one gauge phase and one SVI step of dynamic word embeddings.

The largest published dynamic word-embedding model (Bamler & Mandt, 2017, Google
Books) has ``V = 30,000`` words, ``T = 209`` years and ``d = 100``. The model here is
:class:`models.dwe.DynamicWordEmbeddings` with the optimiser of its Goldstone run
(``ClippedAdam`` inside :class:`~pyro_goldstone.optim.GoldstonePyroOptim`), on
synthetic sparse counts of that shape (``--pairs`` distinct context words per word and
bin; no corpus this small has 30,000 words in each of 209 bins).

**Memory first.** Every ``(T, V, d)`` tensor holds ``P = 4 T V d`` bytes. Word and
context vectors each have a mean and a scale (4), their gradients (4), Adam's two
moments (8), the constrained scales and their gradients during a step (up to 4):
about :data:`TENSORS_PER_ELEMENT` ``= 20`` of them, plus the counts (16 bytes per
stored pair). At the published size that is ``20 x 2.5 GB = 50 GB``, twice 24 GiB.
The small sizes below are measured first; their peaks fit ``offset + k P`` (``k``
from the doublings, the larger of that fit and the analytic estimate is used), and
the sizes reported keep the published ``V`` and ``d`` and take the largest ``T``
that fits: 24 GiB (``--memory-gib``), and for the measurement this machine's budget,
``--max-fraction`` of its available memory (other jobs share it).

**Measured**, each size in a fresh process (``resource.getrusage`` gives the peak
resident memory of that process; the interpreter's own, measured before the model is
built, is subtracted): one SVI step (the minimum of ``--repeats``, after a warm-up
step that creates Adam's state), one natural-gradient gauge phase (5 steps; the
overlaps, the solve and the rotation of the means and of Adam's first moments) and
one Procrustes phase. Growth: at a base size and at each of ``T``, ``V``, ``d``
doubled, the exponent ``log2(figure(2x) / figure(x))``. An SVI step costs
``O(T V d)`` (Adam updates every parameter; the minibatch likelihood is
``O(T B C d)``), a gauge phase ``O(T V d^2)`` (overlaps and rotations) plus
``O(T d^3)`` (the solve), memory ``O(T V d)``; at the published ``V`` and ``d`` all
are linear in ``T``, which is how the largest measured size is carried to the 24-GiB
and the published size.

Run ``python benchmarks/scaling.py --out runs/benchmarks/scaling.json`` (two to five
minutes on two cores); ``--quick`` measures the small sizes only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import resource
import sys
import time

import numpy as np
import pandas as pd
import scipy.sparse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

logger = logging.getLogger("benchmarks.scaling")

PUBLISHED = {"T": 209, "V": 30_000, "d": 100}
#: ``(T, V, d)`` tensors of 4-byte floats alive at the peak of a step (see above)
TENSORS_PER_ELEMENT = 20
#: bytes per stored pair of the counts: value, column index, and the row pointers
BYTES_PER_PAIR = 16
_GIB = 2.0**30


def estimate_gib(T: int, V: int, d: int, pairs: int) -> float:
    """Estimated peak memory of a step, in GiB, without the interpreter's own.

    :param int T: time steps.
    :param int V: vocabulary size.
    :param int d: embedding dimension.
    :param int pairs: stored pairs per word and time step.
    :rtype: float
    """
    tensors = TENSORS_PER_ELEMENT * 4 * T * V * d
    return (tensors + BYTES_PER_PAIR * T * V * pairs) / _GIB


def available_gib() -> float:
    """``MemAvailable`` of ``/proc/meminfo`` in GiB (Linux)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / _GIB
    raise OSError("/proc/meminfo has no MemAvailable line")


def synthetic_counts(T: int, V: int, pairs: int, seed: int):
    """Sparse positive counts of shape ``T x (V, V)`` with ``pairs`` entries per row.

    Context words follow a Zipf-like law, counts are ``1 + Poisson(2)``.

    :rtype: ~pyro_goldstone.data.cooccurrence.CooccurrenceCounts
    """
    from pyro_goldstone.data.cooccurrence import CooccurrenceCounts
    from pyro_goldstone.data.corpus import TimeBins

    rng = np.random.default_rng(seed)
    positive = []
    rows = np.repeat(np.arange(V), pairs)
    for _ in range(T):
        cols = np.minimum((V * rng.random(V * pairs) ** 2).astype(np.int64), V - 1)
        values = 1.0 + rng.poisson(2.0, V * pairs)
        matrix = scipy.sparse.csr_matrix((values, (rows, cols)), shape=(V, V))
        positive.append(matrix.astype(np.float32))
    unigram = np.stack([np.asarray(m.sum(1)).ravel() for m in positive])
    years = 1800 + np.arange(T)
    bins = TimeBins(
        index=np.zeros(0, np.int64),
        start=years,
        end=years,
        times=years.astype(np.float64),
        labels=[str(year) for year in years],
    )
    empty = [scipy.sparse.csr_matrix((V, V), dtype=np.float32)] * T
    return CooccurrenceCounts(
        vocabulary=[f"w{i}" for i in range(V)],
        bins=bins,
        positive=positive,
        held_out=empty,
        unigram=unigram,
        held_out_fraction=0.0,
        config={"window": 4, "synthetic": True},
    )


def _peak_gib() -> float:
    """Peak resident memory of this process so far, in GiB (``ru_maxrss`` is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(T: int, V: int, d: int, options: dict) -> dict:
    """All measurements at one size; meant to run in a fresh process.

    :param int T: time steps.
    :param int V: vocabulary size.
    :param int d: embedding dimension.
    :param dict options: ``pairs``, ``batch``, ``repeats``, ``threads``, ``seed``.
    :rtype: dict
    """
    import pyro
    import torch
    from pyro.infer import SVI, TraceMeanField_ELBO
    from pyro.optim import ClippedAdam

    from benchmarks.compare.alternatives import NO_CLIPPING
    from models.dwe import DynamicWordEmbeddings
    from pyro_goldstone.gauge_phase import GaugeFixer
    from pyro_goldstone.optim import GoldstonePyroOptim

    torch.set_num_threads(options["threads"])
    pyro.set_rng_seed(options["seed"])
    baseline = _peak_gib()
    start = time.perf_counter()
    counts = synthetic_counts(T, V, options["pairs"], options["seed"])
    model = DynamicWordEmbeddings(
        counts,
        dim=d,
        diffusion=0.01,
        sigma0=1.0,
        word_batch=options["batch"],
        context_batch=options["batch"],
    )
    base = ClippedAdam({"lr": 0.08, "clip_norm": NO_CLIPPING})
    optim = GoldstonePyroOptim(
        base, model.loc_names, model.coupling, interval=None, reflections="never"
    )
    svi = SVI(model.model, model.guide, optim, TraceMeanField_ELBO())
    svi.step()  # creates the parameters and Adam's state
    setup = time.perf_counter() - start
    step = _timed(svi.step, options["repeats"])
    natural = _timed(optim.fixer.gauge_phase, options["repeats"])
    procrustes_fixer = GaugeFixer(
        optim.fixer.params,
        model.coupling,
        optimizer=optim.fixer.optimizers,
        method="procrustes",
        interval=None,
        reflections="never",
    )
    procrustes = _timed(procrustes_fixer.gauge_phase, options["repeats"])
    return {
        "T": T,
        "V": V,
        "d": d,
        "setup_s": setup,
        "svi_step_s": step,
        "natural_gradient_phase_s": natural,
        "procrustes_phase_s": procrustes,
        "peak_gib": _peak_gib() - baseline,
        "interpreter_gib": baseline,
        "estimate_gib": estimate_gib(T, V, d, options["pairs"]),
    }


def _in_child(T: int, V: int, d: int, options: dict) -> dict:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        record = pool.apply(measure, (T, V, d, options))
    logger.info(
        "T=%d V=%d d=%d: SVI step %.3g s, natural-gradient phase %.3g s, Procrustes "
        "phase %.3g s, peak %.2f GiB (estimate %.2f)",
        T,
        V,
        d,
        record["svi_step_s"],
        record["natural_gradient_phase_s"],
        record["procrustes_phase_s"],
        record["peak_gib"],
        record["estimate_gib"],
    )
    return record


FIGURES = ("svi_step_s", "natural_gradient_phase_s", "procrustes_phase_s", "peak_gib")


def exponents(base: dict, doubled: dict) -> dict:
    """``log2`` of the ratio of each figure when one size is doubled.

    :param dict base: the record at the base size.
    :param dict doubled: dimension name (``"T"``, ``"V"``, ``"d"``) to its record.
    :returns: dimension to figure to exponent.
    :rtype: dict
    """
    return {
        dim: {key: math.log2(record[key] / base[key]) for key in FIGURES}
        for dim, record in doubled.items()
    }


def extrapolate(record: dict, growth: dict, size: dict) -> dict:
    """The times of ``record`` carried to ``size`` with the fitted exponents."""
    result = {}
    for key in FIGURES[:3]:
        factor = 1.0
        for dim in ("T", "V", "d"):
            factor *= (size[dim] / record[dim]) ** growth[dim][key]
        result[key] = record[key] * factor
    return result


class MemoryModel:
    """Peak memory ``offset + per_element * T V d`` fitted to the small sizes, never
    below the analytic :func:`estimate_gib`.

    :param dict base: the record at the base size.
    :param dict doubled: dimension to the record with that dimension doubled.
    :param int pairs: stored pairs per word and time step.
    """

    def __init__(self, base: dict, doubled: dict, pairs: int):
        elements = base["T"] * base["V"] * base["d"]
        self.per_element = max(
            (record["peak_gib"] - base["peak_gib"])
            / (record["T"] * record["V"] * record["d"] - elements)
            for record in doubled.values()
        )
        self.offset = max(0.0, base["peak_gib"] - self.per_element * elements)
        self.pairs = pairs

    @property
    def tensors(self) -> float:
        """The fitted number of ``(T, V, d)`` tensors of 4-byte floats."""
        return self.per_element * _GIB / 4

    def gib(self, T: int, V: int, d: int) -> float:
        """Predicted peak memory in GiB."""
        fitted = self.offset + self.per_element * T * V * d
        return max(fitted, estimate_gib(T, V, d, self.pairs))

    def largest_size(self, budget_gib: float) -> dict:
        """The published ``V`` and ``d`` with the largest ``T`` that fits."""
        V, d = PUBLISHED["V"], PUBLISHED["d"]
        T = PUBLISHED["T"]
        while T > 1 and self.gib(T, V, d) > budget_gib:
            T -= 1
        if T < 2:
            raise ValueError(
                f"--memory-gib: {budget_gib:.1f} GiB does not hold two time steps "
                f"of V={V}, d={d}"
            )
        return {"T": T, "V": V, "d": d}


def _print(result: dict) -> None:
    records = pd.DataFrame(result["records"])
    print(
        records[["T", "V", "d", *FIGURES, "estimate_gib"]].to_markdown(
            index=False, floatfmt=".3g"
        )
    )
    print("\ngrowth exponents, log2 of the ratio when one size doubles:\n")
    print(pd.DataFrame(result["exponents"]).to_markdown(floatfmt=".2f"))
    memory = result["memory"]
    print(
        f"\npeak memory ~ {memory['offset_gib']:.2f} GiB + {memory['tensors']:.1f} "
        "(T, V, d) tensors of 4-byte floats (analytic estimate: "
        f"{TENSORS_PER_ELEMENT}); published size {PUBLISHED}: "
        f"{memory['published_gib']:.1f} GiB; {result['config']['memory_gib']:.0f} "
        f"GiB hold T={result['size_for_memory_gib']['T']}; measured at "
        f"T={result['size_measured']['T']}"
    )
    for name, figures in result["extrapolated"].items():
        print(
            f"extrapolated linearly in T to {name}: "
            + ", ".join(f"{key} {value:.3g}" for key, value in figures.items())
        )


def main(argv=None) -> dict:
    """Measure, print a table and the growth exponents, optionally write JSON.

    :param list argv: command-line arguments (default ``sys.argv[1:]``).
    :rtype: dict
    :raises ValueError: if an option is invalid (the message names it).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory-gib", type=float, default=24.0)
    parser.add_argument("--max-fraction", type=float, default=0.6)
    parser.add_argument("--base", type=int, nargs=3, default=(20, 10000, 50))
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    for name in ("pairs", "batch", "repeats", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1")
    if min(args.base) < 2:
        raise ValueError("--base takes T V d, each at least 2")
    if not 0 < args.max_fraction <= 1:
        raise ValueError("--max-fraction must lie in (0, 1]")
    if not args.memory_gib > 0:
        raise ValueError("--memory-gib must be positive")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    options = {key: getattr(args, key) for key in ("pairs", "batch", "repeats")}
    options.update(threads=args.threads, seed=args.seed)

    machine_gib = args.max_fraction * available_gib()
    logger.info(
        "published size %s: about %.1f GiB by the analytic estimate; this machine "
        "allows %.1f GiB (%.0f%% of its available memory)",
        PUBLISHED,
        estimate_gib(*PUBLISHED.values(), args.pairs),
        machine_gib,
        100 * args.max_fraction,
    )
    T0, V0, d0 = args.base
    base = _in_child(T0, V0, d0, options)
    doubled = {
        "T": _in_child(2 * T0, V0, d0, options),
        "V": _in_child(T0, 2 * V0, d0, options),
        "d": _in_child(T0, V0, 2 * d0, options),
    }
    memory = MemoryModel(base, doubled, args.pairs)
    target = memory.largest_size(args.memory_gib)
    measured_size = memory.largest_size(min(args.memory_gib, machine_gib))
    records = [base, *doubled.values()]
    if not args.quick:
        # one repeat: a step of many seconds varies little
        large = dict(options, repeats=1)
        records.append(_in_child(*measured_size.values(), large))
    largest = records[-1]
    linear_in_T = {dim: {key: float(dim == "T") for key in FIGURES} for dim in "TVd"}
    result = {
        "config": vars(args),
        "published": PUBLISHED,
        "memory": {
            "offset_gib": memory.offset,
            "tensors": memory.tensors,
            "published_gib": memory.gib(*PUBLISHED.values()),
            "machine_budget_gib": machine_gib,
        },
        "size_for_memory_gib": target,
        "size_measured": {key: largest[key] for key in ("T", "V", "d")},
        "records": records,
        "exponents": exponents(base, doubled),
        "extrapolated": {
            "size_for_memory_gib": extrapolate(largest, linear_in_T, target),
            "published": extrapolate(largest, linear_in_T, PUBLISHED),
        },
    }
    _print(result)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
