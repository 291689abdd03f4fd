"""A sweep's jobs as tables: one row per job, mean ± sd over the seeds, and Δm.

The jobs are read from what they left in their run folders (overrides, job record and
metrics, through :mod:`mtrec.runs.folder`), so this works for any finished or interrupted
sweep and any launcher. Metrics come task by task, in the order the jobs' run folders
declare their tasks (``tasks.json``; :func:`sweep_tasks`), each task's main metric first.

Δm comes twice: ``delta_m`` against the twins of the run's own setting, and ``delta_m_best``
against the best twin of each task anywhere in the sweep (:func:`best_twins`), so a twin of
a weak architecture cannot flatter the multi-task runs of that architecture.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mtrec.mtl.tasks import Scored, task_of_metric
from mtrec.runs import folder as run_folder
from mtrec.runs import twins
from mtrec.runs.naming import is_hidden, parse_overrides, swept_keys


@dataclass
class Job:
    folder: Path
    overrides: dict[str, str]
    status: str
    error: str = ""
    wall_seconds: float = math.nan
    metrics: dict = field(default_factory=dict)
    declared: tuple[Scored, ...] | None = None  # its folder's tasks (run_folder.read_tasks)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def tasks(self) -> tuple[Scored, ...]:
        """The tasks the job trains, in its order, as its run folder declares them; a job of
        no declaration: the tasks its metrics report (:func:`run_folder.reported_tasks`)."""
        if self.declared is not None:
            return self.declared
        return run_folder.reported_tasks(self.metrics)


def read_job(folder: Path) -> Job:
    values = {k.lstrip("+~"): v for k, v, _ in parse_overrides(run_folder.read_overrides(folder))}
    record = run_folder.read_job(folder)
    status = record.get("status") or "unfinished"  # still running, or killed
    metrics = run_folder.read_metrics(folder)
    return Job(
        folder,
        values,
        status,
        record.get("error", ""),
        record.get("wall_seconds", math.nan),
        metrics,
        run_folder.read_tasks(folder, metrics),
    )


def read_sweep(sweep_dir: Path) -> tuple[list[Job], list[str]]:
    """The jobs of a sweep (every run folder inside it) and its swept keys (those no job
    sets left out: the twins sweeper names every key a twin may differ in)."""
    jobs = sorted((read_job(f) for f in run_folder.run_folders(sweep_dir)), key=_job_number)
    keys = swept_keys(sweep_dir)
    if keys is None:  # no multirun.yaml: the keys whose values differ between jobs
        every = {k for job in jobs for k in job.overrides if not is_hidden(k)}
        keys = sorted(k for k in every if len({j.overrides.get(k) for j in jobs}) > 1)
    keys = [k.lstrip("+~") for k in keys]
    return jobs, [k for k in keys if not jobs or any(k in job.overrides for job in jobs)]


def _job_number(job: Job) -> tuple[int, str]:
    try:
        return int(run_folder.read_hydra(job.folder).job.num), job.name
    except Exception:  # an unreadable job still gets a row, sorted last
        return 1 << 30, job.name


def sweep_tasks(jobs: Sequence[Job]) -> tuple[Scored, ...]:
    """Every task the jobs train, in the order they first come (job by job, each job's in its
    own order); a task two jobs declare apart, as the first declares it."""
    found: dict[str, Scored] = {}
    for job in jobs:
        for task in job.tasks:
            found.setdefault(task.name, task)
    return tuple(found.values())


def find_task(tasks: Sequence[Scored], name: str) -> Scored | None:
    """The task of ``tasks`` called ``name``, if there is one."""
    return next((task for task in tasks if task.name == name), None)


def _metric_index(task: Scored, metric: str) -> int:
    """Where ``metric`` comes among its task's metrics (``hr@5`` where ``hr@{k}`` is)."""
    for index, name in enumerate(task.metrics):
        if metric == name or ("{k}" in name and metric.startswith(name.split("{")[0])):
            return index
    return len(task.metrics)


def _task_order(names: str, tasks: Sequence[Scored]) -> tuple[int, ...]:
    """``interaction-rating`` -> (0, 1): a diagnostic's task or pair of tasks in the order of
    ``tasks`` (a task of none of them last)."""
    order = {task.name: i for i, task in enumerate(tasks)}
    return tuple(order.get(name, len(order)) for name in names.split("-"))


SIDES = ("user", "item")  # the sides of the vectors a diagnostic may read, in table order


def metric_sort_key(name: str, tasks: Sequence[Scored]) -> tuple:
    """Where a metric comes in tables and figures, among the metrics of ``tasks`` (the
    sweep's, :func:`sweep_tasks`; see :func:`metric_names`)."""
    prefix, _, metric = name.partition("/")
    if prefix == "mtl":  # a diagnostic, then its side and its task or pair of tasks:
        diagnostic, _, of = metric.partition("/")  # mtl/grad_cosine/rating-like,
        side, _, of = of.rpartition("/")  # mtl/effective_rank/user/interaction
        side_order = SIDES.index(side) if side in SIDES else len(SIDES) if side else -1
        return (2, diagnostic, side_order, _task_order(of, tasks) if of else (), name)
    task = task_of_metric(tasks, metric)
    if task is None:  # metrics of no task (val/combined) after every task's
        return ({"test": 0, "val": 1}.get(prefix, 3), len(tasks), 0, name)
    return (
        {"test": 0, "val": 1}.get(prefix, 3),
        tasks.index(task),
        _metric_index(task, metric),
        name,
    )


def metric_names(jobs: list[Job]) -> list[str]:
    """Every metric any job reported, in table order: test before val, then task by task in
    the order of the jobs' tasks (:func:`sweep_tasks`; metrics of no task, e.g. ``combined``,
    last), then the ``mtl/`` diagnostics, each by side (user, item) and by task or pair of
    tasks in task order. Gate use (``mtl/gate/...``, many values) stays in metrics.json and
    its figure."""
    names = {m for job in jobs for m in job.metrics.get("final", {}) if "/gate/" not in m}
    tasks = sweep_tasks(jobs)
    return sorted(names, key=lambda name: metric_sort_key(name, tasks))


def compared_prefix(jobs: list[Job]) -> str:
    """``val`` where the runs have validation metrics (a validation carve-out), else ``test``:
    the metrics Δm and the Pareto front compare."""
    has_val = any(
        f"val/{task.main_metric}" in job.metrics.get("final", {})
        for job in jobs
        for task in job.tasks
    )
    return "val" if has_val else "test"


def shown(overrides: dict[str, str]) -> dict[str, str]:
    """The overrides that say what a run is (no paths, no names)."""
    return {k: v for k, v in overrides.items() if not is_hidden(k)}


def twin_finals(jobs: list[Job]) -> dict[tuple, dict[str, float]]:
    """The final metrics of each completed single-task twin, by (setting, task)."""
    finals = {}
    for job in jobs:
        task = twins.twin_task(job.overrides)
        if task is not None and job.status == "completed":
            finals[(twins.setting(shown(job.overrides)), task)] = job.metrics.get("final", {})
    return finals


def is_seed(key: str) -> bool:
    """A key that only reseeds a run (``seed``, ``data.split_seed``, ...)."""
    return key.rsplit(".", 1)[-1].endswith("seed")


def _split_setting(job: Job) -> tuple[tuple, tuple]:
    """A job's setting (:func:`mtrec.runs.twins.setting`) as (what it is, how it is seeded)."""
    pairs = twins.setting(shown(job.overrides))
    return (
        tuple(p for p in pairs if not is_seed(p[0])),
        tuple(p for p in pairs if is_seed(p[0])),
    )


def best_twins(jobs: list[Job]) -> dict[str, dict[tuple, Job]]:
    """Per task, the twins of the setting whose completed single-task twins of that task are
    best on its main metric (under :func:`compared_prefix`, in the task's direction, the mean
    over the seeds), whatever the setting: the strongest model of that task alone the sweep
    found, one twin per seeding (``{seeds: job}``), so a run is compared on its own split."""
    prefix = compared_prefix(jobs)
    found: dict[str, dict[tuple, dict[tuple, Job]]] = {}
    declared: dict[str, Scored] = {}  # each twin's task, as the first twin of it declares it
    for job in jobs:
        name = twins.twin_task(job.overrides)
        task = find_task(job.tasks, name) if name is not None else None
        if task is None or job.status != "completed":
            continue
        metric = f"{prefix}/{task.main_metric}"
        if math.isnan(job.metrics.get("final", {}).get(metric, math.nan)):
            continue
        setting, seeds = _split_setting(job)
        found.setdefault(name, {}).setdefault(setting, {})[seeds] = job
        declared.setdefault(name, task)
    best = {}
    for name, settings in found.items():
        task = declared[name]
        metric = f"{prefix}/{task.main_metric}"

        def score(by_seed: dict[tuple, Job], task=task, metric=metric) -> float:
            mean = sum(j.metrics["final"][metric] for j in by_seed.values()) / len(by_seed)
            return mean if task.higher_is_better else -mean

        best[name] = max(settings.values(), key=score)
    return best


def _delta_ms(
    jobs: list[Job], twins_of: Callable[[Job], Mapping[str, Mapping[str, float]]]
) -> list[float]:
    """Each job's Δm against ``twins_of(job)`` (``{task: final metrics}``); NaN for twins."""
    prefix, values = compared_prefix(jobs), []
    for job in jobs:
        if twins.twin_task(job.overrides) is not None:
            values.append(math.nan)
            continue
        final = job.metrics.get("final", {})
        values.append(twins.delta_m(final, twins_of(job), prefix, job.tasks))
    return values


def delta_ms(jobs: list[Job]) -> list[float]:
    """Each job's Δm against the single-task twins of its setting, one per task it trains
    (NaN for the twins, and for runs missing a twin); see :mod:`mtrec.runs.twins`."""
    finals = twin_finals(jobs)

    def own(job: Job) -> dict[str, dict[str, float]]:
        setting = twins.setting(shown(job.overrides))
        return {task.name: finals.get((setting, task.name), {}) for task in job.tasks}

    return _delta_ms(jobs, own)


def delta_ms_best(jobs: list[Job]) -> list[float]:
    """Each job's Δm against the best twins of each task it trains, of any setting, on the
    job's own seeds (:func:`best_twins`; NaN for the twins, and for runs of a task no twin
    trained on those seeds). A twin its architecture weakens cannot lower it."""
    best = best_twins(jobs)

    def strongest(job: Job) -> dict[str, dict[str, float]]:
        seeds = _split_setting(job)[1]
        found = {task: by_seed.get(seeds) for task, by_seed in best.items()}
        return {task: twin.metrics.get("final", {}) for task, twin in found.items() if twin}

    return _delta_ms(jobs, strongest)


def summary_table(jobs: list[Job], keys: list[str]) -> pd.DataFrame:
    names = metric_names(jobs)
    rows = []
    for job in jobs:
        row = {"run": job.name, **{k: job.overrides.get(k, "") for k in keys}}
        row.update(
            status=job.status,
            wall_seconds=job.wall_seconds,
            epochs=len({h["epoch"] for h in job.metrics.get("history", [])}),
        )
        for name in names:
            best = job.metrics.get("best", {}).get(name, {})
            row[name] = job.metrics.get("final", {}).get(name, math.nan)
            row[f"{name} best"] = best.get("value", math.nan)
            row[f"{name} best epoch"] = best.get("epoch", math.nan)
        row["error"] = job.error
        rows.append(row)
    table = pd.DataFrame(rows)
    deltas = {"delta_m": delta_ms(jobs), "delta_m_best": delta_ms_best(jobs)}
    if any(not math.isnan(d) for values in deltas.values() for d in values):  # twins found
        for column, values in deltas.items():
            table.insert(table.columns.get_loc("error"), column, values)
    return table


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a Markdown table: numbers to 4 significant digits, empty cells for NaN,
    text as it is (one line, ``|`` escaped; ``1e-3`` stays ``1e-3``)."""
    text = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    shown = frame.astype(object).where(frame.notna(), None)
    for column in text:
        shown[column] = [
            None if v is None else str(v).replace("|", "\\|").replace("\n", " ")
            for v in shown[column]
        ]
    numparse_off = [frame.columns.get_loc(c) for c in text]
    table = shown.to_markdown(
        index=False, floatfmt=".4g", missingval="", disable_numparse=numparse_off
    )
    return table + "\n"


def compact_table(table: pd.DataFrame) -> pd.DataFrame:
    """Final values, and each best value with its epoch in one cell: ``0.862 (23)``."""
    compact = table.copy()
    if "error" not in compact.columns:  # no jobs yet: no columns either
        return compact
    for column in [c for c in table.columns if c.endswith(" best")]:
        epochs = table[f"{column} epoch"]
        compact[f"{column} (epoch)"] = [
            "" if math.isnan(v) else f"{v:.4g} ({int(e)})"
            for v, e in zip(table[column], epochs, strict=True)
        ]
        compact = compact.drop(columns=[column, f"{column} epoch"])
    return compact[[c for c in compact.columns if c != "error"] + ["error"]]


def seed_keys(keys: list[str]) -> list[str]:
    """The swept keys that only reseed a run (:func:`is_seed`)."""
    return [k for k in keys if is_seed(k)]


def over_seeds(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Completed runs grouped by every swept key but the seeds: the number of runs, and the
    mean and sample standard deviation of each final and best value and of ``wall_seconds``
    (``"<column> sd"`` beside ``"<column>"``), in the order the groups first appear."""
    done = table[table["status"] == "completed"] if "status" in table else table
    groups = [k for k in keys if k not in seed_keys(keys)]
    values = [
        c
        for c in done.columns
        if c not in (*keys, "run", "status", "error", "epochs")
        and not c.endswith(" epoch")
        and pd.api.types.is_numeric_dtype(done[c])
    ]
    rows = []
    for group, runs in done.groupby(groups, sort=False) if groups else [((), done)]:
        group = group if isinstance(group, tuple) else (group,)
        row = {**dict(zip(groups, group, strict=True)), "runs": len(runs)}
        for column in values:
            row[column] = runs[column].mean()
            row[f"{column} sd"] = runs[column].std(ddof=1) if len(runs) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def mean_sd_table(frame: pd.DataFrame, formats: dict[str, str] | None = None) -> pd.DataFrame:
    """``over_seeds``' table with each mean and its sd in one cell: ``0.1239 ± 0.0012``;
    ``formats``: a format spec per column (default 4 significant digits)."""
    formats = formats or {}
    shown = frame[[c for c in frame.columns if not c.endswith(" sd")]].copy().astype(object)
    for column in [c for c in frame.columns if f"{c} sd" in frame.columns]:
        spec = formats.get(column, ".4g")
        sd_spec = spec.lstrip("+") if spec.endswith("f") else ".2g"
        shown[column] = [
            ""
            if math.isnan(m)
            else f"{m:{spec}}"
            if math.isnan(sd)
            else f"{m:{spec}} ± {sd:{sd_spec}}"
            for m, sd in zip(frame[column], frame[f"{column} sd"], strict=True)
        ]
    return shown
