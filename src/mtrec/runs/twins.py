"""Single-task twins of a sweep's runs, Δm against them, and Pareto fronts.

A run's twins are the two runs of the same setting (every swept key but the weighting's)
trained on one task each: ``weighting=fixed`` with ``model.factorization_weight`` 1
(interaction only) and 0 (rating only). ``hydra/sweeper=twins`` adds them to a sweep.

Δm (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022; lower is better):
``(100 / K) sum_k (-1)^higher_k (M_k - B_k) / B_k`` over each task's main metric, ``B_k`` the
twin trained on task k alone. Negative: the multi-task run beats its twins on average.

The sweeper itself is ``hydra_plugins.mtrec_twins_sweeper`` (Hydra loads sweepers from there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mtrec.mtl import tasks

WEIGHT_KEY = "model.factorization_weight"  # λF: 1 trains interactions alone, 0 ratings alone
TWINS = {  # each task's twin: the overrides that train it alone
    tasks.INTERACTION.name: {"weighting": "fixed", WEIGHT_KEY: "1.0"},
    tasks.RATING.name: {"weighting": "fixed", WEIGHT_KEY: "0.0"},
}
TWIN_KEYS = ("weighting", WEIGHT_KEY)  # the keys that name a twin in a sweep


def is_weighting_key(key: str) -> bool:
    """Keys that only change how the tasks are weighted (a run's twins differ in these)."""
    key = key.lstrip("+~")
    return key in ("weighting", WEIGHT_KEY, "model.regression_weight") or key.startswith(
        "weighting."
    )


def twin_task(overrides: Mapping[str, str]) -> str | None:
    """The task a run with these overrides trains alone, if it is a twin."""
    if overrides.get("weighting", "fixed") != "fixed" or "model.regression_weight" in overrides:
        return None
    try:
        weight = float(overrides.get(WEIGHT_KEY, "nan"))
    except ValueError:
        return None
    return {1.0: tasks.INTERACTION.name, 0.0: tasks.RATING.name}.get(weight)


def setting(overrides: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """What a run and its twins have in common: every override but the weighting's."""
    return tuple(sorted((k, v) for k, v in overrides.items() if not is_weighting_key(k)))


def delta_m(metrics: Mapping[str, float], twins: Mapping[str, Mapping[str, float]], prefix: str):
    """Δm in percent of a run's ``metrics`` against each task's twin's (``twins[task]``), on
    each task's main metric under ``prefix`` (``val`` or ``test``); NaN if one is missing."""
    terms = []
    for task in tasks.TASKS:
        name = f"{prefix}/{task.metric_names()[0]}"
        run, base = metrics.get(name, math.nan), twins.get(task.name, {}).get(name, math.nan)
        if math.isnan(run) or math.isnan(base) or base == 0:
            return math.nan
        relative = (run - base) / base
        terms.append(-relative if task.higher_is_better else relative)
    return 100 * sum(terms) / len(terms)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points, each ``(higher-is-better, lower-is-better)``
    (MRR, MSE), sorted by the first: no other point is at least as good on both and better
    on one."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], points[i][1]))
    front, best_second = [], math.inf
    for i in order:
        if points[i][1] < best_second:
            front.append(i)
            best_second = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def with_twins(jobs: list[list[str]]) -> list[list[str]]:
    """The jobs (lists of ``key=value``), after the twins of each setting not already in
    them: twins first, so Δm is known as soon as the first runs end. λF is read by
    ``weighting=fixed`` only: a job of another strategy keeps one of its λF values, so a
    sweep of strategies × λF runs each other strategy once."""

    def parsed(job: list[str]) -> dict[str, str]:
        return dict(o.split("=", 1) for o in job)

    kept, seen_jobs = [], set()
    for job in jobs:
        values = parsed(job)
        if values.get("weighting", "fixed") != "fixed":
            job = [o for o in job if o.split("=", 1)[0] != WEIGHT_KEY]
        if tuple(job) not in seen_jobs:
            seen_jobs.add(tuple(job))
            kept.append(job)
    jobs = kept

    present = {(setting(parsed(job)), twin_task(parsed(job))) for job in jobs}
    twins, seen = [], set()
    for job in jobs:
        values = parsed(job)
        base = [o for o in job if not is_weighting_key(o.split("=", 1)[0])]
        for task, overrides in TWINS.items():
            key = (setting(values), task)
            if key in present or key in seen:
                continue
            seen.add(key)
            twins.append(base + [f"{k}={v}" for k, v in overrides.items()])
    return twins + jobs
