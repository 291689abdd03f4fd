"""Single-task twins, Δm and Pareto fronts: by hand, by brute force, and in a real sweep."""

from __future__ import annotations

import itertools
import random

import pandas as pd
import pytest

from mtrec.runs import twins


def test_delta_m_by_hand():
    twin_results = {"interaction": {"test/mrr": 0.10}, "rating": {"test/mse": 0.80}}
    run = {"test/mrr": 0.11, "test/mse": 0.84}
    # 50 * [(0.10 - 0.11) / 0.10 + (0.84 - 0.80) / 0.80] = 50 * (-0.1 + 0.05) = -2.5
    assert twins.delta_m(run, twin_results, "test") == pytest.approx(-2.5)
    assert (
        twins.delta_m(twin_results["interaction"] | {"test/mse": 0.80}, twin_results, "test") == 0
    )
    assert twins.delta_m(run, {"interaction": {"test/mrr": 0.10}}, "test") != twins.delta_m(
        run, twin_results, "test"
    )  # a missing twin gives NaN
    assert twins.delta_m({"val/mrr": 0.1}, twin_results, "val") != 0  # NaN: no val metrics


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


def test_twins_are_added_once_per_setting_and_first():
    jobs = [
        ["model.sharing=mmoe", "weighting=pcgrad", "seed=0"],
        ["model.sharing=mmoe", "weighting=fixed", "model.factorization_weight=0.5", "seed=0"],
        ["model.sharing=ple", "weighting=pcgrad", "seed=0"],
        ["model.sharing=ple", "weighting=fixed", "model.factorization_weight=1.0", "seed=0"],
    ]
    swept = twins.with_twins(jobs)
    assert swept[-4:] == jobs
    added = swept[:-4]
    assert added == [
        ["model.sharing=mmoe", "seed=0", "weighting=fixed", "model.factorization_weight=1.0"],
        ["model.sharing=mmoe", "seed=0", "weighting=fixed", "model.factorization_weight=0.0"],
        ["model.sharing=ple", "seed=0", "weighting=fixed", "model.factorization_weight=0.0"],
    ]  # ple's interaction twin was already there


def test_strategies_other_than_fixed_run_once_whatever_the_swept_weight():
    jobs = [
        [f"weighting={w}", f"model.factorization_weight={f}"]
        for w in ("fixed", "pcgrad")
        for f in ("0.99", "0.5")
    ]
    assert twins.with_twins(jobs) == [
        ["weighting=fixed", "model.factorization_weight=1.0"],
        ["weighting=fixed", "model.factorization_weight=0.0"],
        ["weighting=fixed", "model.factorization_weight=0.99"],
        ["weighting=fixed", "model.factorization_weight=0.5"],
        ["weighting=pcgrad"],
    ]


def test_a_twins_sweep_reports_delta_m_and_a_pareto_front(ratings_folder, tmp_path, run_cli):
    status, output = run_cli(
        "-m",
        "hydra/sweeper=twins",
        f"data.path={ratings_folder}",
        "model.sharing=shared,mmoe",
        "trainer.max_epochs=1",
        "model.compile=false",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert status == 0, output
    sweep = tmp_path / "sweep"
    table = pd.read_csv(sweep / "summary.csv")
    assert len(table) == 6 and (table.status == "completed").all()
    runs = table.set_index("run")
    assert "sharing=mmoe,weighting=fixed,weight=1.0" in runs.index  # the twins are named
    assert runs["delta_m"].notna().sum() == 2  # the two multi-task runs; twins have none
    shared = runs.loc["sharing=shared"]
    alone = runs.loc["sharing=shared,weighting=fixed,weight=1.0"]
    rating = runs.loc["sharing=shared,weighting=fixed,weight=0.0"]
    expected = 50 * (
        (alone["test/mrr"] - shared["test/mrr"]) / alone["test/mrr"]
        + (shared["test/mse"] - rating["test/mse"]) / rating["test/mse"]
    )
    assert shared["delta_m"] == pytest.approx(expected, rel=1e-6)
    assert (sweep / "pareto.png").stat().st_size > 10_000
    assert (sweep / "sharing=mmoe" / "gates.png").exists()
    assert not (sweep / "sharing=shared" / "gates.png").exists()


def test_a_twin_chooses_its_checkpoint_on_the_head_it_trains():
    import torch

    from mtrec.selection import SelectionScore

    selection = SelectionScore({"mrr_interaction": 0.130, "rmse": 0.880})
    metrics = {"val/mrr_interaction": torch.tensor(0.104), "val/rmse": torch.tensor(3.52)}
    assert float(selection.score(metrics)) == pytest.approx(0.25)  # the untrained head decides
    assert float(selection.score(metrics, {"rating"})) == pytest.approx(0.8)  # 0.104 / 0.130
    assert float(selection.score(metrics, {"interaction"})) == pytest.approx(0.25)
    assert selection.score(metrics, {"interaction", "rating"}) is None
    # wired to the run's weighting: the twin trained on interactions alone (λF = 1)
    from types import SimpleNamespace

    from mtrec.mtl.weighting import FixedWeighting

    logged = {}
    module = SimpleNamespace(
        weighting=FixedWeighting({"interaction": 1.0, "rating": None}),
        log=lambda name, value: logged.update({name: float(value)}),
    )
    selection.on_validation_epoch_end(SimpleNamespace(callback_metrics=metrics), module)
    assert logged == {"val/combined": pytest.approx(0.8)}


def test_a_pareto_figure_of_many_settings_colours_by_the_first_key_and_labels_the_front():
    from pathlib import Path

    from mtrec.runs import report

    rng = random.Random(1)
    jobs = []
    for sharing, weight, seed in itertools.product(("a", "b", "c"), ("0.9", "0.5", "0.1"), "01"):
        overrides = {"model.sharing": sharing, "model.factorization_weight": weight}
        final = {"val/mrr": rng.uniform(0.05, 0.1), "val/mse": rng.uniform(0.8, 1.0)}
        jobs.append(report.Job(Path(sharing), overrides | {"seed": seed}, "completed", "", 1.0))
        jobs[-1].metrics = {"final": final}
    keys = ["model.sharing", "model.factorization_weight", "seed"]
    fig = report.pareto_figure(jobs, keys[:2] + ["seed"])  # 9 settings: each labelled
    assert len(fig.axes[0].texts) == 9
    more = [
        report.Job(Path("d"), {"model.sharing": "d", "model.factorization_weight": w}, "completed")
        for w in ("0.9", "0.5", "0.1", "0.05")
    ]
    for job in more:
        job.metrics = {"final": {"val/mrr": rng.uniform(0.05, 0.1), "val/mse": 0.9}}
    fig = report.pareto_figure(jobs + more, keys)  # 13 settings: colours, markers, the front
    means = {}
    for job in jobs + more:
        setting = (job.overrides["model.sharing"], job.overrides["model.factorization_weight"])
        means.setdefault(setting, []).append(
            (job.metrics["final"]["val/mrr"], job.metrics["final"]["val/mse"])
        )
    points = [tuple(sum(v) / len(v) for v in zip(*p, strict=True)) for p in means.values()]
    assert len(fig.axes[0].texts) == len(twins.pareto_front(points)) < 13
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert [f"sharing={s}" for s in "abcd"] == [t for t in legend if t.startswith("sharing=")]
    assert "factorization_weight=0.05" in legend  # a marker per other setting
