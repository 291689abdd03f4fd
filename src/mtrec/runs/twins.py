"""Single-task twins of a sweep's runs, Δm against them, and Pareto fronts.

A run's twins are the runs of the same setting (every swept key but the weighting's) trained
on one task each, one per task the setting trains (``tasks=[...]``, else interaction and
rating): ``weighting=single weighting.task=<task>``, weight 1 on that task and 0 on the
others. Sweeps from before that weighting named the two tasks' twins ``weighting=fixed``
with ``model.factorization_weight`` 1 (interaction only) and 0 (rating only): they are read
as twins still. ``hydra/sweeper=twins`` adds the twins to a sweep.

Δm (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022; lower is better):
``(100 / K) sum_k (-1)^higher_k (M_k - B_k) / B_k`` over the main metric of each of the K
tasks the run trains, ``B_k`` the twin trained on task k alone. Negative: the multi-task run
beats its twins on average.

The sweeper itself is ``hydra_plugins.mtrec_twins_sweeper`` (Hydra loads sweepers from there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from mtrec.mtl import tasks

TASKS_KEY = "tasks"  # the tasks a run trains: tasks=[interaction,rating,like]
TASK_KEY = "weighting.task"  # the task weighting=single trains
WEIGHT_KEY = "model.factorization_weight"  # λF: 1 trains interactions alone, 0 ratings alone


def twin_overrides(task: str) -> dict[str, str]:
    """The overrides that train ``task`` alone."""
    return {"weighting": "single", TASK_KEY: task}


# the keys a twin differs in: the single weighting's, and λF, which named the older twins
TWIN_KEYS = ("weighting", TASK_KEY, WEIGHT_KEY)
OLD_TWINS = {1.0: tasks.INTERACTION.name, 0.0: tasks.RATING.name}  # λF -> the task trained


def is_weighting_key(key: str) -> bool:
    """Keys that only change how the tasks are weighted (a run's twins differ in these)."""
    key = key.lstrip("+~")
    return key in ("weighting", WEIGHT_KEY, "model.regression_weight") or key.startswith(
        "weighting."
    )


def trained(overrides: Mapping[str, str]) -> tuple[str, ...]:
    """The tasks a run with these overrides trains, in :data:`~mtrec.mtl.tasks.TASKS` order:
    its ``tasks=[...]`` override, else the default ones."""
    value = next((v for k, v in overrides.items() if k.lstrip("+~") == TASKS_KEY), None)
    if value is None:
        return tasks.DEFAULT
    names = {name.strip(" '\"") for name in value.strip("[]").split(",")}
    return tuple(task.name for task in tasks.TASKS if task.name in names)


def twin_task(overrides: Mapping[str, str]) -> str | None:
    """The task a run with these overrides trains alone, if it is a twin."""
    weighting = overrides.get("weighting", "fixed")
    if weighting == "single":
        task = overrides.get(TASK_KEY)
        return task if task in tasks.BY_NAME else None
    if weighting != "fixed" or "model.regression_weight" in overrides:
        return None
    if trained(overrides) != tasks.DEFAULT:  # λF leaves a third task's weight as it is
        return None
    try:
        return OLD_TWINS.get(float(overrides.get(WEIGHT_KEY, "nan")))
    except ValueError:
        return None


def setting(overrides: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """What a run and its twins have in common: every override but the weighting's."""
    return tuple(sorted((k, v) for k, v in overrides.items() if not is_weighting_key(k)))


def delta_m(
    metrics: Mapping[str, float],
    twins: Mapping[str, Mapping[str, float]],
    prefix: str,
    trained: Sequence[str] | None = None,
) -> float:
    """Δm in percent of a run's ``metrics`` against each task's twin's (``twins[task]``), on
    the main metric under ``prefix`` (``val`` or ``test``) of each task in ``trained`` (by
    default the tasks whose main metric the run has); NaN if a run's or twin's value is
    missing."""
    if trained is None:
        trained = [t.name for t in tasks.TASKS if f"{prefix}/{t.main_metric}" in metrics]
    terms = []
    for task in (tasks.task_named(name) for name in trained):
        name = f"{prefix}/{task.main_metric}"
        run, base = metrics.get(name, math.nan), twins.get(task.name, {}).get(name, math.nan)
        if math.isnan(run) or math.isnan(base) or base == 0:
            return math.nan
        relative = (run - base) / base
        terms.append(-relative if task.higher_is_better else relative)
    return 100 * sum(terms) / len(terms) if terms else math.nan


def pareto_front(
    points: Sequence[Sequence[float]], higher: Sequence[bool] | None = None
) -> list[int]:
    """Indices of the non-dominated points, sorted by the first objective: no other point
    is at least as good on every objective and better on one. ``higher``: whether each
    objective is better when higher; by default ``(True, False)``, (MRR, MSE)."""
    higher = (True, False) if higher is None else tuple(higher)
    signed = [tuple(v if up else -v for v, up in zip(p, higher, strict=True)) for p in points]

    def dominates(a: tuple, b: tuple) -> bool:
        return a != b and all(x >= y for x, y in zip(a, b, strict=True))

    front = [i for i, p in enumerate(signed) if not any(dominates(q, p) for q in signed)]
    return sorted(front, key=lambda i: points[i][0])


def with_twins(jobs: list[list[str]]) -> list[list[str]]:
    """The jobs (lists of ``key=value``), after the twins of each setting not already in
    them, one per task the setting trains: twins first, so Δm is known as soon as the
    first runs end. λF is read by ``weighting=fixed`` only: a job of another strategy keeps
    one of its λF values, so a sweep of strategies × λF runs each other strategy once."""

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
        for task in trained(values):
            key = (setting(values), task)
            if key in present or key in seen:
                continue
            seen.add(key)
            twins.append(base + [f"{k}={v}" for k, v in twin_overrides(task).items()])
    return twins + jobs
