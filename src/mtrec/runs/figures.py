"""A sweep's figures: curves per epoch, final metrics per run, the trade-off between the
tasks, the effective rank of each task's vectors per epoch, and each mixture-of-experts run's
gate use.

Each ``*_figure`` function returns the matplotlib figure (``None`` when there is nothing to
draw), so what it draws can be read back; :func:`write_figures` saves them as PNG files.
Each task's metrics, main metric and directions are those its jobs' run folders declare
(:func:`mtrec.runs.tables.sweep_tasks`).
"""

from __future__ import annotations

import io
import itertools
import math
import re
from pathlib import Path

import pandas as pd

from mtrec.files import atomic_write_bytes
from mtrec.mtl.tasks import Scored, lower_is_better
from mtrec.runs import twins
from mtrec.runs.tables import (
    Job,
    best_twins,
    compared_prefix,
    find_task,
    metric_names,
    metric_sort_key,
    seed_keys,
    shown,
    sweep_tasks,
)

#: more settings than this and the trade-off figure colours and marks instead of labelling
LABELLED_POINTS = 12
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
LINESTYLES = ("-", "--", ":", "-.")  # runs 1-10, 11-20, ...: one per ten colours
HATCHES = ("", "//", "..", "xx")
LEGEND_INSIDE = 8  # more runs than this and a curve's legend goes beside the axes
COSINE = "mtl/grad_cosine"  # one per pair of tasks (mtl/grad_cosine/<a>-<b>), or one of two
EFFECTIVE_RANK = "mtl/effective_rank"  # one per side and task: mtl/effective_rank/user/rating
BEST_TWINS = "best single-task twins"  # the legend's name of the best twins' star


def _pyplot():
    """pyplot, drawing off-screen unless a notebook (or a test) chose its backend."""
    import matplotlib

    if not matplotlib.get_backend().lower().startswith(("module://", "agg", "inline")):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    _pyplot().close(fig)
    return path


def _setting_label(setting: tuple, exclude: str | None = None) -> str:
    """``key=value, ...`` with the last part of each key, ``exclude`` left out."""
    return ", ".join(
        f"{k.rsplit('.', 1)[-1]}={_legend_value(v)}" for k, v in setting if k != exclude
    )


def _legend_value(value) -> str:
    """A value as a legend shows it: decimals to four significant digits, since a search's
    sampled values run to 17 (``lr=0.005536916898297913``) and push the plot aside."""
    text = str(value)
    if not re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][-+]?\d+)", text):
        return text
    return f"{float(text):.4g}"


def run_label(job: Job, keys: list[str]) -> str:
    """A short legend label: the swept values with the last part of each key."""
    shown_values = tuple((k, job.overrides[k]) for k in keys if k in job.overrides)
    return _setting_label(shown_values) or job.name


def write_figures(jobs: list[Job], keys: list[str], sweep_dir: Path) -> list[Path]:
    """Every figure of a sweep, as PNG files in ``sweep_dir``; ``gates.png`` in each run
    folder that lacks it or whose run did not complete (a finished run's is drawn by the run:
    redrawing every run's after every job took 39 s of a 45-run sweep's report)."""
    finished = [j for j in jobs if j.metrics.get("history")]
    written = []
    for name in curve_names(finished):
        path = sweep_dir / f"curve_{name.replace('/', '_')}.png"
        written.append(_save(curve_figure(finished, keys, name), path))
    figures = {"final_metrics.png": final_metrics_figure(finished, keys)}
    figures["pareto.png"] = pareto_figure(finished, keys)
    figures["effective_rank.png"] = effective_rank_figure(finished, keys)
    written += [_save(fig, sweep_dir / name) for name, fig in figures.items() if fig is not None]
    for job in finished:
        if job.status == "completed" and (job.folder / "gates.png").exists():
            continue  # the run drew it at the end of its fit, and it cannot change after
        gates = write_gate_figure(job.folder, job.metrics["history"])
        written += [gates] if gates else []
    return written


def write_pareto(jobs: list[Job], keys: list[str], sweep_dir: Path) -> Path | None:
    """``pareto.png`` in the sweep folder (see :func:`pareto_figure`), if there is one."""
    fig = pareto_figure(jobs, keys)
    return _save(fig, sweep_dir / "pareto.png") if fig is not None else None


def _curve_metric(jobs: list[Job], metric: str) -> str | None:
    """``test/<metric>`` when it was evaluated every epoch, else ``val/<metric>``."""
    for prefix in ("test", "val"):
        name = f"{prefix}/{metric}"
        if _has_curve(jobs, name):
            return name
    return None


def _has_curve(jobs: list[Job], name: str) -> bool:
    return any(sum(name in h for h in j.metrics.get("history", [])) > 1 for j in jobs)


def curve_names(jobs: list[Job]) -> list[str]:
    """The metrics drawn per epoch: each task's main metric, then the cosine of each pair
    of tasks' gradients (``mtl/grad_cosine/<a>-<b>``; sweeps of two tasks before that
    logged one, ``mtl/grad_cosine``)."""
    tasks = sweep_tasks(jobs)
    names = [_curve_metric(jobs, task.main_metric) for task in tasks]
    logged = {k for j in jobs for h in j.metrics.get("history", []) for k in h}
    cosines = [n for n in logged if n == COSINE or n.startswith(f"{COSINE}/")]
    drawn = (n for n in cosines if _has_curve(jobs, n))
    names += sorted(drawn, key=lambda name: metric_sort_key(name, tasks))
    return [name for name in names if name]


def curve_figure(jobs: list[Job], keys: list[str], name: str):
    """``name`` per epoch, one line per run."""
    plt = _pyplot()
    many = len(jobs) > LEGEND_INSIDE  # the legend beside the axes, not over the curves
    fig, ax = plt.subplots(figsize=(11.5, 5) if many else (8, 5))
    values = []
    for i, job in enumerate(jobs):
        points = [(h["epoch"], h[name]) for h in job.metrics.get("history", []) if name in h]
        if points:
            ax.plot(
                *zip(*points, strict=True),
                label=run_label(job, keys),
                linewidth=1.5,
                color=f"C{i % 10}",
                linestyle=LINESTYLES[i // 10 % len(LINESTYLES)],  # past ten colours
            )
            values += [v for _, v in points]
    title = f"{name} per epoch"
    if name.startswith(COSINE):  # below 0 the tasks' gradients conflict (Yu et al., 2020)
        ax.axhline(0, color="0.4", linewidth=0.8, linestyle="--")
        title += " (below 0: the tasks' gradients conflict)"
    ax.set(xlabel="epoch", ylabel=name, title=title)
    ax.xaxis.get_major_locator().set_params(integer=True)  # epochs: no 2.5 between 2 and 3
    tasks = sweep_tasks(jobs)
    if lower_is_better(tasks, name):  # a few huge first-epoch errors would flatten the rest
        top = min(max(values), 2 * float(pd.Series(values).median()))
        ax.set_ylim(min(values) - 0.02 * top, top * 1.02)
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        fig.tight_layout()
    else:
        ax.legend(fontsize=8, loc="best")
    return fig


def effective_rank_panels(jobs: list[Job]) -> list[tuple[str, str]]:
    """The (side, task) pairs whose effective rank some run logged, users first, tasks in
    task order."""
    logged = {k for j in jobs for h in j.metrics.get("history", []) for k in h}
    tasks = sweep_tasks(jobs)
    ranks = (n for n in logged if n.startswith(f"{EFFECTIVE_RANK}/"))
    names = sorted(ranks, key=lambda name: metric_sort_key(name, tasks))
    parts = [n.removeprefix(f"{EFFECTIVE_RANK}/").split("/") for n in names]
    return [(p[0], p[1]) for p in parts if len(p) == 2]


def effective_rank_figure(jobs: list[Job], keys: list[str]):
    """The effective rank of each side's vectors per task (``mtl/effective_rank/<side>/<task>``)
    per epoch, one line per run: a shared map collapsing to a few directions shows as a rank
    that falls. A row per side (users, items), a column per task; ``None`` when no run logged
    it. Each panel's title is its ``<side>/<task>``; the runs are named once, beside them."""
    panels = effective_rank_panels(jobs)
    if not panels:
        return None
    plt = _pyplot()
    sides = list(dict.fromkeys(side for side, _ in panels))
    names = list(dict.fromkeys(task for _, task in panels))
    columns = {task: i for i, task in enumerate(names)}
    legend_columns = math.ceil(len(jobs) / 30)  # about 30 runs to a column of the legend
    longest = max(len(run_label(job, keys)) for job in jobs)
    legend = legend_columns * (0.06 * longest + 0.8)  # inches beside the panels
    width = 4.2 * len(names) + legend
    fig, axes = plt.subplots(
        len(sides), len(names), figsize=(width, 3.3 * len(sides) + 0.6), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")  # until it gets a curve: a side may not read every task's vectors
    handles = {}
    for side, task in panels:
        ax = axes[sides.index(side), columns[task]]
        ax.axis("on")
        name = f"{EFFECTIVE_RANK}/{side}/{task}"
        for i, job in enumerate(jobs):
            points = [(h["epoch"], h[name]) for h in job.metrics.get("history", []) if name in h]
            if points:
                (line,) = ax.plot(
                    *zip(*points, strict=True),
                    label=run_label(job, keys),
                    linewidth=1.5,
                    color=f"C{i % 10}",
                    linestyle=LINESTYLES[i // 10 % len(LINESTYLES)],  # past ten colours
                    marker="o" if len(points) == 1 else None,
                )
                handles.setdefault(i, line)
        ax.set_title(f"{side}/{task}", fontsize=10)
        ax.set_xlabel("epoch", fontsize=9)
        ax.set_ylabel("effective rank", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    ordered = [handles[i] for i in sorted(handles)]
    fig.legend(
        ordered,
        [line.get_label() for line in ordered],
        loc="upper right",
        bbox_to_anchor=(1, 0.95),  # level with the panels, below the title
        ncol=legend_columns,
        fontsize=8 if len(ordered) <= LEGEND_INSIDE else 7,
    )
    fig.suptitle("effective rank of each task's vectors per epoch (falling: collapsing)")
    fig.tight_layout(rect=(0, 0, 1 - legend / width, 0.97))
    return fig


def final_metrics_figure(jobs: list[Job], keys: list[str]):
    """One bar chart per held-out metric (task by task), one bar per run; ``None`` without
    metrics. The gradient diagnostics have their own curves."""
    names = [name for name in metric_names(jobs) if not name.startswith("mtl/")]
    if not names:
        return None
    tasks = sweep_tasks(jobs)
    plt = _pyplot()
    columns = min(4 if len(names) > 9 else 3, len(names))
    rows = math.ceil(len(names) / columns)
    labels = [run_label(j, keys) for j in jobs]
    legend = 0.3 + 0.2 * math.ceil(len(labels) / 2)  # inches below the panels: two columns
    height = 3.6 * rows + legend
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, height), squeeze=False)
    colors = [f"C{i % 10}" for i in range(len(jobs))]
    hatches = [HATCHES[i // 10 % len(HATCHES)] for i in range(len(jobs))]  # past ten colours
    for ax, name in zip(axes.flat, names, strict=False):
        values = [j.metrics["final"].get(name, math.nan) for j in jobs]
        ax.bar(range(len(values)), values, color=colors, hatch=hatches, edgecolor="white")
        better = "lower" if lower_is_better(tasks, name) else "higher"
        ax.set_title(f"{name} ({better} is better)", fontsize=10)
        ax.set_xticks([])
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    handles = [
        plt.Rectangle((0, 0), 1, 1, facecolor=c, hatch=h, edgecolor="white")
        for c, h in zip(colors, hatches, strict=True)
    ]
    fig.legend(handles, labels, loc="lower center", ncol=min(2, len(labels)), fontsize=8)
    fig.suptitle("final metrics per run")
    top = 1 - 0.35 / height  # room for the title above the panels' own
    fig.tight_layout(rect=(0, legend / height, 1, top))
    return fig


def _tradeoff_points(jobs: list[Job], label_keys: list[str], prefix: str):
    """Each setting's runs' main metrics (``{task: value}`` per run), and each setting's
    twins' values on the main metric of the task they train (``{task: [value, ...]}``), each
    task's main metric as the job declares it."""
    points: dict[tuple, list[dict[str, float]]] = {}
    twin_values: dict[tuple, dict[str, list[float]]] = {}
    for job in jobs:
        final = job.metrics.get("final", {})
        name = twins.twin_task(job.overrides)
        if name is not None:
            task = find_task(job.tasks, name)
            setting = tuple(kv for kv in twins.setting(shown(job.overrides)) if kv[0] in label_keys)
            metric = f"{prefix}/{task.main_metric}" if task is not None else ""
            if metric in final:
                twin_values.setdefault(setting, {}).setdefault(name, []).append(final[metric])
            continue
        values = {
            t.name: final[f"{prefix}/{t.main_metric}"]
            for t in job.tasks
            if f"{prefix}/{t.main_metric}" in final
        }
        if len(values) > 1:
            shown_values = tuple((k, job.overrides[k]) for k in label_keys if k in job.overrides)
            points.setdefault(shown_values, []).append(values)
    return points, twin_values


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def pareto_figure(jobs: list[Job], keys: list[str]):
    """The trade-off between the tasks' main metrics: each run (or setting: mean over seeds),
    the non-dominated ones marked, each setting's single-task twins as one star (each twin's
    value on its own task: what separate single-task models give), and the best twin of each
    task, whatever its setting, as one larger gold star (``gid`` ``best twins``: the ideal of
    the best single-task models, the twins ``delta_m_best`` compares with). ``None`` unless
    two settings have two tasks' metrics.

    Two tasks: MSE against MRR (:func:`_two_task_figure`); more: one panel per pair of
    tasks, better up and to the right in each (:func:`_pairwise_figure`)."""
    prefix = compared_prefix(jobs)
    label_keys = [k for k in keys if k not in seed_keys(keys)]
    points, twin_values = _tradeoff_points(jobs, label_keys, prefix)
    tasks = sweep_tasks(jobs)
    compared = [t for t in tasks if sum(t.name in p[0] for p in points.values()) > 1]
    settings = [s for s in points if sum(t.name in points[s][0] for t in compared) > 1]
    if len(compared) < 2 or len(settings) < 2:
        return None
    means = [
        {
            t.name: _mean([p[t.name] for p in points[s] if t.name in p])
            for t in compared
            if any(t.name in p for p in points[s])
        }
        for s in settings
    ]
    twin_means = {
        s: {task: _mean(values) for task, values in found.items()}
        for s, found in twin_values.items()
    }
    best = {
        name: _mean(
            [j.metrics["final"][f"{prefix}/{find_task(j.tasks, name).main_metric}"] for j in found]
        )
        for name, found in ((t, list(by_seed.values())) for t, by_seed in best_twins(jobs).items())
    }
    title = "Trade-off between the tasks" + (" (mean over seeds)" if seed_keys(keys) else "")
    style = _Style(settings, label_keys)
    figure = _two_task_figure if len(compared) == 2 else _pairwise_figure
    return figure(settings, means, twin_means, best, compared, prefix, style, title)


def _best_twins_star(ax, x: float, y: float, in_legend: bool = False) -> None:
    """The best twins' star: larger than each setting's twins' and gold, drawn under them
    (where a setting's twins are the best ones, their star sits inside it)."""
    ax.scatter(
        [x], [y], marker="*", s=420, color="gold", edgecolors="0.2", linewidths=0.8, zorder=3.5
    )
    ax.collections[-1].set_gid("best twins")
    if in_legend:
        ax.collections[-1].set_label(BEST_TWINS)


class _Style:
    """Colour and marker of each setting. Up to :data:`LABELLED_POINTS` settings each has its
    own; past that (a study) the first swept key picks the colour, the others the marker."""

    def __init__(self, settings: list[tuple], label_keys: list[str]):
        self.grouped = len(settings) > LABELLED_POINTS and len(label_keys) > 1
        self.key = label_keys[0] if self.grouped else None
        self.groups = list(dict.fromkeys(dict(s).get(self.key) for s in settings))
        self.rests = list(dict.fromkeys(_setting_label(s, exclude=self.key) for s in settings))

    def color(self, setting: tuple, default: str) -> str:
        if not self.grouped:
            return default
        group = dict(setting).get(self.key)
        return f"C{self.groups.index(group) % 10}" if group in self.groups else "0.3"

    def marker(self, setting: tuple) -> str:
        if not self.grouped:
            return "o"
        return MARKERS[self.rests.index(_setting_label(setting, self.key)) % len(MARKERS)]

    def legend(self, ax, best: bool = False) -> None:
        """Front, twins (``best``: and the best twins) and the colours and markers (grouped),
        beside the axes."""
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color="0.2", marker="o", markerfacecolor="none", markersize=11)]
        handles += [Line2D([], [], color="0.4", marker="*", markersize=12, linestyle="")]
        names = ["non-dominated", "single-task twins"]
        if best:
            handles += [_best_twins_handle()]
            names += [BEST_TWINS]
        handles += [
            Line2D([], [], color=f"C{i % 10}", marker="s", linestyle="")
            for i in range(len(self.groups))
        ]
        names += [f"{self.key.rsplit('.', 1)[-1]}={g}" for g in self.groups]
        handles += [
            Line2D([], [], color="0.4", marker=MARKERS[i % len(MARKERS)], linestyle="")
            for i in range(len(self.rests))
        ]
        names += self.rests
        ax.legend(handles, names, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))


def _best_twins_handle():
    from matplotlib.lines import Line2D

    return Line2D(
        [], [], marker="*", markersize=17, color="gold", markeredgecolor="0.2", linestyle=""
    )


def _axis_label(prefix: str, task: Scored, reversed_axis: bool = False) -> str:
    if task.higher_is_better:
        return f"{prefix}/{task.main_metric} (higher is better)"
    return f"{prefix}/{task.main_metric} (lower is better" + (
        ", reversed)" if reversed_axis else ")"
    )


def _two_task_figure(settings, means, twin_means, best, compared, prefix, style, title):
    """The second task's main metric against the first's (MSE against MRR): each setting
    one point (``gid``: its label), the non-dominated ones joined. Up to
    :data:`LABELLED_POINTS` points each carry their label; past that only the front's."""
    plt = _pyplot()
    first, second = compared
    xy = [(m[first.name], m[second.name]) for m in means]
    front = twins.pareto_front(xy, (first.higher_is_better, second.higher_is_better))
    fig, ax = plt.subplots(figsize=(10, 6.5) if style.grouped else (8, 6))
    for setting, (x, y) in zip(settings, xy, strict=True):
        color = style.color(setting, "C0")
        ax.scatter([x], [y], color=color, marker=style.marker(setting), zorder=3)
        ax.collections[-1].set_gid(_setting_label(setting))
    labelled = sorted(range(len(settings)) if not style.grouped else front, key=lambda i: xy[i])
    middle = (min(x for x, _ in xy) + max(x for x, _ in xy)) / 2
    for place, i in enumerate(labelled):
        right = xy[i][0] > middle  # written leftwards there: the edge would cut it
        ax.annotate(
            _setting_label(settings[i]),
            xy[i],
            fontsize=7,
            xytext=(-4 if right else 4, 3 if place % 2 == 0 else -10),  # neighbours alternate
            textcoords="offset points",
            ha="right" if right else "left",
        )
    ax.plot(
        *zip(*(xy[i] for i in front), strict=True),
        color="0.2" if style.grouped else "C1",
        marker="o",
        markersize=11,
        markerfacecolor="none",
        zorder=2,
        label="non-dominated runs",
    )
    for setting, found in twin_means.items():
        if first.name in found and second.name in found:
            x, y = found[first.name], found[second.name]
            color = style.color(setting, "C3")
            ax.scatter([x], [y], marker="*", s=160, color=color, zorder=4)
            ax.collections[-1].set_gid(f"twins: {_setting_label(setting) or 'single-task'}")
            if not style.grouped:
                ax.annotate(
                    f"twins: {_setting_label(setting) or 'single-task'}",
                    (x, y),
                    fontsize=7,
                    color="C3",
                    xytext=(4, -9),
                    textcoords="offset points",
                )
    has_best = first.name in best and second.name in best
    if has_best:
        _best_twins_star(ax, best[first.name], best[second.name], in_legend=True)
    ax.set(xlabel=_axis_label(prefix, first), ylabel=_axis_label(prefix, second), title=title)
    ax.grid(alpha=0.3)
    ax.margins(0.12)  # room for the labels at the edges
    if style.grouped:
        style.legend(ax, best=has_best)
    else:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def _pairwise_figure(settings, means, twin_means, best, compared, prefix, style, title):
    """One panel per pair of tasks' main metrics, each axis of an error reversed so better
    is up and to the right everywhere. A setting keeps its colour and marker in every panel
    (the legend names them); the settings non-dominated on all the tasks together are
    ringed (a setting can look dominated in one panel and not be: the rings tell).
    Each point's ``gid`` is its label; each star's ``twins: <label>``, the best twins'
    ``best twins``."""
    from matplotlib.lines import Line2D

    plt = _pyplot()
    full = [i for i, m in enumerate(means) if all(t.name in m for t in compared)]
    objectives = [[means[i][t.name] for t in compared] for i in full]
    front = [
        full[i] for i in twins.pareto_front(objectives, [t.higher_is_better for t in compared])
    ]
    pairs = list(itertools.combinations(compared, 2))
    columns = min(3, len(pairs))
    rows = math.ceil(len(pairs) / columns)
    width = 4.6 * columns + 2.8  # and the legend on the right
    fig, axes = plt.subplots(rows, columns, figsize=(width, 4.4 * rows + 0.6), squeeze=False)

    def color(i: int) -> str:
        return style.color(settings[i], f"C{i % 10}")

    def marker(i: int) -> str:
        return style.marker(settings[i]) if style.grouped else MARKERS[i // 10 % len(MARKERS)]

    for ax, (a, b) in zip(axes.flat, pairs, strict=False):
        for i, m in enumerate(means):
            if a.name in m and b.name in m:
                ax.scatter([m[a.name]], [m[b.name]], color=color(i), marker=marker(i), zorder=3)
                ax.collections[-1].set_gid(_setting_label(settings[i]))
        ringed = [(means[i][a.name], means[i][b.name]) for i in front]
        if ringed:
            ax.scatter(*zip(*ringed, strict=True), s=170, facecolors="none", edgecolors="0.2")
            ax.collections[-1].set_gid("non-dominated")
        shown = [m for m in means if a.name in m and b.name in m]
        shown += [f for f in twin_means.values() if a.name in f and b.name in f]
        if a.name in best and b.name in best:
            _best_twins_star(ax, best[a.name], best[b.name])
            shown.append(best)
        for number, (setting, found) in enumerate(twin_means.items(), 1):
            if a.name in found and b.name in found:
                ax.scatter(
                    [found[a.name]],
                    [found[b.name]],
                    marker="*",
                    s=170,
                    zorder=4,
                    color=style.color(setting, "k"),
                )
                label = _setting_label(setting) or "single-task"
                ax.collections[-1].set_gid(f"twins: {label}")
                if not style.grouped:  # one: its label; more: a number the legend names
                    # written towards the middle of the panel: the edges would cut it
                    right = _better_share(found, shown, a) > 0.5
                    up = _better_share(found, shown, b) > 0.5
                    ax.annotate(
                        f"twins: {label}" if len(twin_means) == 1 else str(number),
                        (found[a.name], found[b.name]),
                        fontsize=7 if len(twin_means) == 1 else 8,
                        xytext=(-7 if right else 7, -12 if up else 6),
                        textcoords="offset points",
                        ha="right" if right else "left",
                    )
        ax.set_xlabel(_axis_label(prefix, a, reversed_axis=True), fontsize=9)
        ax.set_ylabel(_axis_label(prefix, b, reversed_axis=True), fontsize=9)
        if not a.higher_is_better:
            ax.invert_xaxis()
        if not b.higher_is_better:
            ax.invert_yaxis()
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.margins(0.12)
    for ax in list(axes.flat)[len(pairs) :]:
        ax.axis("off")
    corner = axes.flat[columns - 1]
    has_best = sum(t.name in best for t in compared) > 1  # drawn in one panel at least
    if style.grouped:
        style.legend(corner, best=has_best)
    else:
        handles = [
            Line2D([], [], color=color(i), marker=marker(i), linestyle="")
            for i in range(len(settings))
        ]
        handles += [
            Line2D(
                [], [], color="0.2", marker="o", markerfacecolor="none", markersize=12, linestyle=""
            ),
        ]
        names = [_setting_label(s) or "run" for s in settings]
        names += [f"non-dominated ({len(compared)} tasks)"]
        star = Line2D([], [], color="k", marker="*", markersize=12, linestyle="")
        if len(twin_means) == 1:
            handles.append(star)
            names.append("single-task twins")
        for number, setting in enumerate(twin_means, 1) if len(twin_means) > 1 else ():
            handles.append(star)
            names.append(f"{number}: twins of {_setting_label(setting) or 'single-task'}")
        if has_best:
            handles.append(_best_twins_handle())
            names.append(BEST_TWINS)
        corner.legend(handles, names, fontsize=8, loc="upper left", bbox_to_anchor=(1.03, 1))
    fig.suptitle(f"{title}: better is up and to the right in each panel")
    fig.tight_layout()
    return fig


def _better_share(point: dict, points: list[dict], task: Scored) -> float:
    """How far ``point`` is towards the better end of ``task``'s axis: 0 worst, 1 best."""
    values = [p[task.name] for p in points]
    low, high = min(values), max(values)
    if high == low:
        return 0.5
    share = (point[task.name] - low) / (high - low)
    return share if task.higher_is_better else 1 - share


def gate_figure(history: list[dict]):
    """Per gate, each expert's share per epoch (stacked), from the ``mtl/gate/...`` values of
    a mixture-of-experts net; ``None`` without gates."""
    gates: dict[str, list[str]] = {}
    names = {k for h in history for k in h if k.startswith("mtl/gate/")}
    for name in sorted(names, key=lambda n: (not n.startswith("mtl/gate/user"), n)):
        gate, expert = name.removeprefix("mtl/gate/").rsplit("/", 1)
        if expert != "entropy":
            gates.setdefault(gate, []).append(name)
    if not gates:
        return None
    plt = _pyplot()
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
    return fig


def write_gate_figure(run_dir: Path, history: list[dict]) -> Path | None:
    """``gates.png`` in a run folder (see :func:`gate_figure`); ``None`` without gates."""
    fig = gate_figure(history)
    return _save(fig, Path(run_dir) / "gates.png") if fig is not None else None
