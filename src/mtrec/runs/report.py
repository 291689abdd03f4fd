"""The summary of a sweep: one table row per job, and figures for a report.

``mtrec-report <sweep folder>`` (re)writes ``summary.csv``, ``summary.md`` (with a table of
mean ± sd over the seeds, also ``summary_over_seeds.csv``, when a seed is swept; ``delta_m``
when the sweep holds single-task twins) and the PNG
figures from what the jobs left in their run folders (overrides, job record and metrics, read
through :mod:`mtrec.runs.folder`), so it works for any finished or interrupted sweep and any
launcher. Metrics come in the order of :mod:`mtrec.mtl.tasks`.
"""

from __future__ import annotations

import argparse
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mtrec.files import atomic_write_bytes, atomic_write_text
from mtrec.mtl import tasks
from mtrec.runs import folder as run_folder
from mtrec.runs import twins
from mtrec.runs.naming import is_hidden, parse_overrides, swept_keys

# Metrics in the order tables and figures show them: task by task, each task's main one first.
METRIC_ORDER = tasks.metric_names()
# each task's main metric, and the cosine of the tasks' gradients (mtl/grad_cosine)
CURVE_METRICS = (*(task.metric_names()[0] for task in tasks.TASKS), "grad_cosine")


@dataclass
class Job:
    folder: Path
    overrides: dict[str, str]
    status: str
    error: str = ""
    wall_seconds: float = math.nan
    metrics: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.folder.name


def read_job(folder: Path) -> Job:
    values = {k.lstrip("+~"): v for k, v, _ in parse_overrides(run_folder.read_overrides(folder))}
    record = run_folder.read_job(folder)
    status = record.get("status") or "unfinished"  # still running, or killed
    return Job(
        folder,
        values,
        status,
        record.get("error", ""),
        record.get("wall_seconds", math.nan),
        run_folder.read_metrics(folder),
    )


def read_sweep(sweep_dir: Path) -> tuple[list[Job], list[str]]:
    """The jobs of a sweep (every run folder inside it) and its swept keys."""
    jobs = sorted((read_job(f) for f in run_folder.run_folders(sweep_dir)), key=_job_number)
    keys = swept_keys(sweep_dir)
    if keys is None:  # no multirun.yaml: the keys whose values differ between jobs
        every = {k for job in jobs for k in job.overrides if not is_hidden(k)}
        keys = sorted(k for k in every if len({j.overrides.get(k) for j in jobs}) > 1)
    return jobs, [k.lstrip("+~") for k in keys]


def _job_number(job: Job) -> tuple[int, str]:
    try:
        return int(run_folder.read_hydra(job.folder).job.num), job.name
    except Exception:  # an unreadable job still gets a row, sorted last
        return 1 << 30, job.name


def _metric_sort_key(name: str) -> tuple[int, int, int, str]:
    prefix, _, metric = name.rpartition("/")
    task = tasks.task_of_metric(metric)
    task_order = tasks.TASKS.index(task) if task is not None else len(tasks.TASKS)
    order = METRIC_ORDER.index(metric) if metric in METRIC_ORDER else len(METRIC_ORDER)
    return ({"test": 0, "val": 1}.get(prefix, 2), task_order, order, name)


def metric_names(jobs: list[Job]) -> list[str]:
    """Every metric any job reported, in table order: test before val, then task by task in
    the order of :func:`mtrec.mtl.tasks.metric_names` (metrics of no task, e.g. ``combined``,
    last). Gate use (``mtl/gate/...``, many values) stays in metrics.json and its figure."""
    names = {m for job in jobs for m in job.metrics.get("final", {}) if "/gate/" not in m}
    return sorted(names, key=_metric_sort_key)


def compared_prefix(jobs: list[Job]) -> str:
    """``val`` where the runs have validation metrics (a validation carve-out), else ``test``:
    the metrics Δm and the Pareto front compare."""
    main = [f"val/{task.metric_names()[0]}" for task in tasks.TASKS]
    has_val = any(all(m in j.metrics.get("final", {}) for m in main) for j in jobs)
    return "val" if has_val else "test"


def delta_ms(jobs: list[Job]) -> list[float]:
    """Each job's Δm against its single-task twins in the sweep (NaN for the twins, and for
    runs without both twins); see :mod:`mtrec.runs.twins`."""
    prefix = compared_prefix(jobs)
    finals = {}
    for job in jobs:
        task = twins.twin_task(job.overrides)
        if task is not None and job.status == "completed":
            finals[(twins.setting(_shown(job.overrides)), task)] = job.metrics.get("final", {})
    values = []
    for job in jobs:
        if twins.twin_task(job.overrides) is not None:
            values.append(math.nan)
            continue
        setting = twins.setting(_shown(job.overrides))
        found = {task.name: finals.get((setting, task.name), {}) for task in tasks.TASKS}
        values.append(twins.delta_m(job.metrics.get("final", {}), found, prefix))
    return values


def _shown(overrides: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in overrides.items() if not is_hidden(k)}


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
    deltas = delta_ms(jobs)
    if any(not math.isnan(d) for d in deltas):  # the sweep holds single-task twins
        table.insert(table.columns.get_loc("error"), "delta_m", deltas)
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
    """The swept keys that only reseed a run (``seed``, ``data.split_seed``, ...)."""
    return [k for k in keys if k.rsplit(".", 1)[-1].endswith("seed")]


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


def run_label(job: Job, keys: list[str]) -> str:
    """A short legend label: the swept values with the last part of each key."""
    shown = tuple((k, job.overrides[k]) for k in keys if k in job.overrides)
    return _setting_label(shown) or job.name


def write_figures(jobs: list[Job], keys: list[str], sweep_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    finished = [j for j in jobs if j.metrics.get("history")]
    for metric in CURVE_METRICS:
        name = _curve_metric(finished, metric)
        if name is None:
            continue
        fig, ax = plt.subplots(figsize=(8, 5))
        values = []
        for job in finished:
            points = [(h["epoch"], h[name]) for h in job.metrics["history"] if name in h]
            ax.plot(*zip(*points, strict=True), label=run_label(job, keys), linewidth=1.5)
            values += [v for _, v in points]
        ax.set(xlabel="epoch", ylabel=name, title=f"{name} per epoch")
        if tasks.lower_is_better(name):  # a few huge first-epoch errors would flatten the rest
            top = min(max(values), 2 * float(pd.Series(values).median()))
            ax.set_ylim(min(values) - 0.02 * top, top * 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        written.append(_save(fig, sweep_dir / f"curve_{name.replace('/', '_')}.png"))
        plt.close(fig)

    # held-out metrics only: the gradient diagnostics have their own curve per epoch
    names = [name for name in metric_names(finished) if not name.startswith("mtl/")]
    if names:
        columns = min(3, len(names))
        rows = math.ceil(len(names) / columns)
        fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.6 * rows), squeeze=False)
        labels = [run_label(j, keys) for j in finished]
        colors = [f"C{i}" for i in range(len(finished))]
        for ax, name in zip(axes.flat, names, strict=False):
            values = [j.metrics["final"].get(name, math.nan) for j in finished]
            ax.bar(range(len(values)), values, color=colors)
            ax.set_title(name, fontsize=10)
            ax.set_xticks([])
            ax.grid(axis="y", alpha=0.3)
        for ax in list(axes.flat)[len(names) :]:
            ax.axis("off")
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors]
        fig.legend(handles, labels, loc="lower center", ncol=min(2, len(labels)), fontsize=8)
        fig.suptitle("final metrics per run")
        legend_rows = math.ceil(len(labels) / 2)
        top = 1 - 0.35 / (3.6 * rows)  # room for the title above the panels' own
        fig.tight_layout(rect=(0, (0.25 + 0.22 * legend_rows) / (3.6 * rows), 1, top))
        written.append(_save(fig, sweep_dir / "final_metrics.png"))
        plt.close(fig)
    pareto = write_pareto(finished, keys, sweep_dir)
    written += [pareto] if pareto else []
    for job in finished:
        gates = write_gate_figure(job.folder, job.metrics["history"])
        written += [gates] if gates else []
    return written


def write_pareto(jobs: list[Job], keys: list[str], sweep_dir: Path) -> Path | None:
    """``pareto.png`` in the sweep folder (see :func:`pareto_figure`), if there is one."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(jobs, keys)
    if fig is None:
        return None
    path = _save(fig, sweep_dir / "pareto.png")
    plt.close(fig)
    return path


def pareto_figure(jobs: list[Job], keys: list[str]):
    """Each run's (or setting's, mean over seeds) final MSE against MRR, the non-dominated
    ones joined, each setting's single-task twins as one star (the interaction twin's MRR,
    the rating twin's MSE: what two single-task models give). ``None`` unless two runs have
    both heads' metrics.

    Up to :data:`LABELLED_POINTS` points each carry their label; past that (a study) the
    first swept key picks the colour, the others the marker, and only the non-dominated
    points are labelled."""
    import matplotlib

    if not matplotlib.get_backend().lower().startswith(("module://", "agg", "inline")):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    prefix = compared_prefix(jobs)
    first, second = (f"{prefix}/{task.metric_names()[0]}" for task in tasks.TASKS)
    label_keys = [k for k in keys if k not in seed_keys(keys)]
    points: dict[tuple, list[tuple[float, float]]] = {}
    twin_values: dict[tuple, dict[str, list[float]]] = {}
    for job in jobs:
        final = job.metrics.get("final", {})
        task = twins.twin_task(job.overrides)
        if task is not None:
            setting = tuple(
                kv for kv in twins.setting(_shown(job.overrides)) if kv[0] in label_keys
            )
            name = first if task == tasks.INTERACTION.name else second
            twin_values.setdefault(setting, {}).setdefault(task, []).append(
                final.get(name, math.nan)
            )
        elif first in final and second in final:
            shown = tuple((k, job.overrides[k]) for k in label_keys if k in job.overrides)
            points.setdefault(shown, []).append((final[first], final[second]))
    if len(points) < 2:
        return None
    settings = list(points)
    means = [tuple(sum(v) / len(v) for v in zip(*points[s], strict=True)) for s in settings]
    front = twins.pareto_front(means)
    grouped = len(settings) > LABELLED_POINTS and len(label_keys) > 1
    group_key = label_keys[0] if grouped else None
    groups = list(dict.fromkeys(dict(s).get(group_key) for s in settings))
    rests = list(dict.fromkeys(_setting_label(s, exclude=group_key) for s in settings))

    def color(setting) -> str:
        return f"C{groups.index(dict(setting).get(group_key)) % 10}" if grouped else "C0"

    def marker(setting) -> str:
        return MARKERS[rests.index(_setting_label(setting, group_key)) % len(MARKERS)]

    fig, ax = plt.subplots(figsize=(10, 6.5) if grouped else (8, 6))
    for setting, (x, y) in zip(settings, means, strict=True):
        shape = marker(setting) if grouped else "o"
        ax.scatter([x], [y], color=color(setting), marker=shape, zorder=3)
    labelled = sorted(range(len(settings)) if not grouped else front, key=lambda i: means[i])
    middle = (min(x for x, _ in means) + max(x for x, _ in means)) / 2
    for place, i in enumerate(labelled):
        right = means[i][0] > middle  # written leftwards there: the edge would cut it
        ax.annotate(
            _setting_label(settings[i]),
            means[i],
            fontsize=7,
            xytext=(-4 if right else 4, 3 if place % 2 == 0 else -10),  # neighbours alternate
            textcoords="offset points",
            ha="right" if right else "left",
        )
    ax.plot(
        *zip(*(means[i] for i in front), strict=True),
        color="0.2" if grouped else "C1",
        marker="o",
        markersize=11,
        markerfacecolor="none",
        zorder=2,
        label="non-dominated runs",
    )
    for setting, found in twin_values.items():
        if all(found.get(t.name) for t in tasks.TASKS):
            x = sum(found[tasks.INTERACTION.name]) / len(found[tasks.INTERACTION.name])
            y = sum(found[tasks.RATING.name]) / len(found[tasks.RATING.name])
            ax.scatter(
                [x], [y], marker="*", s=160, color=color(setting) if grouped else "C3", zorder=4
            )
            if not grouped:
                ax.annotate(
                    f"twins: {_setting_label(setting) or 'single-task'}",
                    (x, y),
                    fontsize=7,
                    color="C3",
                    xytext=(4, -9),
                    textcoords="offset points",
                )
    ax.set(
        xlabel=f"{first} (higher is better)",
        ylabel=f"{second} (lower is better)",
        title="Trade-off between the tasks" + (" (mean over seeds)" if seed_keys(keys) else ""),
    )
    ax.grid(alpha=0.3)
    ax.margins(0.12)  # room for the labels at the edges
    if not grouped:
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        return fig
    short = group_key.rsplit(".", 1)[-1]
    handles = [Line2D([], [], color="0.2", marker="o", markerfacecolor="none", markersize=11)]
    handles += [Line2D([], [], color="0.4", marker="*", markersize=12, linestyle="")]
    names = ["non-dominated", "single-task twins"]
    handles += [
        Line2D([], [], color=f"C{i % 10}", marker="s", linestyle="") for i in range(len(groups))
    ]
    names += [f"{short}={g}" for g in groups]
    handles += [
        Line2D([], [], color="0.4", marker=MARKERS[i % len(MARKERS)], linestyle="")
        for i in range(len(rests))
    ]
    names += rests
    ax.legend(handles, names, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


#: more settings than this and the Pareto figure colours and marks instead of labelling
LABELLED_POINTS = 12
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def _setting_label(setting: tuple, exclude: str | None = None) -> str:
    """``key=value, ...`` with the last part of each key, ``exclude`` left out."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in setting if k != exclude)


def write_gate_figure(run_dir: Path, history: list[dict]) -> Path | None:
    """``gates.png`` in a run folder: per gate, each expert's share per epoch (stacked), from
    the ``mtl/gate/...`` values of a mixture-of-experts net; ``None`` without gates."""
    gates: dict[str, list[str]] = {}
    names = {k for h in history for k in h if k.startswith("mtl/gate/")}
    for name in sorted(names, key=lambda n: (not n.startswith("mtl/gate/user"), n)):
        gate, expert = name.removeprefix("mtl/gate/").rsplit("/", 1)
        if expert != "entropy":
            gates.setdefault(gate, []).append(name)
    if not gates:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(gates))
    rows = math.ceil(len(gates) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False)
    for ax, (gate, names) in zip(axes.flat, gates.items(), strict=False):
        names = sorted(names, key=lambda n: int(n.rsplit("/", 1)[1]))
        epochs = [h["epoch"] for h in history if names[0] in h]
        shares = [[h[n] for h in history if names[0] in h] for n in names]
        labels = [n.rsplit("/", 1)[1] for n in names]
        if len(epochs) > 1:
            ax.stackplot(epochs, shares, labels=labels)
        else:  # one epoch: one stacked bar
            bottoms = [sum(s[0] for s in shares[:i]) for i in range(len(shares))]
            for share, bottom, label in zip(shares, bottoms, labels, strict=True):
                ax.bar(epochs, share, bottom=bottom, label=label, width=0.5)
        ax.set_title(gate, fontsize=9)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(gates) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(
        handles,
        [f"expert {label}" for label in labels],
        loc="lower center",
        ncol=min(6, len(labels)),
        fontsize=7,
    )
    fig.suptitle("share of each expert per gate (training-row weighted mean), per epoch")
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    path = _save(fig, Path(run_dir) / "gates.png")
    plt.close(fig)
    return path


def _curve_metric(jobs: list[Job], metric: str) -> str | None:
    """``test/<metric>`` when it was evaluated every epoch, else ``val/<metric>``; the
    gradient diagnostics under ``mtl/``."""
    for prefix in ("test", "val", "mtl"):
        name = f"{prefix}/{metric}"
        if any(sum(name in h for h in j.metrics["history"]) > 1 for j in jobs):
            return name
    return None


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_report(sweep_dir: str | Path) -> pd.DataFrame:
    """Write ``summary.csv``, ``summary.md`` and the figures of a sweep; return the table."""
    sweep_dir = Path(sweep_dir)
    jobs, keys = read_sweep(sweep_dir)
    table = summary_table(jobs, keys)
    atomic_write_text(sweep_dir / "summary.csv", table.to_csv(index=False))
    markdown = (
        f"# Sweep {sweep_dir.name}\n\n{len(jobs)} jobs; swept: {', '.join(keys) or 'nothing'}\n\n"
        + markdown_table(compact_table(table))
    )
    seeds = seed_keys(keys)
    if seeds and table[seeds].drop_duplicates().shape[0] > 1:  # mean ± sd over the seeds
        grouped = over_seeds(table, keys)
        atomic_write_text(sweep_dir / "summary_over_seeds.csv", grouped.to_csv(index=False))
        markdown += "\n## Over seeds (completed runs: mean ± sd)\n\n"
        markdown += markdown_table(mean_sd_table(grouped))
    atomic_write_text(sweep_dir / "summary.md", markdown)
    write_figures(jobs, keys, sweep_dir)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="mtrec-report", description="Write the summary and figures of a sweep folder."
    )
    parser.add_argument(
        "sweep_dir", type=Path, help="a multirun folder, e.g. outputs/sweeps/cs330/<date>"
    )
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir() or not run_folder.run_folders(args.sweep_dir):
        parser.error(f"{args.sweep_dir} is not a sweep folder (no run folders inside)")
    table = write_report(args.sweep_dir)
    print(markdown_table(compact_table(table)))
    print(f"Wrote summary.csv, summary.md and figures to {args.sweep_dir}")


if __name__ == "__main__":
    main()
