"""Single-task twins of a sweep's runs, Δm against them, and Pareto fronts.

A run's twins are the runs of the same setting (every swept key but the weighting's) trained
on one task each, one per task the setting trains (``tasks=[...]``, else the reference's,
interaction and rating): ``weighting=single weighting.task=<task>``, weight 1 on that task
and 0 on the others. Sweeps from before that weighting named the two tasks' twins
``weighting=fixed`` with ``model.factorization_weight`` 1 (interaction only) and 0 (rating
only): they are read as twins still. ``hydra/sweeper=twins`` adds the twins to a sweep.

Δm (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022; lower is better):
``(100 / K) sum_k (-1)^higher_k (M_k - B_k) / B_k`` over the main metric of each of the K
tasks the run trains, ``B_k`` the twin trained on task k alone. Negative: the multi-task run
beats its twins on average. Each task's main metric and its direction are the run's own
declaration of the task (``tasks.json``), so a task of any package counts as the built-in
ones do.

The sweeper itself is ``hydra_plugins.mtrec_twins_sweeper`` (Hydra loads sweepers from there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from mtrec.mtl.tasks import REFERENCE, Interaction, Rating, Scored

TASKS_KEY = "tasks"  # the tasks a run trains: tasks=[interaction,rating,like]
TASK_KEY = "weighting.task"  # the task weighting=single trains
WEIGHT_KEY = "model.factorization_weight"  # λF: 1 trains interactions alone, 0 ratings alone


def twin_overrides(task: str) -> dict[str, str]:
    """The overrides that train ``task`` alone."""
    return {"weighting": "single", TASK_KEY: task}


# the keys a twin differs in: the single weighting's, and λF, which named the older twins
TWIN_KEYS = ("weighting", TASK_KEY, WEIGHT_KEY)
OLD_TWINS = {1.0: Interaction.name, 0.0: Rating.name}  # λF -> the task trained


def is_weighting_key(key: str) -> bool:
    """Keys that only change how the tasks are weighted (a run's twins differ in these)."""
    key = key.lstrip("+~")
    return key in ("weighting", WEIGHT_KEY, "model.regression_weight") or key.startswith(
        "weighting."
    )


def trained(overrides: Mapping[str, str]) -> tuple[str, ...]:
    """The tasks a run with these overrides trains, in the order its ``tasks=[...]`` override
    gives them, else the reference's (:data:`~mtrec.mtl.tasks.REFERENCE`)."""
    value = next((v for k, v in overrides.items() if k.lstrip("+~") == TASKS_KEY), None)
    if value is None:
        return tuple(task.name for task in REFERENCE)
    names = (name.strip(" '\"") for name in value.strip("[]").split(","))
    return tuple(dict.fromkeys(name for name in names if name))


def twin_task(overrides: Mapping[str, str]) -> str | None:
    """The task a run with these overrides trains alone, if it is a twin."""
    weighting = overrides.get("weighting", "fixed")
    if weighting == "single":
        return overrides.get(TASK_KEY) or None
    if weighting != "fixed" or "model.regression_weight" in overrides:
        return None
    if set(trained(overrides)) != set(OLD_TWINS.values()):
        return None  # λF sets those two tasks' weights: any other task keeps its own
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
    tasks: Sequence[Scored],
) -> float:
    """Δm in percent of a run's ``metrics`` against each task's twin's (``twins[task name]``),
    on the main metric under ``prefix`` (``val`` or ``test``) of each of ``tasks`` (the tasks
    the run trains, as it declared them: their main metrics and directions); NaN if a run's or
    twin's value is missing, or without tasks."""
    terms = []
    for task in tasks:
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
