"""Optimizer settings per part of the net (``model.parts``): one parameter group per part so
set, the rest under the optimizer's own settings; bad names refused before any work."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SHORT_RUN, multitask_net, tasks_named
from mtrec.data.info import DataInfo
from mtrec.data.interactions import Interactions
from mtrec.errors import ConfigError
from mtrec.models import MatrixFactorization
from mtrec.mtl.objective import Objective
from mtrec.training.module import RecommenderModule


def history_net():
    users, items = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1])
    ratings, stamps = torch.tensor([4.0, 3.0, 5.0]), torch.zeros(3, dtype=torch.long)
    train = Interactions(users, items, ratings, stamps, 2, 3)
    return multitask_net(
        DataInfo(2, 3, None, train), 4, (12, 8), encoder="history", sharing="mmoe_mlp"
    )


def test_each_part_set_is_a_group_of_its_own_and_every_parameter_is_in_one_group():
    net = history_net()
    parts = {"encoders": {"lr": 1e-4}, "rating": {"weight_decay": 0.01}, "mixer": {"lr": 0.1}}
    module = RecommenderModule(net, parts=parts)
    optimizer = module.configure_optimizers()
    groups = optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-4, 1e-3, 0.1]  # the rest first: Adam's own
    assert [g["weight_decay"] for g in groups] == [0.0, 0.0, 0.01, 0.0]
    in_groups = [id(p) for g in groups for p in g["params"]]
    assert sorted(in_groups) == sorted(id(p) for p in module.parameters())  # each once
    named = net.parts()
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in named["encoders"]}
    assert named["encoders"] == [net.mixer.histories["interaction"].items.weight]
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in net.heads["rating"].parameters()}
    assert {id(p) for p in groups[3]["params"]} == {
        id(p) for name, p in net.mixer.named_parameters() if "_mixer." in name
    }
    tables = {id(t.weight) for side in ("user", "item") for t in net.mixer.tables(side)}
    assert tables <= {id(p) for p in groups[0]["params"]}  # tables not set: the default group


def test_without_parts_the_optimizer_has_one_group():
    module = RecommenderModule(multitask_net(DataInfo(2, 3), 4, (12, 8)))
    assert len(module.configure_optimizers().param_groups) == 1


def test_a_part_the_net_lacks_is_refused_with_the_parts_it_has():
    module = RecommenderModule(multitask_net(DataInfo(2, 3), 4, (12, 8)), parts={"like": {}})
    with pytest.raises(ConfigError, match="has no part like; its parts are tables, encoders"):
        module.configure_optimizers()
    mf = RecommenderModule(
        MatrixFactorization(DataInfo(2, 3), 4),
        objective=Objective(tasks_named("rating")),
        parts={"tables": {"lr": 0.1}},
    )
    with pytest.raises(ConfigError, match="MatrixFactorization does not name its parts"):
        mf.configure_optimizers()


def test_parts_from_the_command_line_train_and_bad_ones_stop_before_any_work(
    tmp_path, ratings_folder, run_cli
):
    status, output = run_cli(
        f"data.path={ratings_folder}",
        *SHORT_RUN,
        "+model.parts.rating.lr=0.01",
        "+model.parts.tables.lr=0.002",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert status == 0, output
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    assert {"test/mrr", "test/mse"} <= final.keys()
    status, output = run_cli(
        f"data.path={ratings_folder}", *SHORT_RUN, "+model.parts.rating.lrr=0.01"
    )
    assert status == 2 and "model.parts.rating.lrr: Adam has no setting lrr" in output
