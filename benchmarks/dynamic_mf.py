# SPDX-License-Identifier: Apache-2.0
"""The Goldstone-mode experiment of the paper at its default (paper-like) sizes.

Runs :func:`models.dynamic_mf.main` on its defaults (SPEC section 4.1: a 50 x 50
matrix, ``d = 3``, ``T = 100``, coupling 10, both initialisations; every option of
``python -m models.dynamic_mf`` can be passed through) and reports, per
initialisation, one markdown table: steps and seconds until the prior energy came
within 1% of its converged value, and the step and time ratios to the best baseline
(:func:`~pyro_goldstone.training.convergence_table`). The best baseline is the
non-Goldstone run that got there in the fewest steps; if none did, the ratios are
empty and the table names none.

Writes, under ``--out`` (default ``runs/benchmarks/dynamic_mf``): the command's own
outputs (``twisted/``, ``independent/``, ``summary.md``), ``results.md`` (the tables)
and ``results.json`` (the same figures, the best baselines and the environment).

Run ``python benchmarks/dynamic_mf.py`` from a clone; ``--num-threads 1`` is faster on
a busy machine. ``python benchmarks/dynamic_mf.py --smoke`` checks the script in
seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import dynamic_mf  # noqa: E402
from pyro_goldstone.training import convergence_table, table_markdown  # noqa: E402

COLUMNS = (
    "steps to 1%",
    "seconds to 1%",
    "step ratio",
    "time ratio",
    "steps to aligned",
    "final prior energy",
    "final loss",
    "ms per step",
)


def tables(results: dict) -> dict:
    """One convergence table per initialisation.

    :param dict results: ``{init: metrics}`` as returned by :func:`models.dynamic_mf.main`.
    :returns: ``{init: table}``, each a :class:`pandas.DataFrame` with the columns
        :data:`COLUMNS` (ratios only where some baseline reached the threshold) and
        ``attrs["best_baseline"]`` (``None`` if no baseline reached it).
    :rtype: dict
    """
    out = {}
    for init, metrics in results.items():
        table = convergence_table(metrics["runs"])
        reached = table.loc[~table.index.str.startswith("goldstone"), "steps to 1%"]
        best = table.attrs.get("best_baseline") if reached.notna().any() else None
        table = table[[c for c in COLUMNS if c in table.columns]]
        table.attrs["best_baseline"] = best
        out[init] = table
    return out


def report(results: dict, seconds: float) -> tuple:
    """The markdown text and the JSON object of the results.

    :param dict results: ``{init: metrics}`` as returned by :func:`models.dynamic_mf.main`.
    :param float seconds: the wall time of the whole experiment.
    :returns: ``(markdown, summary)``.
    :rtype: tuple
    """
    sections, summary = [], {"seconds": seconds, "inits": {}}
    for init, table in tables(results).items():
        config = results[init]["config"]
        best = table.attrs["best_baseline"]
        sections.append(
            f"## {init} initialisation\n\n"
            f"Reference prior energy {config['reference_prior_energy']:.6g}; "
            f"{config['num_steps']} steps; best baseline: "
            f"{best or 'none reached 1%'}.\n\n{table_markdown(table)}\n"
        )
        summary["inits"][init] = {
            "best_baseline": best,
            "reference_prior_energy": config["reference_prior_energy"],
            "table": json.loads(table.to_json(orient="index")),
        }
    summary["config"] = {
        key: value
        for key, value in results[next(iter(results))]["config"].items()
        if not key.startswith("reference") and key != "init"
    }
    summary["environment"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    markdown = f"# Dynamic MF benchmark ({seconds:.0f} s)\n\n" + "\n".join(sections)
    return markdown, summary


def main(argv=None) -> dict:
    """Run the benchmark; returns the JSON object written to ``results.json``.

    :param list argv: arguments (default ``sys.argv[1:]``); those this script does
        not know go to ``python -m models.dynamic_mf``.
    :rtype: dict
    """
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Other options go to python -m models.dynamic_mf.",
    )
    parser.add_argument(
        "--out", default=os.path.join("runs", "benchmarks", "dynamic_mf")
    )
    parser.add_argument("--num-steps", type=int, default=None)
    parser.add_argument("--num-threads", type=int, default=None, help="torch threads")
    args, rest = parser.parse_known_args(argv)
    if args.num_threads is not None:
        if args.num_threads < 1:
            raise ValueError(f"--num-threads must be positive, got {args.num_threads}")
        torch.set_num_threads(args.num_threads)
    options = [*rest, "--out", args.out]
    if args.num_steps is not None:
        options += ["--num-steps", str(args.num_steps)]

    start = time.perf_counter()
    results = dynamic_mf.main(options)
    markdown, summary = report(results, time.perf_counter() - start)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    print(markdown)
    return summary


if __name__ == "__main__":
    main()
