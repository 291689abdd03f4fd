"""What a run folder records of its tasks (``tasks.json``) and how reports read it back: a
task that is not built in gets its columns, Δm, curves and trade-off from its declaration,
and a folder from before the file is read by the metrics it reported. The folders are made
by hand, as runs leave them."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import pandas as pd
import pytest
from lightning.pytorch.trainer.states import TrainerFn

from mtrec.mtl.tasks import Declared, Interaction, Like, Rating
from mtrec.runs import figures, report, tables
from mtrec.runs import folder as run_folder
from mtrec.training.callbacks import MetricsHistory

matplotlib.use("Agg")
STARS = Declared("stars", ("accuracy", "macro_f1"))  # a researcher's task, in no list of mtrec's
STAR_ERROR = Declared("stars", ("star_error", "accuracy"), frozenset({"star_error"}))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def declared(task) -> Declared:
    return Declared(task.name, tuple(task.metrics), frozenset(task.lower_is_better))


def trainer(fn: TrainerFn, metrics: dict[str, float], rank_zero: bool = True):
    return SimpleNamespace(
        is_global_zero=rank_zero,
        state=SimpleNamespace(fn=fn),
        sanity_checking=False,
        current_epoch=0,
        callback_metrics=metrics,
    )


def test_a_run_records_its_tasks_when_fitting_starts_and_ranks_by_their_directions(tmp_path):
    module = SimpleNamespace(tasks=(STAR_ERROR, Interaction()))
    history = MetricsHistory(tmp_path / "run" / "metrics.json")
    fitting = trainer(TrainerFn.FITTING, {})
    history.setup(fitting, module, "fit")
    history.on_fit_start(fitting, module)
    record = json.loads((tmp_path / "run" / "tasks.json").read_text())
    assert list(record) == ["stars", "interaction"]  # the run's order
    assert record["stars"] == {
        "metrics": ["star_error", "accuracy"],
        "lower_is_better": ["star_error"],
    }
    assert run_folder.read_tasks(tmp_path / "run") == (STAR_ERROR, declared(Interaction))
    for epoch, (error, accuracy) in enumerate([(0.5, 0.6), (0.3, 0.5)]):
        fitting.current_epoch = epoch
        fitting.callback_metrics = {"val/star_error": error, "val/accuracy": accuracy}
        history.on_validation_end(fitting, module)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics) == {"final", "best", "history"}  # the tasks are in tasks.json alone
    assert metrics["best"]["val/star_error"] == {"value": 0.3, "epoch": 2}  # lower is better
    assert metrics["best"]["val/accuracy"] == {"value": 0.6, "epoch": 1}

    other = MetricsHistory(tmp_path / "rank1" / "metrics.json")  # another DDP rank
    other.on_fit_start(trainer(TrainerFn.FITTING, {}, rank_zero=False), module)
    assert not (tmp_path / "rank1").exists()


def test_an_evaluation_without_fitting_ranks_by_the_modules_tasks(tmp_path):
    module = SimpleNamespace(tasks=(STAR_ERROR,))
    history = MetricsHistory(tmp_path / "metrics.json")
    testing = trainer(TrainerFn.TESTING, {})
    history.setup(testing, module, "test")  # no fit start: the tasks come from setup
    for value in (0.3, 0.5):
        testing.callback_metrics = {"test/star_error": value}
        history.on_test_end(testing, module)
    validating = trainer(TrainerFn.VALIDATING, {"val/star_error": 0.4})
    history.setup(validating, module, "validate")
    history.on_validation_end(validating, module)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["best"]["test/star_error"]["value"] == 0.3
    assert metrics["final"]["val/star_error"] == 0.4
    assert not (tmp_path / "tasks.json").exists()  # written by a fit only


def test_a_folder_from_before_tasks_json_is_read_by_the_metrics_it_reported(tmp_path, caplog):
    old = tmp_path / "old"
    old.mkdir()
    final = {"test/mrr": 0.1, "test/hr@10": 0.2, "test/mse": 0.9, "mtl/grad_norm/like": 1.0}
    run_folder.write_metrics(old / "metrics.json", {"final": final, "history": []})
    assert run_folder.read_tasks(old) == (declared(Interaction), declared(Rating))
    assert run_folder.read_tasks(old)[1].lower_is_better == {"mse", "rmse"}
    # a metric of a later epoch's history counts too (val/auc: the like task)
    history = [{"epoch": 1, "val/auc": 0.7}]
    assert run_folder.read_tasks(old, {"final": final, "history": history}) == (
        declared(Interaction),
        declared(Rating),
        declared(Like),
    )
    assert tables.read_job(old).tasks == (declared(Interaction), declared(Rating))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_folder.read_tasks(empty) == ()  # no record and no metrics: no task
    for damaged in ("{not json", json.dumps({"stars": {"metrics": []}})):
        (old / "tasks.json").write_text(damaged)
        run_folder._warned.clear()
        with caplog.at_level(logging.WARNING, logger="mtrec.runs.folder"):
            assert run_folder.read_tasks(old) == (declared(Interaction), declared(Rating))
        assert f"{old / 'tasks.json'} cannot be read" in caplog.text
        assert "read from the metrics it reported" in caplog.text
        caplog.clear()


def write_run(sweep: Path, name: str, overrides: list[str], final: dict[str, float]) -> Path:
    """A completed run of ``stars`` and ``interaction``: two epochs, the second's values
    ``final``, the first's a little worse."""
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("seed: 0\n")
    every = ["tasks=[stars,interaction]", *overrides]
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in every))
    run_folder.write_job(folder, {"status": "completed", "wall_seconds": 2.0})
    run_folder.write_tasks(folder, (STARS, Interaction()))
    record = MetricsHistory(folder / "metrics.json")
    record.tasks = (STARS, Interaction())
    record.history = [
        {"epoch": 1, **{k: v * 0.9 for k, v in final.items()}},
        {"epoch": 2, **final},
    ]
    run_folder.write_metrics(folder / "metrics.json", record.summary())
    return folder


def stars_sweep(tmp_path: Path) -> Path:
    """Two sharings, each a multi-task run of stars and interaction and its two twins."""
    values = {  # sharing -> run, stars twin, interaction twin: (accuracy, macro F1, MRR)
        "shared": [(0.57, 0.55, 0.11), (0.60, 0.50, 0.01), (0.20, 0.10, 0.10)],
        "mmoe": [(0.63, 0.60, 0.09), (0.66, 0.62, 0.01), (0.20, 0.10, 0.08)],
    }
    for sharing, (run, stars, interaction) in values.items():
        for name, weighting, (accuracy, f1, mrr) in (
            (sharing, ["weighting=pcgrad"], run),
            (f"{sharing}-stars", ["weighting=single", "weighting.task=stars"], stars),
            (
                f"{sharing}-interaction",
                ["weighting=single", "weighting.task=interaction"],
                interaction,
            ),
        ):
            final = {"test/accuracy": accuracy, "test/macro_f1": f1, "test/mrr": mrr}
            write_run(tmp_path, name, [f"model.net.sharing={sharing}", *weighting], final)
    return tmp_path


def test_a_task_that_is_not_built_in_gets_its_columns_delta_m_and_trade_off(tmp_path):
    sweep = stars_sweep(tmp_path)
    jobs, keys = tables.read_sweep(sweep)
    assert tables.sweep_tasks(jobs) == (STARS, declared(Interaction))
    assert tables.metric_names(jobs) == ["test/accuracy", "test/macro_f1", "test/mrr"]
    table = tables.summary_table(jobs, keys).set_index("run")
    # accuracy better higher, as stars declares: 50 * [(0.10 - 0.11) / 0.10 + (0.60 - 0.57) / 0.60]
    assert table.loc["shared", "delta_m"] == pytest.approx(-2.5)
    assert table.loc["mmoe", "delta_m"] == pytest.approx(50 * (-0.01 / 0.08 + 0.03 / 0.66))
    # the best twins: shared's interaction twin (MRR 0.10), mmoe's stars twin (accuracy 0.66)
    assert table.loc["shared", "delta_m_best"] == pytest.approx(50 * (-0.01 / 0.10 + 0.09 / 0.66))
    assert table.loc["mmoe", "delta_m_best"] == pytest.approx(50 * (0.01 / 0.10 + 0.03 / 0.66))
    assert table.loc["shared", "test/accuracy best"] == 0.57  # the second epoch's, the higher
    assert table.loc[["shared-stars", "mmoe-interaction"], "delta_m"].isna().all()

    fig = figures.pareto_figure(jobs, keys)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == (
        "test/accuracy (higher is better)",
        "test/mrr (higher is better)",
    )
    drawn = {
        c.get_gid(): tuple(c.get_offsets()[0])
        for c in ax.collections
        if c.get_gid() and len(c.get_offsets()) == 1
    }
    assert drawn["sharing=shared, weighting=pcgrad"] == pytest.approx((0.57, 0.11))
    assert drawn["twins: sharing=mmoe"] == pytest.approx((0.66, 0.08))  # each on its own task
    assert drawn["best twins"] == pytest.approx((0.66, 0.10))
    assert figures.curve_names(jobs) == ["test/accuracy", "test/mrr"]
    bars = figures.final_metrics_figure(jobs, keys)
    titles = [a.get_title() for a in bars.axes if a.get_title()]
    assert titles[0] == "test/accuracy (higher is better)"

    report.write_report(sweep)
    written = pd.read_csv(sweep / "summary.csv").set_index("run")
    assert written.loc["shared", "delta_m"] == pytest.approx(-2.5)
    assert (sweep / "curve_test_accuracy.png").exists() and (sweep / "pareto.png").exists()


def test_a_new_tasks_error_is_ranked_lower_is_better_in_the_sweep():
    """Δm and the best twin turn a task's error the way the task declares it."""
    jobs = []
    for name, overrides, error, mrr in (
        ("run", {"weighting": "pcgrad"}, 0.21, 0.11),
        ("stars twin", {"weighting": "single", "weighting.task": "stars"}, 0.20, 0.01),
        ("interaction twin", {"weighting": "single", "weighting.task": "interaction"}, 0.9, 0.10),
    ):
        for sharing in ("shared", "mmoe"):
            worse = 0.1 if sharing == "mmoe" else 0.0  # mmoe's stars twin errs more
            job = tables.Job(
                Path(f"{sharing} {name}"), overrides | {"sharing": sharing}, "completed"
            )
            job.metrics = {"final": {"test/star_error": error + worse, "test/mrr": mrr}}
            job.declared = (STAR_ERROR, declared(Interaction))
            jobs.append(job)
    # 50 * [(0.10 - 0.11) / 0.10 + (0.21 - 0.20) / 0.20]: a larger error counts against the run
    assert tables.delta_ms(jobs)[0] == pytest.approx(50 * (-0.1 + 0.05))
    best = tables.best_twins(jobs)
    assert [j.name for j in best["stars"].values()] == ["shared stars twin"]  # the lower error
    assert all(math.isnan(d) for d in tables.delta_ms(jobs)[2:])  # the twins
