"""Task stopping: a task whose validation metric stops improving goes back to its best and
stops (own parameters frozen, weight 0) while the others train on; logged per task."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import multitask_net, tasks_named
from mtrec.data.info import DataInfo
from mtrec.data.interactions import Interactions
from mtrec.errors import ConfigError
from mtrec.mtl.objective import Objective
from mtrec.mtl.step import StepEngine
from mtrec.mtl.weighting import FixedWeighting
from mtrec.training.module import RecommenderModule
from mtrec.training.task_stopping import TaskStopping


def module(sharing: str = "separate", weighting=None) -> RecommenderModule:
    users, items = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 2])
    ratings, stamps = torch.tensor([4.0, 3.0, 5.0, 1.0]), torch.zeros(4, dtype=torch.long)
    train = Interactions(users, items, ratings, stamps, 3, 3)
    net = multitask_net(DataInfo(3, 3, None, train), 4, (12, 8), sharing=sharing)
    objective = Objective(tasks_named("interaction", "rating"))
    return RecommenderModule(net, objective, weighting or FixedWeighting())


def trainer(epoch: int, max_epochs: int = 100, **metrics: float) -> SimpleNamespace:
    return SimpleNamespace(
        state=SimpleNamespace(fn=TrainerFn.FITTING),
        sanity_checking=False,
        current_epoch=epoch - 1,
        callback_metrics={f"val/{k}": torch.tensor(v) for k, v in metrics.items()},
        loggers=[],
        global_step=10 * epoch,
        should_stop=False,
        max_epochs=max_epochs,
    )


def test_a_task_stops_at_its_best_and_the_others_train_on():
    mod = module()
    stopping = TaskStopping(patience=2)
    stopping.setup(None, mod, "fit")
    rating_own = mod.net.task_parameters("rating")
    # separate tables: the rating's own are its head's and both of its tables
    assert any(p is mod.net.mixer.table("user", "rating").weight for p in rating_own)
    assert not any(p is mod.net.mixer.table("user", "interaction").weight for p in rating_own)
    mixed = module("cross_stitch").net  # every task reads every table: none is its own
    tables = {id(t.weight) for side in ("user", "item") for t in mixed.mixer.tables(side)}
    assert len(tables) == 4 and not tables & {id(p) for p in mixed.task_parameters("rating")}
    at_best = None
    for epoch, mse in enumerate([1.0, 0.9, 0.95, 0.97], start=1):
        with torch.no_grad():  # "training": every parameter moves each epoch
            for p in mod.net.parameters():
                p.add_(0.1)
        run = trainer(epoch, mrr=0.1 * epoch, mse=mse)
        stopping.on_validation_end(run, mod)
        if epoch == 2:
            at_best = [p.detach().clone() for p in rating_own]
    assert stopping.stopped == {"rating": 4} and not run.should_stop
    for p, best in zip(rating_own, at_best, strict=True):
        assert torch.equal(p, best) and not p.requires_grad  # back at epoch 2's, frozen
    assert all(p.requires_grad for p in mod.net.task_parameters("interaction"))
    # its loss no longer counts
    batch = {
        "users": torch.tensor([0, 1]),
        "items": torch.tensor([1, 2]),
        "ratings": torch.tensor([4.0, 3.0]),
        "negatives": torch.tensor([[2], [0]]),
    }
    out, _ = mod.engine.weighted_losses(batch)
    torch.testing.assert_close(out["loss"], 0.99 * out["interaction"])
    # the last task stopping ends training
    for epoch in (5, 6):
        run = trainer(epoch, mrr=0.0, mse=0.5)
        stopping.on_validation_end(run, mod)
    assert set(stopping.stopped) == {"interaction", "rating"} and run.should_stop


def test_at_the_last_epoch_every_task_goes_back_to_its_best():
    mod = module()
    stopping = TaskStopping(patience=5)
    own = mod.net.task_parameters("interaction")
    for epoch, mrr in enumerate([0.1, 0.3, 0.2], start=1):
        with torch.no_grad():
            for p in mod.net.parameters():
                p.add_(0.1)
        stopping.on_validation_end(trainer(epoch, max_epochs=3, mrr=mrr, mse=1.0 / epoch), mod)
        if epoch == 2:
            at_best = [p.detach().clone() for p in own]
    assert stopping.stopped == {"interaction": 3, "rating": 3}
    assert all(torch.equal(p, b) for p, b in zip(own, at_best, strict=True))


def test_a_gradient_weighting_or_a_net_without_parts_is_refused():
    from mtrec.mtl.weighting.gram import MGDA

    with pytest.raises(ConfigError, match="use a weighting of losses"):
        TaskStopping().setup(None, module("shared", MGDA()), "fit")
    engine = StepEngine(module().net, Objective(tasks_named("interaction", "rating")), MGDA())
    with pytest.raises(ConfigError, match="cannot take"):
        engine.stop("rating")
    with pytest.raises(ConfigError, match="patience=0 is not valid"):
        TaskStopping(patience=0)


@pytest.mark.parametrize("compile", ["false", "step"])  # step: made again after a stop
def test_a_run_logs_when_each_task_stopped(run_cli, ratings_folder, tmp_path, compile):
    status, output = run_cli(
        f"data.path={ratings_folder}", "callbacks=task_stopping", "data.val_fraction=0.1",
        "weighting=fixed", "callbacks.task_stopping.patience=1", "trainer.max_epochs=8",
        f"model.compile={compile}", "model.net.embedding_dim=8", "model.net.layer_sizes=[24,16]",
        "optimizer.lr=0.05",
    )  # fmt: skip
    assert status == 0, output
    (folder,) = (tmp_path / "outputs/runs/train").glob("*/*")
    events = EventAccumulator(str(folder))
    events.Reload()
    stopped = []
    for task in ("interaction", "rating"):
        values = [e.value for e in events.Scalars(f"stopped/{task}")]
        assert values[0] == 0 and values == sorted(values)  # 0 until it stops, then 1
        stopped += [task] if values[-1] == 1 else []
    assert stopped, "no task stopped in 8 epochs at patience 1"
    history = json.loads(Path(folder, "metrics.json").read_text())["history"]
    assert len(history) >= 2


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["callbacks.task_stopping.patience=0"], "patience=0 is not valid"),
        (["data.val_fraction=0"], "data.val_fraction=0 keeps no validation rows"),
        (["weighting=mgda"], "MGDA (it combines the tasks' gradients) cannot take"),
        (["model=biased_mf", "tasks=[rating]"], "BiasedMatrixFactorization does not name them"),
    ],
)
def test_task_stopping_that_cannot_work_is_refused_before_any_work(
    run_cli, ratings_folder, settings, message
):
    status, output = run_cli(
        f"data.path={ratings_folder}", "callbacks=task_stopping", "data.val_fraction=0.1",
        "weighting=fixed", *settings,
    )  # fmt: skip
    assert status != 0 and message in output, output


def test_a_task_stops_on_the_metric_named_for_it_in_its_direction():
    mod = module()
    stopping = TaskStopping(patience=1, metrics={"rating": "rmse", "like": "auc"})  # like: absent
    for epoch, (rmse, mse) in enumerate([(1.0, 9.0), (0.9, 9.5), (0.95, 8.0)], start=1):
        run = trainer(epoch, mrr=0.1 * epoch, mse=mse, rmse=rmse)
        stopping.on_validation_end(run, mod)
    assert stopping.stopped == {"rating": 3}  # rmse rose at epoch 3; mse fell: not read
    assert stopping.best["rating"] == pytest.approx(0.9)
    with pytest.raises(ConfigError, match="reads val/recall, which this run does not log"):
        TaskStopping(metrics={"rating": "recall"}).on_validation_end(trainer(1, mrr=0.1), mod)
