"""Single-task twins, Δm and Pareto fronts: by hand, by brute force, and in a real sweep;
the trade-off figure, read back from what it draws."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from mtrec.mtl.tasks import Interaction, Like, Rating
from mtrec.runs import figures, tables, twins
from mtrec.runs.folder import reported_tasks

matplotlib.use("Agg")
THREE = "tasks=[interaction,rating,like]"
TWO_TASKS = (Interaction(), Rating())
THREE_TASKS = (*TWO_TASKS, Like())


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def job(name: str, overrides: dict[str, str], final: dict[str, float]) -> tables.Job:
    made = tables.Job(Path(name), overrides, "completed", "", 1.0)
    made.metrics = {"final": final}
    return made


def points_of(ax) -> dict[str, tuple[float, float]]:
    """Each labelled point an axes draws (its ``gid``) at its data coordinates."""
    return {
        c.get_gid(): tuple(c.get_offsets()[0])
        for c in ax.collections
        if c.get_gid() and len(c.get_offsets()) == 1
    }


def test_delta_m_by_hand():
    twin_results = {"interaction": {"test/mrr": 0.10}, "rating": {"test/mse": 0.80}}
    run = {"test/mrr": 0.11, "test/mse": 0.84}
    # 50 * [(0.10 - 0.11) / 0.10 + (0.84 - 0.80) / 0.80] = 50 * (-0.1 + 0.05) = -2.5
    assert twins.delta_m(run, twin_results, "test", TWO_TASKS) == pytest.approx(-2.5)
    alone = twin_results["interaction"] | {"test/mse": 0.80}
    assert twins.delta_m(alone, twin_results, "test", TWO_TASKS) == 0
    assert twins.delta_m(
        run, {"interaction": {"test/mrr": 0.10}}, "test", TWO_TASKS
    ) != twins.delta_m(run, twin_results, "test", TWO_TASKS)  # a missing twin gives NaN
    assert twins.delta_m({"val/mrr": 0.1}, twin_results, "val", TWO_TASKS) != 0  # NaN: no val
    assert math.isnan(twins.delta_m(run, twin_results, "test", ()))  # no task: nothing to compare


def test_pareto_front_equals_brute_force_on_random_points():
    rng = random.Random(0)
    for _ in range(50):
        points = [(rng.random(), rng.random()) for _ in range(rng.randint(1, 12))]
        points += points[:2]  # ties
        dominated = {
            i
            for i, j in itertools.permutations(range(len(points)), 2)
            if points[j][0] >= points[i][0]
            and points[j][1] <= points[i][1]
            and points[j] != points[i]
        }
        brute = {i for i in range(len(points)) if i not in dominated}
        front = twins.pareto_front(points)
        assert {points[i] for i in front} == {points[i] for i in brute}
        assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)


def test_delta_m_of_three_tasks_by_hand():
    twin_results = {
        "interaction": {"test/mrr": 0.10},
        "rating": {"test/mse": 0.80},
        "like": {"test/auc": 0.75},
    }
    run = {"test/mrr": 0.11, "test/mse": 0.84, "test/auc": 0.72}
    # 100 / 3 * [(0.10 - 0.11) / 0.10 + (0.84 - 0.80) / 0.80 + (0.75 - 0.72) / 0.75]
    # = 100 / 3 * (-0.1 + 0.05 + 0.04) = -1/3
    expected = -1 / 3
    trained = THREE_TASKS
    assert twins.delta_m(run, twin_results, "test", trained) == pytest.approx(expected)
    reported = reported_tasks({"final": run})  # a folder from before tasks.json: all three
    assert twins.delta_m(run, twin_results, "test", reported) == pytest.approx(expected)
    two = twins.delta_m(run, twin_results, "test", TWO_TASKS)
    assert two == pytest.approx(-2.5)  # like not trained: left out
    assert math.isnan(twins.delta_m(run, twin_results | {"like": {}}, "test", trained))
    assert math.isnan(
        twins.delta_m({"test/mrr": 0.11, "test/mse": 0.84}, twin_results, "test", trained)
    )


def test_pareto_front_of_three_objectives_equals_brute_force():
    rng = random.Random(2)
    higher = (True, False, True)
    for _ in range(50):
        points = [tuple(rng.choice((0.1, 0.2, 0.3)) for _ in range(3)) for _ in range(9)]
        better = [tuple(v if up else -v for v, up in zip(p, higher, strict=True)) for p in points]
        brute = {
            i
            for i, p in enumerate(better)
            if not any(q != p and all(a >= b for a, b in zip(q, p, strict=True)) for q in better)
        }
        assert set(twins.pareto_front(points, higher)) == brute


def test_delta_ms_of_a_three_task_sweep_by_hand():
    twin_finals = {
        "interaction": (0.10, 2.0, 0.5),
        "rating": (0.01, 0.80, 0.5),
        "like": (0.01, 2.0, 0.75),
    }
    jobs = [
        job(
            f"twin {t}",
            {"tasks": "[interaction,rating,like]", "weighting": "single", "weighting.task": t},
            {"test/mrr": mrr, "test/mse": mse, "test/auc": auc},
        )
        for t, (mrr, mse, auc) in twin_finals.items()
    ]
    jobs.append(
        job(
            "run",
            {"tasks": "[interaction,rating,like]", "weighting": "pcgrad"},
            {"test/mrr": 0.11, "test/mse": 0.84, "test/auc": 0.72},
        )
    )
    jobs.append(job("two tasks", {"weighting": "pcgrad"}, {"test/mrr": 0.11, "test/mse": 0.84}))
    deltas = tables.delta_ms(jobs)
    assert all(math.isnan(d) for d in deltas[:3])  # the twins
    assert deltas[3] == pytest.approx(-1 / 3)  # as in test_delta_m_of_three_tasks_by_hand
    assert math.isnan(deltas[4])  # another setting (no tasks=): no twins of its own
    best = tables.delta_ms_best(jobs)
    assert all(math.isnan(d) for d in best[:3])
    assert best[3] == pytest.approx(-1 / 3)  # its own twins are the only ones
    assert best[4] == pytest.approx(-2.5)  # the best twins of its two tasks, of any setting


def weak_twin_sweep() -> list[tables.Job]:
    """Two architectures of two tasks, each with its twins: mmoe's twins are weak on both
    tasks, shared's strong; and a better interaction twin that did not finish."""
    found = {
        ("shared", "interaction"): 0.10,
        ("shared", "rating"): 0.80,
        ("mmoe", "interaction"): 0.08,
        ("mmoe", "rating"): 0.90,  # the largest MSE: the worst rating twin, not the best
    }
    jobs = []
    for (sharing, task), value in found.items():
        overrides = {"model.net.sharing": sharing, "weighting": "single", "weighting.task": task}
        other = {"val/mse": 3.0} if task == "interaction" else {"val/mrr": 0.01}  # untrained
        main = {"val/mrr": value} if task == "interaction" else {"val/mse": value}
        jobs.append(job(f"{sharing} {task}", overrides | {"seed": "0"}, main | other))
    interrupted = jobs[0].overrides | {"model.net.sharing": "ple"}
    jobs.append(job("interrupted", interrupted, {"val/mrr": 0.5}))  # the best MRR, unfinished
    jobs[-1].status = "unfinished"
    for sharing, mrr, mse in (("shared", 0.105, 0.82), ("mmoe", 0.09, 0.85)):
        overrides = {"model.net.sharing": sharing, "weighting": "pcgrad", "seed": "0"}
        jobs.append(job(sharing, overrides, {"val/mrr": mrr, "val/mse": mse}))
    return jobs


def test_delta_m_best_compares_with_the_best_twin_of_each_task_in_the_sweep():
    jobs = weak_twin_sweep()
    best = tables.best_twins(jobs)
    assert {task: [j.name for j in by_seed.values()] for task, by_seed in best.items()} == {
        "interaction": ["shared interaction"],  # not the unfinished run's 0.5
        "rating": ["shared rating"],  # the lowest MSE
    }
    keys = ["model.net.sharing", "weighting", "weighting.task", "seed"]
    table = tables.summary_table(jobs, keys).set_index("run")
    assert list(table.columns[-3:]) == ["delta_m", "delta_m_best", "error"]
    twin_rows = table[table["weighting"] == "single"]
    assert twin_rows[["delta_m", "delta_m_best"]].isna().all().all()
    # mmoe against its own twins: 50 * [(0.08 - 0.09) / 0.08 + (0.85 - 0.90) / 0.90]
    assert table.loc["mmoe", "delta_m"] == pytest.approx(50 * (-0.125 - 0.05 / 0.9))
    # against the best twins, shared's: 50 * [(0.10 - 0.09) / 0.10 + (0.85 - 0.80) / 0.80]
    assert table.loc["mmoe", "delta_m_best"] == pytest.approx(50 * (0.1 + 0.0625))
    # shared's own twins are the best: 50 * [(0.10 - 0.105) / 0.10 + (0.82 - 0.80) / 0.80]
    assert table.loc["shared", "delta_m"] == pytest.approx(-1.25)
    assert table.loc["shared", "delta_m_best"] == pytest.approx(-1.25)
    grouped = tables.over_seeds(table.reset_index(), keys).set_index("model.net.sharing")
    mmoe = grouped[grouped["weighting"] == "pcgrad"].loc["mmoe"]
    assert mmoe["delta_m_best"] == pytest.approx(8.125) and math.isnan(mmoe["delta_m_best sd"])


def test_delta_m_best_takes_the_best_setting_over_the_seeds_and_compares_split_by_split():
    """The best twins are those of the setting best on average over the splits; a run is
    compared with that setting's twin on its own split, never with a luckier split's."""
    values = {  # (sharing, split) -> (interaction twin's MRR, rating twin's MSE)
        ("shared", "0"): (0.10, 0.80),
        ("shared", "1"): (0.12, 0.90),
        ("mmoe", "0"): (0.13, 0.85),  # the best single MRR, on split 0 only
        ("mmoe", "1"): (0.08, 0.95),
    }
    jobs = []
    for (sharing, split), (mrr, mse) in values.items():
        base = {"model.net.sharing": sharing, "data.split_seed": split, "weighting": "single"}
        jobs.append(
            job(
                f"{sharing} {split} i",
                base | {"weighting.task": "interaction"},
                {"val/mrr": mrr, "val/mse": 3.0},
            )
        )
        jobs.append(
            job(
                f"{sharing} {split} r",
                base | {"weighting.task": "rating"},
                {"val/mrr": 0.01, "val/mse": mse},
            )
        )
    run = {"model.net.sharing": "mmoe", "data.split_seed": "1", "weighting": "pcgrad"}
    jobs.append(job("mmoe 1", run, {"val/mrr": 0.11, "val/mse": 0.90}))
    best = tables.best_twins(jobs)
    # mean MRR: shared 0.11, mmoe 0.105; mean MSE: shared 0.85, mmoe 0.90
    assert [j.name for j in best["interaction"].values()] == ["shared 0 i", "shared 1 i"]
    assert [j.name for j in best["rating"].values()] == ["shared 0 r", "shared 1 r"]
    # split 1 against shared's split-1 twins: 50 * [(0.12 - 0.11) / 0.12 + (0.90 - 0.90) / 0.90]
    assert tables.delta_ms_best(jobs)[-1] == pytest.approx(50 * 0.01 / 0.12)


def test_delta_m_best_of_a_sweep_without_twins_leaves_both_columns_out():
    jobs = [j for j in weak_twin_sweep() if j.overrides["weighting"] != "single"]
    assert all(math.isnan(d) for d in tables.delta_ms_best(jobs))
    assert "delta_m_best" not in tables.summary_table(jobs, ["model.net.sharing"]).columns


def test_the_trade_off_marks_the_best_twins_apart_from_each_settings():
    jobs = weak_twin_sweep()
    fig = figures.pareto_figure(jobs, ["model.net.sharing", "weighting", "seed"])
    ax = fig.axes[0]
    drawn = points_of(ax)
    assert drawn["best twins"] == pytest.approx((0.10, 0.80))  # the best of each task
    assert drawn["twins: sharing=mmoe"] == pytest.approx((0.08, 0.90))
    assert drawn["twins: sharing=shared"] == pytest.approx((0.10, 0.80))
    best = next(c for c in ax.collections if c.get_gid() == "best twins")
    own = next(c for c in ax.collections if c.get_gid() == "twins: sharing=shared")
    assert best.get_sizes()[0] > own.get_sizes()[0]  # around a setting's star where they meet
    assert "best single-task twins" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_twins_are_added_once_per_setting_and_first():
    jobs = [
        ["model.net.sharing=mmoe", "weighting=pcgrad", "seed=0"],
        ["model.net.sharing=mmoe", "weighting=fixed", "model.factorization_weight=0.5", "seed=0"],
        ["model.net.sharing=ple", "weighting=pcgrad", "seed=0"],
        ["model.net.sharing=ple", "weighting=fixed", "model.factorization_weight=1.0", "seed=0"],
    ]
    swept = twins.with_twins(jobs)
    assert swept[-4:] == jobs
    added = swept[:-4]
    assert added == [
        ["model.net.sharing=mmoe", "seed=0", "weighting=single", "weighting.task=interaction"],
        ["model.net.sharing=mmoe", "seed=0", "weighting=single", "weighting.task=rating"],
        ["model.net.sharing=ple", "seed=0", "weighting=single", "weighting.task=rating"],
    ]  # ple's interaction twin was already there, as older sweeps named it (λF = 1)


def test_each_task_a_setting_trains_gets_its_twin():
    jobs = [
        [THREE, "model.net.sharing=mmoe", "weighting=pcgrad"],
        [THREE, "model.net.sharing=mmoe", "weighting=nash_mtl"],
        ["tasks=[interaction,like]", "model.net.sharing=mmoe", "weighting=pcgrad"],
        ["model.net.sharing=mmoe", "weighting=pcgrad"],
    ]
    added = twins.with_twins(jobs)[: -len(jobs)]
    assert added == [
        [THREE, "model.net.sharing=mmoe", "weighting=single", f"weighting.task={task}"]
        for task in ("interaction", "rating", "like")
    ] + [
        [
            "tasks=[interaction,like]",
            "model.net.sharing=mmoe",
            "weighting=single",
            f"weighting.task={task}",
        ]
        for task in ("interaction", "like")
    ] + [
        ["model.net.sharing=mmoe", "weighting=single", f"weighting.task={task}"]
        for task in ("interaction", "rating")
    ]
    for twin in added:
        values = dict(o.split("=", 1) for o in twin)
        assert twins.twin_task(values) == values["weighting.task"]


def test_twins_are_recognised_old_and_new():
    assert twins.twin_task({"weighting": "single", "weighting.task": "like"}) == "like"
    # any task's, of any package: no list of tasks to be one of
    assert twins.twin_task({"weighting": "single", "weighting.task": "stars"}) == "stars"
    assert twins.twin_task({"weighting": "single"}) is None
    assert twins.twin_task({"weighting": "fixed", "model.factorization_weight": "1.0"}) == (
        "interaction"
    )
    assert twins.twin_task({"model.factorization_weight": "0.0"}) == "rating"
    # λF = 1 with a third task trained leaves the like task's weight on: not a twin
    three = {"tasks": "[interaction,rating,like]", "model.factorization_weight": "1.0"}
    assert twins.twin_task(three) is None
    reordered = {"tasks": "[rating,interaction]", "model.factorization_weight": "0.0"}
    assert twins.twin_task(reordered) == "rating"  # the same two tasks in another order
    assert twins.twin_task({"weighting": "pcgrad"}) is None
    assert twins.trained({"+tasks": "[like, interaction]"}) == ("like", "interaction")  # as given
    assert twins.trained({"tasks": "[stars,interaction]"}) == ("stars", "interaction")
    assert twins.trained({}) == ("interaction", "rating")  # the reference's
    for key in (
        "weighting",
        "weighting.task",
        "model.factorization_weight",
        "model.regression_weight",
    ):
        assert twins.is_weighting_key(key)
    assert not twins.is_weighting_key("tasks")


def test_strategies_other_than_fixed_run_once_whatever_the_swept_weight():
    jobs = [
        [f"weighting={w}", f"model.factorization_weight={f}"]
        for w in ("fixed", "pcgrad")
        for f in ("0.99", "0.5")
    ]
    assert twins.with_twins(jobs) == [
        ["weighting=single", "weighting.task=interaction"],
        ["weighting=single", "weighting.task=rating"],
        ["weighting=fixed", "model.factorization_weight=0.99"],
        ["weighting=fixed", "model.factorization_weight=0.5"],
        ["weighting=pcgrad"],
    ]


def test_a_twins_sweep_reports_delta_m_and_a_pareto_front(ratings_folder, tmp_path, run_cli):
    status, output = run_cli(
        "-m",
        "hydra/sweeper=twins",
        f"data.path={ratings_folder}",
        "model.net.sharing=shared,mmoe",
        "trainer.max_epochs=1",
        "model.compile=false",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert status == 0, output
    sweep = tmp_path / "sweep"
    table = pd.read_csv(sweep / "summary.csv")
    assert len(table) == 6 and (table.status == "completed").all()
    runs = table.set_index("run")
    assert "sharing=mmoe,weighting=single,task=interaction" in runs.index  # the twins are named
    assert runs["delta_m"].notna().sum() == 2  # the two multi-task runs; twins have none
    shared = runs.loc["sharing=shared"]
    alone = runs.loc["sharing=shared,weighting=single,task=interaction"]
    rating = runs.loc["sharing=shared,weighting=single,task=rating"]
    expected = 50 * (
        (alone["test/mrr"] - shared["test/mrr"]) / alone["test/mrr"]
        + (shared["test/mse"] - rating["test/mse"]) / rating["test/mse"]
    )
    assert shared["delta_m"] == pytest.approx(expected, rel=1e-6)
    assert runs["delta_m_best"].notna().sum() == 2
    twin_rows = [f"sharing={s},weighting=single,task=" for s in ("shared", "mmoe")]
    best_mrr = max(runs.loc[f"{row}interaction", "test/mrr"] for row in twin_rows)
    best_mse = min(runs.loc[f"{row}rating", "test/mse"] for row in twin_rows)
    expected = 50 * (
        (best_mrr - shared["test/mrr"]) / best_mrr + (shared["test/mse"] - best_mse) / best_mse
    )
    assert shared["delta_m_best"] == pytest.approx(expected, rel=1e-6)
    assert (runs["delta_m_best"] >= runs["delta_m"] - 1e-9).sum() == 2  # never below delta_m
    assert (sweep / "pareto.png").read_bytes().startswith(b"\x89PNG")
    ax = figures.pareto_figure(*tables.read_sweep(sweep)).axes[0]  # what pareto.png shows
    assert (ax.get_xlabel(), ax.get_ylabel()) == (
        "test/mrr (higher is better)",
        "test/mse (lower is better)",
    )
    drawn = points_of(ax)
    for sharing in ("shared", "mmoe"):
        run = runs.loc[f"sharing={sharing}"]
        assert drawn[f"sharing={sharing}"] == pytest.approx((run["test/mrr"], run["test/mse"]))
        twin = [
            runs.loc[f"sharing={sharing},weighting=single,task={t}"]
            for t in ("interaction", "rating")
        ]
        star = (twin[0]["test/mrr"], twin[1]["test/mse"])
        assert drawn[f"twins: sharing={sharing}"] == pytest.approx(star)
    assert drawn["best twins"] == pytest.approx((best_mrr, best_mse))
    assert (sweep / "sharing=mmoe" / "gates.png").exists()
    assert not (sweep / "sharing=shared" / "gates.png").exists()


def test_a_twin_chooses_its_checkpoint_on_the_head_it_trains():
    import torch

    from mtrec.training.selection import SelectionScore

    selection = SelectionScore({"mrr_interaction": 0.130, "rmse": 0.880, "auc": 0.800})
    metrics = {"val/mrr_interaction": torch.tensor(0.104), "val/rmse": torch.tensor(3.52)}
    interaction, rating, like = THREE_TASKS
    assert selection.score(metrics, THREE_TASKS) is None  # every target counts: no val/auc
    two = TWO_TASKS  # a two-task run: like's target is left out
    assert float(selection.score(metrics, two)) == pytest.approx(0.25)  # the rating head decides
    assert float(selection.score(metrics, [interaction])) == pytest.approx(0.8)  # 0.104 / 0.130
    assert float(selection.score(metrics, [rating])) == pytest.approx(0.25)  # 0.880 / 3.52
    assert selection.score(metrics, ()) is None
    metrics["val/auc"] = torch.tensor(0.76)
    assert float(selection.score(metrics, [like])) == pytest.approx(0.95)  # 0.76 / 0.800
    assert float(selection.score(metrics, [interaction, like])) == pytest.approx(0.8)
    # wired to the run's tasks and weighting: the like twin of a three-task run
    from types import SimpleNamespace

    from mtrec.mtl.weighting import SingleTask

    logged = {}
    weighting = SingleTask("like")
    weighting.bind(list(THREE_TASKS))
    module = SimpleNamespace(
        tasks=THREE_TASKS,
        weighting=weighting,
        log=lambda name, value: logged.update({name: float(value)}),
    )
    selection.on_validation_epoch_end(SimpleNamespace(callback_metrics=metrics), module)
    assert logged == {"val/combined": pytest.approx(0.95)}


def test_a_task_without_a_selection_target_is_refused_before_training():
    from mtrec.errors import ConfigError
    from mtrec.training.selection import check_targets

    targets = {"mrr_interaction": 0.130, "rmse": 0.880}
    check_targets(targets, TWO_TASKS, "callbacks.selection_score.targets")
    with pytest.raises(ConfigError) as refused:
        check_targets(targets, (Interaction(), Like()), "callbacks.selection_score.targets")
    assert str(refused.value) == (
        "callbacks.selection_score.targets has no target for the task like, so checkpoint "
        "selection cannot weigh it: add one, e.g. +callbacks.selection_score.targets.auc=0.8."
    )


def test_selection_reads_a_new_tasks_metrics_and_direction_from_its_declaration():
    import torch

    from mtrec.errors import ConfigError
    from mtrec.mtl.tasks import Declared
    from mtrec.training.selection import SelectionScore, check_targets

    stars = Declared("stars", ("star_error", "accuracy"), frozenset({"star_error"}))
    key = "callbacks.selection_score.targets"
    with pytest.raises(ConfigError) as refused:
        check_targets({"mrr_interaction": 0.130}, (Interaction(), stars), key)
    assert str(refused.value) == (
        "callbacks.selection_score.targets has no target for the task stars, so checkpoint "
        "selection cannot weigh it: add one, e.g. "
        "+callbacks.selection_score.targets.star_error=0.8."
    )
    check_targets({"mrr_interaction": 0.130, "accuracy": 0.5}, (Interaction(), stars), key)
    selection = SelectionScore({"mrr_interaction": 0.130, "star_error": 0.2})
    metrics = {"val/mrr_interaction": torch.tensor(0.26), "val/star_error": torch.tensor(0.4)}
    # the error as the task declares it: target / value = 0.5, below the MRR's 2.0
    assert float(selection.score(metrics, (Interaction(), stars))) == pytest.approx(0.5)
    assert float(selection.score(metrics, (Interaction(),))) == pytest.approx(2.0)


def test_the_like_twin_of_a_three_task_run_chooses_its_checkpoint_on_auc(
    ratings_folder, tmp_path, run_cli
):
    import json

    three = [
        f"data.path={ratings_folder}",
        "tasks=[interaction,rating,like]",
        "callbacks=selection",
    ]
    twin = [*three, "weighting=single", "weighting.task=like", "data.val_fraction=0.2"]
    status, output = run_cli(*twin, "trainer.max_epochs=2", "model.compile=false")
    assert status == 0, output
    (run,) = (tmp_path / "outputs/runs/train").glob("*/*")
    history = json.loads((run / "metrics.json").read_text())["history"]
    scores = [(e["val/combined"], e["val/auc"]) for e in history if "val/auc" in e]  # not test
    assert len(scores) == 2 and all(c == pytest.approx(auc / 0.8) for c, auc in scores)
    assert (run / "checkpoints" / "best.ckpt").is_file()

    status, output = run_cli(*three, "~callbacks.selection_score.targets.auc")
    assert status != 0 and "has no target for the task like" in output, output
    assert len(list((tmp_path / "outputs/runs/train").glob("*/*/metrics.json"))) == 1  # no work


def test_a_pareto_figure_of_many_settings_colours_by_the_first_key_and_labels_the_front():
    rng = random.Random(1)
    jobs = []
    for sharing, weight, seed in itertools.product(("a", "b", "c"), ("0.9", "0.5", "0.1"), "01"):
        overrides = {"model.net.sharing": sharing, "model.factorization_weight": weight}
        final = {"val/mrr": rng.uniform(0.05, 0.1), "val/mse": rng.uniform(0.8, 1.0)}
        jobs.append(tables.Job(Path(sharing), overrides | {"seed": seed}, "completed", "", 1.0))
        jobs[-1].metrics = {"final": final}
    keys = ["model.net.sharing", "model.factorization_weight", "seed"]
    fig = figures.pareto_figure(jobs, keys[:2] + ["seed"])  # 9 settings: each labelled
    assert len(fig.axes[0].texts) == 9
    more = [
        tables.Job(
            Path("d"), {"model.net.sharing": "d", "model.factorization_weight": w}, "completed"
        )
        for w in ("0.9", "0.5", "0.1", "0.05")
    ]
    for job in more:
        job.metrics = {"final": {"val/mrr": rng.uniform(0.05, 0.1), "val/mse": 0.9}}
    fig = figures.pareto_figure(jobs + more, keys)  # 13 settings: colours, markers, the front
    means = {}
    for job in jobs + more:
        setting = (job.overrides["model.net.sharing"], job.overrides["model.factorization_weight"])
        means.setdefault(setting, []).append(
            (job.metrics["final"]["val/mrr"], job.metrics["final"]["val/mse"])
        )
    points = [tuple(sum(v) / len(v) for v in zip(*p, strict=True)) for p in means.values()]
    assert len(fig.axes[0].texts) == len(twins.pareto_front(points)) < 13
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert [f"sharing={s}" for s in "abcd"] == [t for t in legend if t.startswith("sharing=")]
    assert "factorization_weight=0.05" in legend  # a marker per other setting


def three_task_sweep() -> list[tables.Job]:
    """Two sharings x two weightings (two seeds each) of three tasks, and each sharing's
    three twins."""
    rng = random.Random(4)  # two settings non-dominated, two dominated
    jobs = []
    for sharing, weighting, seed in itertools.product(("a", "b"), ("pcgrad", "mgda"), "01"):
        overrides = {"tasks": "[interaction,rating,like]", "model.net.sharing": sharing}
        final = {
            "val/mrr": rng.uniform(0.05, 0.1),
            "val/mse": rng.uniform(0.8, 1.0),
            "val/auc": rng.uniform(0.6, 0.75),
        }
        jobs.append(job(sharing, overrides | {"weighting": weighting, "seed": seed}, final))
    best = {"interaction": ("val/mrr", 0.12), "rating": ("val/mse", 0.78), "like": ("val/auc", 0.8)}
    for sharing, (task, (name, value)) in itertools.product(("a", "b"), best.items()):
        overrides = {"tasks": "[interaction,rating,like]", "model.net.sharing": sharing}
        twin = overrides | {"weighting": "single", "weighting.task": task, "seed": "0"}
        jobs.append(job(f"{sharing} {task}", twin, {name: value + (0.01 if sharing == "b" else 0)}))
    return jobs


def test_the_trade_off_of_three_tasks_is_drawn_pair_by_pair():
    jobs = three_task_sweep()
    keys = ["model.net.sharing", "weighting", "seed"]
    fig = figures.pareto_figure(jobs, keys)
    panels = [ax for ax in fig.axes if ax.get_xlabel()]
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in panels] == [
        ("val/mrr (higher is better)", "val/mse (lower is better, reversed)"),
        ("val/mrr (higher is better)", "val/auc (higher is better)"),
        ("val/mse (lower is better, reversed)", "val/auc (higher is better)"),
    ]
    # better is up and to the right: the axes of the error run downwards
    assert [(ax.xaxis_inverted(), ax.yaxis_inverted()) for ax in panels] == [
        (False, True),
        (False, False),
        (True, False),
    ]
    means = {}  # each setting's mean over its two seeds
    for j in jobs[:8]:
        label = f"sharing={j.overrides['model.net.sharing']}, weighting={j.overrides['weighting']}"
        means.setdefault(label, []).append(
            [j.metrics["final"][f"val/{m}"] for m in ("mrr", "mse", "auc")]
        )
    means = {label: [sum(v) / 2 for v in zip(*runs, strict=True)] for label, runs in means.items()}
    values = list(means.values())
    front = [list(means)[i] for i in twins.pareto_front(values, (True, False, True))]
    assert len(front) == 2  # on all three tasks together
    pairs = [(0, 1), (0, 2), (1, 2)]
    for ax, (a, b) in zip(panels, pairs, strict=True):
        drawn = points_of(ax)
        for label, mean in means.items():
            assert drawn[label] == pytest.approx((mean[a], mean[b]))
        stars = {"sharing=a": (0.12, 0.78, 0.8), "sharing=b": (0.13, 0.79, 0.81)}
        for label, best in stars.items():  # each twin's value on its own task
            assert drawn[f"twins: {label}"] == pytest.approx((best[a], best[b]))
        best_of_each = (0.13, 0.78, 0.81)  # b's MRR and AUC, a's MSE: the lower is the better
        assert drawn["best twins"] == pytest.approx((best_of_each[a], best_of_each[b]))
        ring = next(c for c in ax.collections if c.get_gid() == "non-dominated")
        ringed = sorted(map(tuple, ring.get_offsets()))
        expected = sorted((means[label][a], means[label][b]) for label in front)
        assert ringed == [pytest.approx(point) for point in expected]
    legend = [t.get_text() for t in panels[-1].get_legend().get_texts()]
    assert legend == [
        *means,
        "non-dominated (3 tasks)",
        "1: twins of sharing=a",  # numbered beside their stars
        "2: twins of sharing=b",
        "best single-task twins",
    ]
    assert sorted(t.get_text() for t in panels[0].texts) == ["1", "2"]


def test_two_task_runs_keep_the_one_panel_figure():
    jobs = [j for j in three_task_sweep() if j.overrides["weighting"] != "single"]
    for j in jobs:
        del j.metrics["final"]["val/auc"]
    fig = figures.pareto_figure(jobs, ["model.net.sharing", "weighting", "seed"])
    assert len(fig.axes) == 1
    assert fig.axes[0].get_ylabel() == "val/mse (lower is better)"
    assert not fig.axes[0].yaxis_inverted()


def test_curves_show_each_task_and_every_pair_of_gradients():
    runs = []
    for name in ("a", "b"):
        made = job(name, {"model.net.sharing": name}, {})
        made.metrics["history"] = [
            {
                "epoch": e,
                "test/mrr": 0.1 * e,
                "test/mse": 1 / e,
                "test/auc": 0.7,
                "mtl/grad_cosine/interaction-rating": -0.1,
                "mtl/grad_cosine/rating-like": 0.2,
                "mtl/grad_cosine/interaction-like": 0.3 * e,
            }
            for e in (1, 2, 3)
        ]
        runs.append(made)
    names = figures.curve_names(runs)
    assert names == [
        "test/mrr",
        "test/mse",
        "test/auc",
        "mtl/grad_cosine/interaction-rating",
        "mtl/grad_cosine/interaction-like",
        "mtl/grad_cosine/rating-like",
    ]
    ax = figures.curve_figure(runs, ["model.net.sharing"], "mtl/grad_cosine/interaction-like").axes[
        0
    ]
    lines = [line for line in ax.get_lines() if line.get_label() in ("sharing=a", "sharing=b")]
    assert [list(line.get_ydata()) for line in lines] == [pytest.approx([0.3, 0.6, 0.9])] * 2
    assert "conflict" in ax.get_title()
    for made in runs:  # sweeps of two tasks logged one cosine
        for h in made.metrics["history"]:
            h["mtl/grad_cosine"] = h.pop("mtl/grad_cosine/interaction-rating")
    assert "mtl/grad_cosine" in figures.curve_names(runs)


def test_the_gate_figure_is_drawn_by_the_run_at_the_end_of_fit(tmp_path):
    from types import SimpleNamespace

    from mtrec.training.callbacks import MetricsHistory
    from mtrec.training.gate_figure import GateFigure

    history = MetricsHistory(tmp_path / "metrics.json")
    history.history = [
        {"epoch": e, "mtl/gate/user/rating/0": 0.3, "mtl/gate/user/rating/1": 0.7} for e in (1, 2)
    ]
    trainer = SimpleNamespace(is_global_zero=True, callbacks=[history])
    GateFigure(tmp_path).on_fit_end(trainer, None)
    assert (tmp_path / "gates.png").read_bytes().startswith(b"\x89PNG")
    fig = figures.gate_figure(history.history)
    assert fig.axes[0].get_title() == "user/rating"
    stacked = [c.get_paths()[0].vertices[:, 1].max() for c in fig.axes[0].collections]
    assert stacked == pytest.approx([0.3, 1.0])  # expert 1 on top of expert 0
    (tmp_path / "gates.png").unlink()
    history.history = [{"epoch": 1, "test/mrr": 0.1}]  # no gates: no figure
    GateFigure(tmp_path).on_fit_end(trainer, None)
    assert not (tmp_path / "gates.png").exists()


def test_the_sweep_report_draws_gates_only_where_a_run_did_not(tmp_path):
    history = [
        {"epoch": e, "mtl/gate/user/rating/0": 0.3, "mtl/gate/user/rating/1": 0.7} for e in (1, 2)
    ]
    jobs = []
    for name, status in (
        ("drawn", "completed"),
        ("missing", "completed"),
        ("stopped", "interrupted"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        jobs.append(
            tables.Job(folder, {"model.net.sharing": name}, status, metrics={"history": history})
        )
    for name in ("drawn", "stopped"):
        (tmp_path / name / "gates.png").write_bytes(b"drawn by the run")
    figures.write_figures(jobs, ["model.net.sharing"], tmp_path)
    assert (tmp_path / "drawn" / "gates.png").read_bytes() == b"drawn by the run"  # kept
    for name in ("missing", "stopped"):  # drawn: none yet, or the run may have moved on
        assert (tmp_path / name / "gates.png").read_bytes().startswith(b"\x89PNG")
