# SPDX-License-Identifier: Apache-2.0
"""Training loops, convergence measurements and the metrics file of the model commands.

Every model command (``python -m models.dynamic_mf``, ``models.bernoulli_mf``, ``models.dwe``)
writes ``metrics.json`` in one layout so scripts and tests can compare them::

    {"model": str, "config": {...}, "runs": {LABEL: RUN, ...}}

``LABEL`` is the base optimiser's name in lower case for a baseline (``"adam"``,
``"adagrad"``, ``"gd"``) and starts with ``"goldstone"`` for a Goldstone run. ``RUN`` is
the dictionary :func:`train` returns, completed by :func:`add_convergence`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping

import pandas as pd
import torch
from tqdm.auto import tqdm

from pyro_goldstone._atomic import atomic_write
from pyro_goldstone.gauge import solve_gauge

__all__ = [
    "REQUIRED_RUN_KEYS",
    "aligned_energy",
    "add_convergence",
    "convergence_table",
    "first_step_within",
    "table_markdown",
    "train",
    "validate_metrics",
    "warm_up",
    "write_metrics",
]

logger = logging.getLogger(__name__)

REQUIRED_RUN_KEYS = (
    "steps",
    "loss",
    "prior_energy",
    "steps_to_1pct",
    "seconds_to_1pct",
    "final_loss",
    "seconds_per_step",
)


def warm_up() -> None:
    """Pay PyTorch's one-time costs before anything is timed.

    The first optimiser step imports torch's compiler stack (seconds); without this the
    first run of a comparison is charged for it.
    """
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([param])
    param.sum().backward()
    optimizer.step()


def aligned_energy(X, coupling) -> float:
    """The lowest prior energy of ``X`` over one orthogonal transform per time step.

    ``prior_energy(X) - aligned_energy(X)`` is the part of the prior energy that
    rotations and reflections alone would remove, the energy held in Goldstone modes
    (and reflection defects). On a tree (chains included) this is exact, one
    Procrustes sweep over ``O(d)``; on a graph with cycles it is the result of a
    spanning-tree sweep and natural-gradient steps, an upper bound.

    :param X: embeddings ``(T, N, d)`` or a sequence of such tensors sharing the
        rotations (e.g. ``[U, V]``).
    :param ~pyro_goldstone.coupling.Coupling coupling: the prior's coupling graph.
    :rtype: float
    """
    method = "procrustes" if coupling.is_tree else "natural_gradient"
    with torch.no_grad():
        result = solve_gauge(X, coupling, method, allow_reflections=True)
    return float(result.energy_after)


def train(
    step: Callable[[int], float],
    num_steps: int,
    *,
    energy: Callable[[], float],
    min_energy: Callable[[], float] | None = None,
    record_every: int = 10,
    label: str = "",
    progress: bool = True,
) -> dict:
    """Run ``num_steps`` optimisation steps and record the loss and the prior energy.

    The wall time spent in ``energy`` is excluded from the reported times, so that the
    measurement does not slow down what it measures.

    :param callable step: ``step(i)`` does optimisation step ``i`` (0-based) and returns its
        loss, e.g. ``lambda i: svi.step(data)``.
    :param int num_steps: number of steps.
    :param callable energy: returns the prior energy of the current embedding means.
    :param callable min_energy: optionally returns the lowest prior energy of the
        current means over rotations and reflections per time step (e.g. through
        :func:`aligned_energy`), recorded as ``aligned_energy`` at every record.
    :param int record_every: record every this many steps (and after the last one).
    :param str label: name of the run, shown on the progress bar and in the log.
    :param bool progress: whether to show a tqdm progress bar.
    :returns: a run with ``steps``, ``loss``, ``prior_energy`` and ``seconds`` (cumulative
        training time at each record) aligned, with ``aligned_energy`` if ``min_energy``
        is given, plus ``final_loss`` (mean loss over the last
        5% of steps, at least one) and ``seconds_per_step``.
    :rtype: dict
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, but got {num_steps!r}")
    if isinstance(record_every, bool) or not isinstance(record_every, int):
        raise TypeError(f"record_every must be an int, but got {record_every!r}")
    if record_every < 1:
        raise ValueError(f"record_every must be positive, but got {record_every}")

    run = {
        "steps": [0],
        "loss": [None],
        "prior_energy": [float(energy())],
        "seconds": [0.0],
    }
    if min_energy is not None:
        run["aligned_energy"] = [float(min_energy())]
    tail = max(1, num_steps // 20)
    tail_losses = []
    elapsed = 0.0
    bar = tqdm(
        range(num_steps), desc=label or "train", disable=not progress, leave=False
    )
    for i in bar:
        start = time.perf_counter()
        loss = float(step(i))
        elapsed += time.perf_counter() - start
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"{label or 'run'}: loss is {loss} at step {i + 1}"
            )
        if i >= num_steps - tail:
            tail_losses.append(loss)
        if (i + 1) % record_every == 0 or i + 1 == num_steps:
            run["steps"].append(i + 1)
            run["loss"].append(loss)
            run["prior_energy"].append(float(energy()))
            run["seconds"].append(elapsed)
            if min_energy is not None:
                run["aligned_energy"].append(float(min_energy()))
            bar.set_postfix(loss=f"{loss:.4g}", energy=f"{run['prior_energy'][-1]:.4g}")
            logger.debug(
                "%s step %d: loss %.6g, prior energy %.6g",
                label,
                i + 1,
                loss,
                run["prior_energy"][-1],
            )
    bar.close()
    run["final_loss"] = sum(tail_losses) / len(tail_losses)
    run["seconds_per_step"] = elapsed / num_steps
    run["steps_to_1pct"] = None
    run["seconds_to_1pct"] = None
    logger.info(
        "%s: %d steps in %.1f s, final loss %.6g, final prior energy %.6g",
        label,
        num_steps,
        elapsed,
        run["final_loss"],
        run["prior_energy"][-1],
    )
    return run


def first_step_within(
    steps: list, values: list, reference: float, rel: float = 0.01
) -> int | None:
    """Index of the first value from which every later value stays within ``rel``
    (relative) of ``reference``, else ``None``.

    A run whose energy only passes through the band on its way elsewhere (a fit that
    rises from small initial means, an oscillation) has not converged there, so the
    band must hold to the end of the run; ``None`` entries (nothing recorded) are
    skipped.

    :param list steps: step numbers (only their length is used for checking).
    :param list values: measured values aligned with ``steps``.
    :param float reference: the converged value.
    :param float rel: relative tolerance, 0.01 for "within 1%".
    :rtype: int or None
    """
    if len(steps) != len(values):
        raise ValueError(
            f"steps and values must align, got {len(steps)} and {len(values)} entries"
        )
    if not (rel > 0):
        raise ValueError(f"rel must be positive, got {rel}")
    return _first_staying(
        None if value is None else abs(value - reference) <= rel * abs(reference)
        for value in values
    )


def _first_staying(flags) -> int | None:
    """Index of the first ``True`` after which no ``False`` follows (``None`` entries,
    nothing recorded, are skipped), else ``None``."""
    first = None
    for index, flag in enumerate(flags):
        if flag is None:
            continue
        if flag:
            first = index if first is None else first
        else:
            first = None
    return first


def add_convergence(run: dict, reference: float, rel: float = 0.01) -> dict:
    """Fill in ``steps_to_1pct`` and ``seconds_to_1pct`` of a run from :func:`train`:
    the first recorded step (and its training time) from which the prior energy stays
    within ``rel`` of ``reference`` (see :func:`first_step_within`).

    :param dict run: a run as returned by :func:`train`; modified in place and returned.
    :param float reference: the prior energy the run is compared with (the converged value).
    :param float rel: relative tolerance (default 1%).
    :returns: ``run``, with ``steps_to_aligned`` and ``seconds_to_aligned`` too if it
        recorded ``aligned_energy``: the first step from which the prior energy stays
        within ``rel`` of the aligned energy of the same means.
    :rtype: dict
    """
    index = first_step_within(run["steps"], run["prior_energy"], reference, rel)
    run["reference_prior_energy"] = float(reference)
    run["steps_to_1pct"] = None if index is None else run["steps"][index]
    run["seconds_to_1pct"] = None if index is None else run["seconds"][index]
    if "aligned_energy" in run:
        # the Goldstone modes are gone once the energy stays within rel of what the
        # best rotations and reflections of the same means would give
        index = _first_staying(
            energy - aligned <= rel * abs(aligned)
            for energy, aligned in zip(run["prior_energy"], run["aligned_energy"])
        )
        run["steps_to_aligned"] = None if index is None else run["steps"][index]
        run["seconds_to_aligned"] = None if index is None else run["seconds"][index]
    return run


def validate_metrics(metrics: Mapping) -> None:
    """Raise :class:`ValueError` unless ``metrics`` has the common metrics layout."""
    for key in ("model", "config", "runs"):
        if key not in metrics:
            raise ValueError(f"metrics must have the key {key!r}")
    if not isinstance(metrics["runs"], Mapping) or not metrics["runs"]:
        raise ValueError("metrics['runs'] must be a non-empty mapping of label to run")
    for label, run in metrics["runs"].items():
        missing = [key for key in REQUIRED_RUN_KEYS if key not in run]
        if missing:
            raise ValueError(f"run {label!r} lacks the keys {missing}")
        if not (len(run["steps"]) == len(run["loss"]) == len(run["prior_energy"])):
            raise ValueError(f"run {label!r}: steps, loss and prior_energy must align")


def write_metrics(path: str, model: str, config: Mapping, runs: Mapping) -> dict:
    """Validate and write ``metrics.json`` atomically (a temporary file, then a rename).

    :param str path: the file to write.
    :param str model: the model's name.
    :param dict config: every option the command used.
    :param dict runs: label to run, as from :func:`train` and :func:`add_convergence`.
    :returns: the metrics object written.
    :rtype: dict
    """
    metrics = {"model": model, "config": dict(config), "runs": dict(runs)}
    validate_metrics(metrics)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(metrics, f, indent=1, default=str)
    return metrics


def convergence_table(runs: Mapping, extra: tuple = ()) -> pd.DataFrame:
    """A table of convergence figures, one row per run, with ratios to the best baseline.

    The best baseline is the non-Goldstone run that reached the 1% threshold in the fewest
    steps (or, if none did, the one with the lowest final prior energy); ratios are that
    baseline's figure divided by the run's, so ``10`` reads "ten times fewer steps".

    :param dict runs: label to run.
    :param tuple extra: further keys of each run to show as columns (e.g. ``"test_loglik"``).
    :rtype: pandas.DataFrame
    """
    rows = []
    for label, run in runs.items():
        row = {
            "run": label,
            "steps to 1%": run.get("steps_to_1pct"),
            "seconds to 1%": run.get("seconds_to_1pct"),
            "steps to aligned": run.get("steps_to_aligned"),
            "final prior energy": run["prior_energy"][-1],
            "final loss": run.get("final_loss"),
            "ms per step": 1000 * run.get("seconds_per_step", float("nan")),
        }
        row.update({key: run.get(key) for key in extra})
        rows.append(row)
    table = pd.DataFrame(rows).set_index("run")
    if not any("steps_to_aligned" in run for run in runs.values()):
        table = table.drop(columns="steps to aligned")
    baselines = table[~table.index.str.startswith("goldstone")]
    reached = baselines.dropna(subset=["steps to 1%"])
    if len(reached):
        best = reached["steps to 1%"].astype(float).idxmin()
    elif len(baselines):
        best = baselines["final prior energy"].astype(float).idxmin()
    else:
        best = None
    if best is not None:
        for column, ratio in (
            ("steps to 1%", "step ratio"),
            ("seconds to 1%", "time ratio"),
        ):
            base = table.loc[best, column]
            table[ratio] = [
                (float(base) / float(value))
                if pd.notna(base) and pd.notna(value)
                else None
                for value in table[column]
            ]
        table.attrs["best_baseline"] = best
    return table


def table_markdown(table: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A convergence table as markdown: ``–`` where a run never got there, and without
    the ratio columns when no baseline reached the threshold.

    :param pandas.DataFrame table: as from :func:`convergence_table`.
    :param str floatfmt: number format of the cells (default ``".4g"``).
    :rtype: str
    """
    ratios = [c for c in ("step ratio", "time ratio") if c in table.columns]
    empty = [c for c in ratios if table[c].isna().all()]
    shown = table.drop(columns=empty).astype(object)
    shown = shown.where(shown.notna(), None)
    return shown.to_markdown(floatfmt=floatfmt, missingval="–")
