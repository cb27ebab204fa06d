# SPDX-License-Identifier: Apache-2.0
"""Goldstone steps against everything a user could try instead, in one process.

For each model — the dense dynamic factorisation on synthetic data (``dynamic_mf``),
the Bernoulli factorisation of MovieLens (``movielens``) and dynamic word embeddings of
the State of the Union corpus (``dwe``) — on the same data and seed, these rows:

- ``adam``, ``adagrad``, ``gd``: plain SVI with the model's tuned learning rates
  (:data:`benchmarks.compare.runners.EXTRA_LR` for the rows a model does not define);
- ``dctadam``: Pyro's ``DCTAdam`` on every time-indexed parameter (means and scales);
- ``posthoc-procrustes``: the best baseline's final means aligned afterwards by one
  sequential orthogonal Procrustes sweep over ``O(d)``, evaluated like the other rows
  (no steps of its own: its cost is the one alignment);
- ``riemannian-adam``: ``geoopt``'s Riemannian Adam on per-step rotations in ``SO(d)``,
  a few steps every ``interval`` SVI steps of the Goldstone base optimiser
  (:class:`~benchmarks.compare.alternatives.RiemannianGaugeFixer`); skipped with a
  logged message if ``geoopt`` (the ``bench`` extra) is missing;
- ``goldstone-natural_gradient``, ``goldstone-procrustes``, ``goldstone-taylor``:
  :class:`~pyro_goldstone.optim.GoldstonePyroOptim` on the model's Goldstone base
  (Adam, Adagrad, Adam) with each gauge method, ``taylor`` being the paper's
  first-order update.

Figures per row: steps and seconds to the 1% prior-energy threshold (the first
recorded step from which the prior energy stays within 1% of one reference per model;
the dense factorisation's comes from a long exact run, the sparse models' is the
lowest aligned energy of the runs that fit, see ``reference_rule`` in the results),
steps until the Goldstone modes are gone (the energy stays within 1% of the aligned
energy of the same means, :func:`~pyro_goldstone.training.aligned_energy`), the
ratios of both to the best baseline (the plain-SVI row that got there in the fewest
steps, else the one with the lowest final loss; ``> x`` when that baseline never got
there, its total over the row's figure), the final prior energy over the reference
and the share of it held in Goldstone modes, the final loss, held-out log-likelihood
(MovieLens, DWE), the median first-to-last cosine and the word-aging lists (DWE), and
seconds per step. Timings exclude the recording of the energies.

The learning rates in ``EXTRA_LR`` are the lowest final loss (per rating, per token)
of sweeps of 150 steps at the default sizes, seed 0. MovieLens: Adam 0.01 / 0.03 / 0.1
/ 0.3 gave 38.0 / 2.09 / 2.04 / 2.51 (Adagrad at its tuned 0.3: 1.90); gradient
descent, whose step is its clip norm times the rate once clipped, with clip norm 10
and rates 0.1 / 1 gave 59.9 / 34.3 (10: NaN), with clip norm 1000 and rates 0.01 /
0.03 / 0.05 / 0.1 gave 38.0 / 2.92 / inf / NaN. DWE (means drawn per bin, diffusion
0.001): Adagrad 0.1 / 0.3 / 1 gave 10.12 / 9.70 / 9.78 (Adam at its tuned 0.08:
9.78); gradient descent with clip norm 10 and rates 0.1 / 0.3 / 1 gave 10.95 / 10.77
/ 377. DCTAdam (1000 steps on the dense factorisation): 0.01 / 0.025 / 0.05 / 0.1 /
0.2 gave 4.12e5 / 3.02e5 / 2.94e5 / 2.84e5 / 2.84e5 (Adam at its tuned 0.05:
2.32e5); MovieLens 0.01 / 0.03 / 0.1: 32.5 / 2.16 / 2.67; DWE 0.04 / 0.08: 9.93 /
9.69.
Riemannian Adam: on the dense factorisation, rates 0.01 / 0.05 / 0.2 with 10 steps
per phase ended at prior energies 9114 / 6830 / 6845 (30 steps at 0.05: 6752).

Torch runs on one thread by default (``--threads``): on two shared cores a
dynamic-factorisation step took 0.029 s with one thread and 0.156 s with two.

Run from a clone::

    python -m benchmarks.compare                  # default sizes, about 10 minutes
    python -m benchmarks.compare --smoke          # well under a minute

It writes ``results.json`` and ``results.md`` (one table per model) to ``--out``
(default ``runs/benchmarks/compare``) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time

import torch
from tqdm.auto import tqdm

from benchmarks.compare import alternatives
from benchmarks.compare.report import (
    BASELINES,
    POST_HOC,
    RIEMANNIAN,
    ROWS,
    best_baseline,
    markdown_table,
    summarise,
)
from benchmarks.compare.runners import BENCHMARKS, EXTRA_LR
from models.dwe import aging_markdown
from pyro_goldstone.training import add_convergence

__all__ = ["DEFAULT_SIZES", "SMOKE_SIZES", "main", "run_benchmark"]

logger = logging.getLogger("benchmarks.compare")

#: sizes of the default run; ``None`` keeps the model's own default
DEFAULT_SIZES = {
    "dynamic_mf": {
        "num_steps": None,
        "num_time_steps": None,
        "dim": None,
        "num_rows": None,
        "num_cols": None,
        "init": "twisted",
    },
    "movielens": {
        "num_steps": 400,
        "num_bins": 20,
        "dim": 5,
        "batch_size": 2000,
        "record_every": 10,
        "users": None,
    },
    "dwe": {
        "num_steps": 600,
        "vocab_size": 1000,
        "dim": 20,
        "bin_width": 10.0,
        "word_batch": 200,
        "context_batch": 200,
        "interval": None,
        "record_every": 20,
    },
}
#: sizes of ``--smoke``; the models' own smoke sizes where ``None``
SMOKE_SIZES = {
    "dynamic_mf": dict(DEFAULT_SIZES["dynamic_mf"]),
    "movielens": dict(
        DEFAULT_SIZES["movielens"], num_steps=60, num_bins=8, dim=4, users=40
    ),
    "dwe": {key: None for key in DEFAULT_SIZES["dwe"]},
}
# rows whose learning rate --lr sets (DCTAdam's defaults to the model's Adam rate)
_TUNED_ROWS = BASELINES + ("dctadam",)
# command-line flag: (model, size key, type)
_SIZE_FLAGS = {
    "mf-steps": ("dynamic_mf", "num_steps", int),
    "mf-time-steps": ("dynamic_mf", "num_time_steps", int),
    "mf-dim": ("dynamic_mf", "dim", int),
    "mf-rows": ("dynamic_mf", "num_rows", int),
    "mf-cols": ("dynamic_mf", "num_cols", int),
    "ml-steps": ("movielens", "num_steps", int),
    "ml-bins": ("movielens", "num_bins", int),
    "ml-dim": ("movielens", "dim", int),
    "ml-users": ("movielens", "users", int),
    "ml-batch-size": ("movielens", "batch_size", int),
    "dwe-steps": ("dwe", "num_steps", int),
    "dwe-vocab": ("dwe", "vocab_size", int),
    "dwe-dim": ("dwe", "dim", int),
    "dwe-bin-width": ("dwe", "bin_width", float),
    "dwe-batch": ("dwe", "word_batch", int),
    "dwe-interval": ("dwe", "interval", int),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", default=os.path.join("runs", "benchmarks", "compare"))
    parser.add_argument("--smoke", action="store_true", help="a run of about a minute")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--models", nargs="+", choices=tuple(BENCHMARKS), default=list(BENCHMARKS)
    )
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--mf-init", choices=("twisted", "independent"))
    for flag, (_, _, kind) in _SIZE_FLAGS.items():
        parser.add_argument(f"--{flag}", type=kind, default=None)
    parser.add_argument(
        "--lr",
        action="append",
        default=[],
        metavar="MODEL.ROW=VALUE",
        help="override a learning rate, e.g. movielens.adam=0.05 (repeatable)",
    )
    parser.add_argument("--riemannian-steps", type=int, default=10)
    parser.add_argument("--riemannian-lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _learning_rates(settings) -> dict:
    rates = {name: dict(EXTRA_LR.get(name, {})) for name in BENCHMARKS}
    for item in settings.lr:
        key, _, value = item.partition("=")
        model, _, row = key.partition(".")
        if model not in BENCHMARKS or row not in _TUNED_ROWS or not value:
            raise ValueError(
                f"--lr takes MODEL.ROW=VALUE with MODEL one of {tuple(BENCHMARKS)} and "
                f"ROW one of {_TUNED_ROWS}, but got {item!r}"
            )
        try:
            rate = float(value)
        except ValueError:
            raise ValueError(f"--lr: {value!r} is not a number (in {item!r})") from None
        if not rate > 0:
            raise ValueError(f"--lr: the learning rate must be positive, got {item!r}")
        rates[model][row] = rate
    return rates


def _sizes(settings) -> dict:
    sizes = {
        name: dict(table)
        for name, table in (SMOKE_SIZES if settings.smoke else DEFAULT_SIZES).items()
    }
    for flag, (model, key, _) in _SIZE_FLAGS.items():
        value = getattr(settings, flag.replace("-", "_"))
        if value is None:
            continue
        if not value > 0:
            raise ValueError(f"--{flag} must be positive, but got {value}")
        sizes[model][key] = value
    if settings.mf_init is not None:
        sizes["dynamic_mf"]["init"] = settings.mf_init
    sizes["dwe"]["context_batch"] = sizes["dwe"]["word_batch"]
    return sizes


def _check(settings) -> None:
    for name in ("riemannian_steps", "threads"):
        if getattr(settings, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if not settings.riemannian_lr > 0:
        raise ValueError("--riemannian-lr must be positive")
    if not set(settings.rows) & set(BASELINES):
        raise ValueError(f"--rows must include at least one baseline of {BASELINES}")


def _post_hoc(bench, label: str, run: dict, snapshot: dict, reference: float) -> dict:
    """The post-hoc row: the final means of run ``label`` aligned, then evaluated."""
    alternatives.restore_params(snapshot)
    aligned = alternatives.align_post_hoc(bench.loc_names, bench.coupling)
    energy = aligned["energy_after"]
    post = {
        "steps": [run["steps"][-1]],
        "loss": [None],
        "prior_energy": [energy],
        "aligned_energy": [energy],
        "seconds": [run["seconds"][-1] + aligned["alignment_seconds"]],
        "final_loss": None,
        "seconds_per_step": None,
        "steps_to_1pct": None,
        "seconds_to_1pct": None,
        "reference_prior_energy": reference,
        "within_1pct": abs(energy - reference) <= 0.01 * abs(reference),
        "alignment_in_steps": aligned["alignment_seconds"] / run["seconds_per_step"],
        "aligned_from": label,
        **aligned,
    }
    post.update(bench.evaluate())
    return post


def run_benchmark(bench, rows, bar=None) -> dict:
    """Every row of one model; returns its results (summaries, runs, reference).

    :param Benchmark bench: the model's benchmark.
    :param rows: the rows to run, a subset of :data:`ROWS`.
    :param bar: an optional tqdm bar advanced once per row.
    :rtype: dict
    """
    runs, skipped, snapshots = {}, {}, {}
    for label in rows:
        if label == POST_HOC:
            continue
        if label == RIEMANNIAN and alternatives.geoopt is None:
            logger.warning(
                "%s: skipping %s, geoopt is not installed (pip install geoopt)",
                bench.name,
                label,
            )
            skipped[label] = ("skipped", "geoopt is not installed")
        else:
            try:
                run = bench.train(label)
            except (FloatingPointError, ValueError) as error:
                # a diverged run (non-finite loss or parameters) is a result, too
                reason = str(error).splitlines()[0]
                logger.warning("%s: %s failed: %s", bench.name, label, reason)
                skipped[label] = ("failed", reason)
            else:
                run.update(bench.evaluate())
                runs[label] = run
                if label in BASELINES:
                    snapshots[label] = alternatives.param_snapshot()
        if bar is not None:
            bar.update()
    reference = bench.reference(runs)
    for run in runs.values():
        add_convergence(run, reference)
    best = best_baseline(runs)
    if POST_HOC in rows:
        runs[POST_HOC] = _post_hoc(bench, best, runs[best], snapshots[best], reference)
        if bar is not None:
            bar.update()
    summaries = summarise(runs, skipped, reference, best)
    result = {
        "config": bench.config,
        "reference_prior_energy": reference,
        "reference_rule": bench.reference_rule,
        "best_baseline": best,
        "rows": summaries,
        "runs": runs,
        "table": markdown_table(summaries, best),
    }
    if bench.name == "dwe":
        aging = {
            label: runs[label]["aging"] for label in (best,) + ROWS[3:] if label in runs
        }
        result["aging_table"] = aging_markdown(aging, bench.counts)
    return result


def _clean(value):
    """JSON-safe copy: NaN and infinities become ``None``."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _markdown(results: dict) -> str:
    machine = results["machine"]
    parts = [
        "# Goldstone steps against the alternatives\n",
        f"`{results['command']}` on {machine['platform']}, {machine['cpu_count']} "
        f"CPU cores, torch {machine['torch']} with {machine['threads']} thread(s); "
        f"{results['total_seconds']:.0f} s in all (load average "
        f"{machine['load_before']:.1f} before, {machine['load_after']:.1f} after).\n",
    ]
    for name, model in results["models"].items():
        parts.append(f"## {name}\n")
        parts.append(
            f"Reference prior energy {model['reference_prior_energy']:.6g}: "
            f"{model['reference_rule']}. Ratios are to the best baseline, "
            f"`{model['best_baseline']}`.\n"
        )
        parts.append(model["table"] + "\n")
        if "aging_table" in model:
            parts.append("Word aging (nearest words of the first bin):\n")
            parts.append(model["aging_table"] + "\n")
    return "\n".join(parts)


def _run(settings, argv: list, rates: dict, sizes: dict) -> dict:
    """Every model and row; returns the results (before they are written)."""
    # torch imports its compiler (seconds) when the first optimiser is built; pay that
    # here, so that it does not count as training time of the first run
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    rows = [label for label in ROWS if label in settings.rows]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()

    results = {"command": " ".join(["python -m benchmarks.compare"] + argv)}
    results["settings"] = vars(settings)
    results["models"] = {}
    bar = tqdm(
        total=len(rows) * len(settings.models),
        desc="compare",
        disable=settings.no_progress,
    )
    for name in settings.models:
        tic = time.perf_counter()
        bench = BENCHMARKS[name](settings, rates[name], sizes[name])
        results["models"][name] = run_benchmark(bench, rows, bar)
        logger.info("%s: all rows in %.1f s", name, time.perf_counter() - tic)
    bar.close()
    results["total_seconds"] = time.perf_counter() - started
    results["machine"] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "geoopt": getattr(alternatives.geoopt, "__version__", None),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    return _clean(results)


def main(argv=None) -> dict:
    """Run the comparison, write ``results.json`` and ``results.md``, print the tables.

    Torch's thread count is set to ``--threads`` for the run and restored afterwards.

    :param list argv: command-line arguments (default ``sys.argv[1:]``).
    :returns: the results written to ``results.json``.
    :rtype: dict
    :raises ValueError: if an option is invalid (the message names it).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    settings = _parser().parse_args(argv)
    _check(settings)
    rates, sizes = _learning_rates(settings), _sizes(settings)
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s")
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        results = _run(settings, argv, rates, sizes)
    finally:
        torch.set_num_threads(threads)

    os.makedirs(settings.out, exist_ok=True)
    with open(os.path.join(settings.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    markdown = _markdown(results)
    with open(os.path.join(settings.out, "results.md"), "w") as f:
        f.write(markdown)
    print(markdown)
    logger.info("compare finished in %.1f s", results["total_seconds"])
    return results
