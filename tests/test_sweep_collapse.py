"""The effective rank of each task's vectors in a sweep's report: one panel per side and
task, one line per run, final values in the summary; no figure for sweeps that never
logged it. The sweeps are folders made by hand, as runs leave them."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from mtrec.mtl.tasks import Interaction, Like, Rating
from mtrec.runs import figures, report, tables
from mtrec.runs.folder import write_tasks
from mtrec.training.callbacks import MetricsHistory

matplotlib.use("Agg")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RANK = "mtl/effective_rank"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


TWO = (Interaction(), Rating())


def write_run(sweep: Path, name: str, overrides: list[str], history: list[dict], tasks=TWO) -> Path:
    """A completed run folder: its config and overrides, job record, its ``tasks`` and
    metrics record (final and best values from ``history``, as the run writes them)."""
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / "job.json").write_text(json.dumps({"status": "completed", "wall_seconds": 2.0}))
    record = MetricsHistory(folder / "metrics.json")
    record.tasks = tasks
    write_tasks(folder, tasks)
    record.history = history
    (folder / "metrics.json").write_text(json.dumps(record.summary()))
    return folder


def ranks(start: float, panels: list[tuple[str, str]], epochs: int = 3) -> list[dict]:
    """Per epoch: test MRR and MSE, and each (side, task)'s effective rank, falling from
    ``start`` by one per epoch (abundance beside it)."""
    history = []
    for epoch in range(1, epochs + 1):
        entry = {"epoch": epoch, "test/mrr": 0.1, "test/mse": 0.9}
        for side, task in panels:
            entry[f"{RANK}/{side}/{task}"] = start - epoch
            entry[f"mtl/abundance/{side}/{task}"] = 2.0
        history.append(entry)
    return history


TWO_TASKS = [(side, task) for side in ("item", "user") for task in ("rating", "interaction")]


def test_effective_rank_has_a_panel_per_side_and_task_and_a_line_per_run(tmp_path):
    write_run(tmp_path, "a", ["model.net.sharing=shared"], ranks(20, TWO_TASKS))
    three = [*TWO_TASKS, ("item", "like")]
    write_run(tmp_path, "b", ["model.net.sharing=mmoe"], ranks(10, three), (*TWO, Like()))
    write_run(tmp_path, "c", ["model.net.sharing=none"], ranks(5, []))  # logged no rank
    jobs, keys = tables.read_sweep(tmp_path)
    fig = figures.effective_rank_figure(jobs, keys)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    # users first, tasks in task order; no user/like panel: no run logged it
    assert list(panels) == [
        "user/interaction",
        "user/rating",
        "item/interaction",
        "item/rating",
        "item/like",
    ]
    labels = {job.name: figures.run_label(job, keys) for job in jobs}
    for title, ax in panels.items():
        drawn = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
        expected = {labels["b"]: [9, 8, 7]}
        if title != "item/like":
            expected[labels["a"]] = [19, 18, 17]
        assert drawn == expected
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [labels["a"], labels["b"]]  # each run once, for every panel


def test_the_report_draws_effective_rank_and_puts_the_final_ranks_in_the_summary(tmp_path):
    write_run(tmp_path, "a", ["model.net.sharing=shared"], ranks(20, TWO_TASKS))
    write_run(tmp_path, "b", ["model.net.sharing=mmoe"], ranks(10, TWO_TASKS))
    report.write_report(tmp_path)
    assert (tmp_path / "effective_rank.png").read_bytes().startswith(PNG_MAGIC)
    table = pd.read_csv(tmp_path / "summary.csv").set_index("run")
    assert list(table.loc[["a", "b"], f"{RANK}/user/interaction"]) == [17, 7]  # final values
    assert list(table.loc[["a", "b"], f"{RANK}/item/interaction best"]) == [19, 9]
    ranked = [c for c in table.columns if c.startswith(RANK) and " " not in c]
    in_order = [(side, task) for side in ("user", "item") for task in ("interaction", "rating")]
    assert ranked == [f"{RANK}/{side}/{task}" for side, task in in_order]  # users first


def test_a_sweep_that_never_logged_effective_rank_has_no_such_figure(tmp_path):
    write_run(tmp_path, "a", ["model.net.sharing=shared"], ranks(20, []))
    write_run(tmp_path, "b", ["model.net.sharing=mmoe"], ranks(10, []))
    report.write_report(tmp_path)
    assert (tmp_path / "summary.csv").exists() and (tmp_path / "curve_test_mrr.png").exists()
    assert not (tmp_path / "effective_rank.png").exists()
    assert figures.effective_rank_figure(*tables.read_sweep(tmp_path)) is None


def test_legend_labels_round_a_searchs_sampled_values_but_not_names(tmp_path):
    """A search's trials carry sampled floats in full (their folder names must not collide);
    the legend shows four significant digits, and other values as they were given."""
    overrides = ["optimizer.lr=0.005536916898297913", "model.l2=4.925222337791059e-08"]
    write_run(tmp_path, "a", [*overrides, "weighting=pcgrad", "model.net.embedding_dim=64"], [])
    (job,), _ = tables.read_sweep(tmp_path)
    keys = ["optimizer.lr", "model.l2", "weighting", "model.net.embedding_dim"]
    assert (
        figures.run_label(job, keys)
        == "lr=0.005537, l2=4.925e-08, weighting=pcgrad, embedding_dim=64"
    )


def test_curves_mark_whole_epochs_only(tmp_path):
    history = [{"epoch": e, "test/mrr": 0.1 * e} for e in (1, 2, 3)]
    write_run(tmp_path, "a", ["seed=0"], history)
    jobs, keys = tables.read_sweep(tmp_path)
    fig = figures.curve_figure(jobs, keys, "test/mrr")
    fig.canvas.draw()
    ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
