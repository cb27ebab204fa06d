# SPDX-License-Identifier: Apache-2.0
"""The summary row of every run, its ratios to the best baseline, and the tables."""

from __future__ import annotations

import math

import pandas as pd

__all__ = ["BASELINES", "ROWS", "best_baseline", "markdown_table", "summarise"]

#: plain SVI, the runs the others are compared with
BASELINES = ("adam", "adagrad", "gd")
POST_HOC = "posthoc-procrustes"
RIEMANNIAN = "riemannian-adam"
#: every row of a model's table, in order
ROWS = BASELINES + (
    "dctadam",
    POST_HOC,
    RIEMANNIAN,
    "goldstone-natural_gradient",
    "goldstone-procrustes",
    "goldstone-taylor",
)
_EXTRA_KEYS = ("test_loglik", "test_auc", "median_first_last_cosine")


def best_baseline(runs: dict) -> str:
    """The best plain-SVI run: the fewest steps to the 1% threshold (then the fewest
    seconds); if no baseline reached it, the lowest final loss.

    :param dict runs: label to run (with ``steps_to_1pct`` filled in).
    :rtype: str
    :raises ValueError: if ``runs`` holds no baseline.
    """
    candidates = [label for label in BASELINES if label in runs]
    if not candidates:
        raise ValueError(f"rows must include one of the baselines {BASELINES}")
    reached = [b for b in candidates if runs[b]["steps_to_1pct"] is not None]
    if reached:
        return min(
            reached,
            key=lambda b: (runs[b]["steps_to_1pct"], runs[b]["seconds_to_1pct"]),
        )
    return min(candidates, key=lambda label: runs[label]["final_loss"])


def _ratio(numerator, denominator):
    if numerator is None or not denominator:
        return None
    return float(numerator) / float(denominator)


def _ratios(summary: dict, run: dict, base: dict, key: str) -> None:
    """``{key}_ratio`` (the baseline's figure over the run's) and, where the baseline
    never got there, ``{key}_ratio_lower_bound`` (its total over the run's figure)."""
    for unit, total in (("steps", "steps"), ("seconds", "seconds")):
        name = f"{unit}_to_{key}"
        value, reference = run.get(name), base.get(name)
        summary[name] = value
        summary[f"{name}_ratio"] = _ratio(reference, value)
        bound = None
        if reference is None and value is not None:
            bound = _ratio(base[total][-1], value)
        summary[f"{name}_ratio_lower_bound"] = bound


def summarise(runs: dict, skipped: dict, reference: float, best: str) -> dict:
    """One summary per row: figures, ratios to the best baseline, or the skip reason.

    Ratios read "times better than the best baseline": ``steps_to_1pct_ratio`` is the
    baseline's steps to the 1% threshold over the row's (likewise for seconds and for
    ``*_to_aligned``, the steps until the prior energy stays within 1% of the aligned
    energy of the same means: the Goldstone modes are gone); when the baseline never
    got there in its ``N`` steps, ``*_ratio_lower_bound`` holds ``N`` (its total
    seconds) over the row's figure. ``cost_ratio`` is the row's seconds per step over
    the baseline's; ``goldstone_share`` the part of the final prior energy that
    rotations and reflections would remove.

    :param dict runs: label to run, post-hoc alignment included.
    :param dict skipped: label to ``(status, reason)`` of a row that has no run,
        status ``"skipped"`` (not run) or ``"failed"`` (diverged).
    :param float reference: the reference prior energy of the 1% threshold.
    :param str best: the best baseline's label.
    :rtype: dict
    """
    base = runs[best]
    summaries = {}
    for label in ROWS:
        if label in skipped:
            status, reason = skipped[label]
            summaries[label] = {"status": status, "reason": reason}
            continue
        if label not in runs:
            continue
        run = runs[label]
        energy = run["prior_energy"][-1]
        aligned = run.get("aligned_energy", [None])[-1]
        summary = {"status": "ok"}
        _ratios(summary, run, base, "1pct")
        _ratios(summary, run, base, "aligned")
        summary.update(
            final_prior_energy=energy,
            energy_ratio=energy / reference,
            goldstone_share=None if aligned is None else max(0.0, 1 - aligned / energy),
            final_loss=run.get("final_loss"),
            seconds_per_step=run.get("seconds_per_step"),
            cost_ratio=_ratio(run.get("seconds_per_step"), base["seconds_per_step"]),
        )
        for key in _EXTRA_KEYS + ("alignment_seconds", "alignment_in_steps"):
            if key in run:
                summary[key] = run[key]
        summaries[label] = summary
    return summaries


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def _with_ratio(summary: dict, name: str) -> str:
    """``"790 (4.2x)"``: a figure and its ratio to the best baseline."""
    value = summary[name]
    if value is None:
        return "—"
    ratio, bound = summary[f"{name}_ratio"], summary[f"{name}_ratio_lower_bound"]
    if ratio is not None:
        return f"{_fmt(value)} ({ratio:.3g}x)"
    return f"{_fmt(value)} (> {bound:.3g}x)" if bound is not None else _fmt(value)


def markdown_table(summaries: dict, best: str) -> str:
    """The table of one model: one line per row, ratios to the best baseline.

    :param dict summaries: from :func:`summarise`.
    :param str best: the best baseline's label.
    :rtype: str
    """
    lines = []
    extras = [key for key in _EXTRA_KEYS if any(key in s for s in summaries.values())]
    for label, s in summaries.items():
        name = f"{label} (best baseline)" if label == best else label
        if s["status"] != "ok":
            lines.append({"run": name, "note": f"{s['status']}: {s['reason']}"})
            continue
        line = {
            "run": name,
            "steps to 1%": _with_ratio(s, "steps_to_1pct"),
            "s to 1%": _with_ratio(s, "seconds_to_1pct"),
            "steps to aligned": _with_ratio(s, "steps_to_aligned"),
            "final E / E_ref": _fmt(s["energy_ratio"], 4),
            "Goldstone share": _fmt(s["goldstone_share"], 2),
            "final loss": _fmt(s["final_loss"], 6),
        }
        line.update({key: _fmt(s.get(key), 4) for key in extras})
        seconds, cost = s["seconds_per_step"], s["cost_ratio"]
        line["ms per step"] = "—"
        if seconds is not None:
            line["ms per step"] = f"{1000 * seconds:.3g} ({cost:.3g}x)"
        line["note"] = ""
        if "alignment_seconds" in s:
            line["note"] = (
                f"one alignment of {best}'s final means: "
                f"{1000 * s['alignment_seconds']:.3g} ms "
                f"({s['alignment_in_steps']:.2g} of its steps)"
            )
        lines.append(line)
    table = pd.DataFrame(lines).fillna("")
    return table.to_markdown(index=False)
