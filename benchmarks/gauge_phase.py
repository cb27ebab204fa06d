# SPDX-License-Identifier: Apache-2.0
"""Cost of one gauge phase in units of one full-batch gradient step.

For each size ``(N, d, T)`` the embeddings are ``X_t = [U_t; V_t]`` with ``N`` rows in
all (SPEC section 1): ``N // 2`` user rows ``U_t`` and ``N - N // 2`` item rows ``V_t``,
shape ``(T, N_k, d)`` each, sharing one rotation per time step. The unit of time is one
full-batch gradient step of the dense dynamic Gaussian matrix factorisation (SPEC 4.1)

.. math::

    L(U, V) = \\frac{1}{2 \\sigma^2} \\sum_t \\|Y - U_t V_t^\\top\\|_F^2
        + \\ell_\\mathrm{prior}([U, V])

on a chain, with time-independent dense data ``Y`` of shape ``(N // 2, N - N // 2)``:
the loss, its gradient with respect to ``U`` and ``V`` (the likelihood part written by
hand, ``R = U_t V_t^T - Y``, ``grad U_t = R V_t / sigma^2``, ``grad V_t = R^T U_t /
sigma^2``, in blocks of time steps so that no ``(T, N/2, N/2)`` tensor is formed; the
prior part by autograd) and the update ``X <- X - lr grad``. Writing the likelihood
gradient by hand makes this step as cheap as it can be, so the ratios are conservative.

A gauge phase is timed from the embeddings to the embeddings: the overlaps, the solver
(:func:`~pyro_goldstone.gauge.solve_gauge`) and the in-place application
(:func:`~pyro_goldstone.gauge.rotate_`); the time without the application is reported
too. Methods: ``procrustes``, ``natural_gradient`` (10 steps) and ``taylor`` (the
paper's second-order variant, applied to first order). The remaining energy is
``(E_after - E_min) / E_min`` with ``E_min`` from Procrustes (exact on a chain).

The embeddings are a plausible mid-training state: ``U_t = A Q_t + noise``,
``V_t = B Q_t + noise`` with standard normal ``A``, ``B`` and a smooth multi-axis twist
``Q_t = expm(t / (T - 1) Omega)`` whose largest rotation angle is ``--twist``.

At ``N = 20000`` one gradient step takes many minutes on two cores; with
``--grad-time-steps K`` its likelihood part (a sum of ``T`` identical independent terms)
is timed on ``K`` time steps and scaled by ``T / K``.

Run ``python benchmarks/gauge_phase.py`` (the issue's sizes; the README's figures used
``--grad-time-steps 10``) or ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time

import torch

from pyro_goldstone.coupling import Coupling
from pyro_goldstone.gauge import prior_energy, rotate_, solve_gauge

logger = logging.getLogger(__name__)

DEFAULT_SIZES = ((5000, 100, 50), (5000, 100, 200), (20000, 100, 209))
QUICK_SIZES = ((1000, 20, 20), (2000, 50, 30))
METHODS = (
    ("procrustes", {}),
    ("natural_gradient", {"num_steps": 10}),
    ("taylor", {"num_steps": 10}),
)

# elements of one block of residuals U_t V_t^T - Y (bounds the extra memory)
_BLOCK_ELEMENTS = 2**25


def make_problem(N, d, T, *, twist, noise, dtype, generator):
    """Dense data ``Y`` and twisted embeddings ``[U, V]`` for one size."""
    rows = N // 2
    A = torch.randn(rows, d, dtype=dtype, generator=generator)
    B = torch.randn(N - rows, d, dtype=dtype, generator=generator)
    Y = A @ B.T + torch.randn(rows, N - rows, dtype=dtype, generator=generator)

    # smooth twist: largest rotation angle of Q_{T-1} = expm(Omega) is `twist`
    omega = torch.randn(d, d, dtype=torch.float64, generator=generator)
    omega = omega - omega.T
    omega *= twist / torch.linalg.eigvalsh(1j * omega).abs().max().item()
    fractions = torch.linspace(0, 1, T, dtype=torch.float64).view(-1, 1, 1)
    Q = torch.linalg.matrix_exp(fractions * omega).to(dtype)

    U = A @ Q
    U += noise * torch.randn(U.shape, dtype=dtype, generator=generator)
    V = B @ Q
    V += noise * torch.randn(V.shape, dtype=dtype, generator=generator)
    return Y, U, V


def gradient_step(Y, U, V, coupling, *, sigma=1.0, lr=1e-6, time_steps=None):
    """One full-batch gradient step on ``U`` and ``V`` in place.

    With ``time_steps=K`` the likelihood part runs over the first ``K`` time steps only
    and its time is scaled by ``T / K`` (it is a sum of ``T`` identical independent
    terms); the prior part and the update always cover all time steps.

    :returns: the (estimated) wall time of the whole step in seconds.
    """
    start = time.perf_counter()
    T = U.shape[0]
    K = T if time_steps is None else min(T, time_steps)
    block = max(1, _BLOCK_ELEMENTS // Y.numel())
    grad_U, grad_V = torch.zeros_like(U), torch.zeros_like(V)
    loss = 0.0
    with torch.no_grad():
        for first in range(0, K, block):
            t = slice(first, min(first + block, K))
            residual = torch.baddbmm(-Y, U[t], V[t].mT)
            loss += 0.5 / sigma**2 * residual.square().sum().item()
            torch.bmm(residual, V[t], out=grad_U[t])
            torch.bmm(residual.mT, U[t], out=grad_V[t])
            del residual
        grad_U /= sigma**2
        grad_V /= sigma**2
    likelihood_time = time.perf_counter() - start

    # the prior's gradient by autograd, then the update
    leaves = [U.detach().requires_grad_(), V.detach().requires_grad_()]
    prior = prior_energy(leaves, coupling)
    prior_U, prior_V = torch.autograd.grad(prior, leaves)
    with torch.no_grad():
        U.sub_(grad_U.add_(prior_U), alpha=lr)
        V.sub_(grad_V.add_(prior_V), alpha=lr)
    return time.perf_counter() - start + likelihood_time * (T / K - 1)


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def gauge_phase(U, V, coupling, method, options):
    """Time one phase on copies of ``U``, ``V``; returns times and the energy after."""
    U, V = U.clone(), V.clone()
    solve_time, result = _timed(
        lambda: solve_gauge([U, V], coupling, method, **options)
    )
    apply_time, _ = _timed(lambda: rotate_([U, V], result.rotations))
    energy = prior_energy([U, V], coupling).item()
    return solve_time, solve_time + apply_time, energy


def benchmark_size(N, d, T, args):
    """All measurements for one size; returns one record per method."""
    generator = torch.Generator().manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    coupling = Coupling.chain(T, args.strength)
    Y, U, V = make_problem(
        N, d, T, twist=args.twist, noise=args.noise, dtype=dtype, generator=generator
    )
    energy_before = prior_energy([U, V], coupling).item()

    # exact minimum on the chain, in float64 on the overlaps (no timing)
    exact = solve_gauge([U.double(), V.double()], coupling, "procrustes")
    energy_min = exact.energy_after.item()

    grad_times, phase_times = [], {name: [] for name, _ in METHODS}
    energies = {}
    for repeat in range(args.repeats):
        # minute-long gradient steps are timed once: their noise is small
        if repeat == 0 or sum(grad_times) < args.long_step:
            # on copies, so that every repeat starts from the same state
            copies = U.clone(), V.clone()
            elapsed = gradient_step(
                Y, *copies, coupling, time_steps=args.grad_time_steps
            )
            grad_times.append(elapsed)
            del copies
            logger.info("N=%d d=%d T=%d: gradient step %.3f s", N, d, T, elapsed)
        for name, options in METHODS:
            solve_time, phase_time, energy = gauge_phase(U, V, coupling, name, options)
            phase_times[name].append((solve_time, phase_time))
            energies[name] = energy
            logger.info("  %s: %.3f s (solve %.3f s)", name, phase_time, solve_time)

    grad_time = min(grad_times)
    records = []
    for name, _ in METHODS:
        solve_time = min(s for s, _ in phase_times[name])
        phase_time = min(p for _, p in phase_times[name])
        records.append(
            {
                "N": N,
                "d": d,
                "T": T,
                "method": name,
                "gradient_step_s": grad_time,
                "gradient_time_steps": args.grad_time_steps or T,
                "phase_s": phase_time,
                "solve_s": solve_time,
                "phase_per_gradient_step": phase_time / grad_time,
                "solve_per_gradient_step": solve_time / grad_time,
                "energy_before": energy_before,
                "energy_min": energy_min,
                "energy_after": energies[name],
                "excess_before": (energy_before - energy_min) / energy_min,
                "excess_after": (energies[name] - energy_min) / energy_min,
            }
        )
    return records


def markdown_table(records) -> str:
    header = (
        "| N | d | T | method | grad step (s) | phase / grad step "
        "| phase without rotate_ / grad step | (E - E_min) / E_min before -> after |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    rows = [
        f"| {r['N']} | {r['d']} | {r['T']} | {r['method']} "
        f"| {r['gradient_step_s']:.2f} | {r['phase_per_gradient_step']:.3f} "
        f"| {r['solve_per_gradient_step']:.3f} "
        f"| {r['excess_before']:.3g} -> {r['excess_after']:.2g} |"
        for r in records
    ]
    return header + "\n".join(rows)


def parse_sizes(text: str):
    sizes = []
    for item in text.split(";"):
        parts = item.replace("(", "").replace(")", "").split(",")
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(
                f"--sizes takes 'N,d,T;N,d,T;...', but got {item!r}"
            )
        N, d, T = (int(p) for p in parts)
        if N < 2 or d < 1 or T < 2:
            raise argparse.ArgumentTypeError(f"need N >= 2, d >= 1, T >= 2: {item!r}")
        sizes.append((N, d, T))
    return tuple(sizes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=None,
        help="sizes 'N,d,T;N,d,T;...' (default: the issue's three sizes)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument(
        "--repeats", type=int, default=2, help="timings per size (the minimum is kept)"
    )
    parser.add_argument(
        "--long-step",
        type=float,
        default=60.0,
        help="repeat the gradient step only while its total time is below this (s)",
    )
    parser.add_argument(
        "--grad-time-steps",
        type=int,
        default=None,
        help="time the likelihood part of the gradient step on this many time steps "
        "and scale it to T (default: all time steps)",
    )
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--strength", type=float, default=1.0, help="chain coupling")
    parser.add_argument("--twist", type=float, default=0.5, help="twist angle (rad)")
    parser.add_argument("--noise", type=float, default=0.1, help="noise on U, V")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the records as JSON here")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.grad_time_steps is not None and args.grad_time_steps < 1:
        parser.error("--grad-time-steps must be at least 1")
    logging.basicConfig(level=args.log_level.upper(), format="%(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)

    records = []
    for N, d, T in sizes:
        records.extend(benchmark_size(N, d, T, args))
    table = markdown_table(records)
    print(table)
    if args.out:
        machine = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        }
        payload = {"config": vars(args) | {"sizes": sizes}, "machine": machine}
        payload["records"] = records
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=2)
    return records


if __name__ == "__main__":
    main()
