# SPDX-License-Identifier: Apache-2.0
"""Throughput and memory of the dynamic Bernoulli factorisation at MovieLens-20M shape.

A synthetic data set of the shape of MovieLens 20M (20,000,263 ratings, 138,493 users,
26,744 movies, ``T = 100`` time bins; ``--scale`` shrinks the counts of ratings, users
and items by one factor) is trained with the code of :mod:`models.bernoulli_mf`
(:class:`~models.bernoulli_mf.BernoulliMF`, Adagrad and Goldstone phases). Labels come
from a planted low-rank model so the likelihood has something to fit.

Reported, as JSON at ``--out`` and as a table on stdout: ratings per second in each
quarter of the steps (a steady rate has equal quarters), the resident memory before
and after training (bounded memory: no growth with the steps), the peak resident
memory (``resource.getrusage``), and the wall time of one gauge phase against one SVI
step, measured alternately in the same process.

Run ``python benchmarks/movielens_scale.py --scale 0.02 --num-steps 200``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time

import numpy as np
import pandas as pd
import pyro
import torch
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.optim import Adagrad

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.bernoulli_mf import BernoulliMF  # noqa: E402
from pyro_goldstone.data.movielens import BinaryRatings  # noqa: E402
from pyro_goldstone.optim import GoldstonePyroOptim  # noqa: E402

logger = logging.getLogger(__name__)

FULL = {"ratings": 20_000_263, "users": 138_493, "items": 26_744}


def synthetic_ratings(scale: float, num_bins: int, seed: int) -> BinaryRatings:
    """Binarised ratings of MovieLens-20M shape times ``scale``, all for training."""
    rng = np.random.default_rng(seed)
    n = max(1, int(FULL["ratings"] * scale))
    num_users = max(2, int(FULL["users"] * scale))
    num_items = max(2, int(FULL["items"] * scale))
    # heavy-tailed activity, as in real ratings: a few users and items rate a lot
    user = (num_users * rng.random(n) ** 2).astype(np.int64)
    item = (num_items * rng.random(n) ** 3).astype(np.int64)
    time_bin = rng.integers(0, num_bins, n)
    planted_u = rng.standard_normal((num_users, 3)).astype(np.float32)
    planted_v = rng.standard_normal((num_items, 3)).astype(np.float32)
    score = np.einsum("nd,nd->n", planted_u[user], planted_v[item])
    label = np.where(score + rng.standard_normal(n) > 0, 1, -1)
    train = pd.DataFrame(
        {"user": user, "item": item, "time_bin": time_bin, "label": label}
    )
    empty = train.iloc[:0]
    return BinaryRatings(
        train=train,
        valid=empty,
        test=empty,
        num_users=num_users,
        num_items=num_items,
        num_bins=num_bins,
        bin_edges=np.arange(num_bins + 1, dtype=np.float64),
        threshold=0.0,
        users=pd.DataFrame({"userId": np.arange(num_users)}),
        items=pd.DataFrame({"movieId": np.arange(num_items)}),
        options={"synthetic": True, "scale": scale},
    )


def resident_mib() -> float:
    """Current resident memory of this process in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    """Peak resident memory of this process in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--num-bins", type=int, default=100)
    parser.add_argument("--dim", type=int, default=5)
    parser.add_argument("--num-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 1:
        raise ValueError(f"--scale must be in (0, 1], but got {args.scale}")
    if args.num_steps < 8:
        raise ValueError("--num-steps must be at least 8 (four quarters of two)")
    logging.basicConfig(level=logging.INFO)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)

    start = time.perf_counter()
    data = synthetic_ratings(args.scale, args.num_bins, args.seed)
    mf = BernoulliMF(data, dim=args.dim)
    mf.means()
    setup_seconds = time.perf_counter() - start
    optim = GoldstonePyroOptim(
        Adagrad({"lr": 0.1}), mf.loc_names, mf.coupling, interval=args.interval
    )
    svi = SVI(mf.model, mf.guide, optim, TraceMeanField_ELBO())
    generator = torch.Generator().manual_seed(args.seed)

    def batch():
        return torch.randint(mf.num_train, (args.batch_size,), generator=generator)

    svi.step(batch())  # warm-up: the optimiser's state is created here
    resident_before = resident_mib()
    quarter = args.num_steps // 4
    rates, step_times, phase_times = [], [], []
    for _ in range(4):
        tic = time.perf_counter()
        for _ in range(quarter):
            svi.step(batch())
        rates.append(quarter * args.batch_size / (time.perf_counter() - tic))
    resident_after = resident_mib()
    # a gauge phase against an SVI step, alternately, so both see the same load
    for _ in range(5):
        tic = time.perf_counter()
        svi.step(batch())
        step_times.append(time.perf_counter() - tic)
        tic = time.perf_counter()
        optim.fixer.gauge_phase()
        phase_times.append(time.perf_counter() - tic)

    step_seconds = float(np.median(step_times))
    phase_seconds = float(np.median(phase_times))
    result = {
        "config": vars(args),
        "num_ratings": mf.num_train,
        "num_users": data.num_users,
        "num_items": data.num_items,
        "parameters_mib": 4 * sum(p.numel() for p in mf.means()) * 2 / 2**20,
        "setup_seconds": setup_seconds,
        "ratings_per_second_by_quarter": rates,
        "steps_per_second": float(np.mean(rates)) / args.batch_size,
        "resident_mib_before": resident_before,
        "resident_mib_after": resident_after,
        "peak_resident_mib": peak_mib(),
        "seconds_per_step": step_seconds,
        "seconds_per_gauge_phase": phase_seconds,
        "phase_overhead_at_interval": phase_seconds / (args.interval * step_seconds),
        "torch_threads": torch.get_num_threads(),
    }
    rows = [
        ("ratings / s by quarter", ", ".join(f"{r:,.0f}" for r in rates)),
        (
            "resident MiB before / after",
            f"{resident_before:.0f} / {resident_after:.0f}",
        ),
        ("peak resident MiB", f"{result['peak_resident_mib']:.0f}"),
        ("s per step / per gauge phase", f"{step_seconds:.3f} / {phase_seconds:.3f}"),
        (
            f"phase overhead at interval {args.interval}",
            f"{100 * result['phase_overhead_at_interval']:.1f}%",
        ),
    ]
    print(pd.DataFrame(rows, columns=["measure", "value"]).to_markdown(index=False))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
