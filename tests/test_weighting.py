"""Weighting strategies and gradient diagnostics, each against a hand computation on a toy
problem of two or three tasks with known gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torchjd.aggregation import MGDA, PCGrad

from conftest import multitask_net
from mtrec.data.info import DataInfo
from mtrec.errors import ConfigError
from mtrec.models import MatrixFactorization
from mtrec.mtl.diagnostics import GradientDiagnostics, step_values
from mtrec.mtl.objective import Objective
from mtrec.mtl.tasks import Interaction, Like, Rating
from mtrec.mtl.weighting import (
    DWA,
    RLW,
    Aggregation,
    FixedWeighting,
    GradNorm,
    SingleTask,
    Uncertainty,
)
from mtrec.mtl.weighting.gradient import check_aggregator
from mtrec.mtl.weighting.loss_level import dwa_weights, gradnorm_gradient
from mtrec.training.module import RecommenderModule

BATCH = {
    "users": torch.tensor([0, 1, 2, 1]),
    "items": torch.tensor([3, 4, 5, 6]),
    "ratings": torch.tensor([4.0, 2.0, 5.0, 3.0]),
    "negatives": torch.tensor([[6], [0], [7], [2]]),
}


TWO, THREE = (Interaction(), Rating()), (Interaction(), Rating(), Like())
PAIR = "interaction-rating"


def bound(strategy, tasks=TWO):
    strategy.bind(tasks)
    return strategy


def combined(strategy, rows: torch.Tensor) -> torch.Tensor:
    """The shared gradient a strategy makes of these task gradients."""
    return strategy.shared_gradient(rows, rows @ rows.T)[0]


def pcgrad_by_hand(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """Yu et al. 2020 for two tasks: project each onto the other's normal plane if they
    conflict, then sum."""
    if g1 @ g2 >= 0:
        return g1 + g2
    return (g1 - (g1 @ g2) / (g2 @ g2) * g2) + (g2 - (g2 @ g1) / (g1 @ g1) * g1)


def test_pcgrad_projects_conflicting_gradients_and_leaves_the_others():
    strategy = Aggregation(PCGrad())
    conflicting = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    expected = torch.tensor([0.5, 1.5])  # [0.5, 0.5] + [0, 1]
    torch.testing.assert_close(pcgrad_by_hand(*conflicting), expected)
    gradient, weights = strategy.shared_gradient(conflicting, conflicting @ conflicting.T)
    torch.testing.assert_close(gradient, expected)
    # as weights of the two gradients: g1 + 0.5 g2 and g2 + g1, logged under mtl/weight/...
    torch.testing.assert_close(weights, torch.tensor([2.0, 1.5]))
    agreeing = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    gradient, weights = strategy.shared_gradient(agreeing, agreeing @ agreeing.T)
    torch.testing.assert_close(gradient, torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(weights, torch.tensor([1.0, 1.0]))


@pytest.mark.parametrize("tasks", [2, 3])
@pytest.mark.parametrize("name", ["UPGrad", "MGDA", "DualProj", "IMTLG", "AlignedMTL", "Mean"])
def test_weights_from_the_gramian_give_what_the_aggregator_gives(name, tasks):
    import torchjd.aggregation

    rows = torch.randn(tasks, 50, generator=torch.Generator().manual_seed(1))
    aggregator = getattr(torchjd.aggregation, name)()
    strategy = Aggregation(getattr(torchjd.aggregation, name)())
    gradient, weights = strategy.shared_gradient(rows, rows @ rows.T)
    torch.testing.assert_close(gradient, aggregator(rows), atol=1e-5, rtol=1e-4)
    assert weights.shape == (tasks,)


def test_an_aggregator_that_is_no_weighting_is_called_as_it_is():
    from torchjd.aggregation import ConFIG

    rows = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    strategy = Aggregation(ConFIG())
    gradient, weights = strategy.shared_gradient(rows, rows @ rows.T)
    torch.testing.assert_close(gradient, ConFIG()(rows))
    assert weights is None


def test_mgda_equals_the_two_task_closed_form():
    g1, g2 = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([-1.0, 1.0, 3.0])
    alpha = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))
    alpha = min(max(alpha, 0.0), 1.0)  # 10 / 14 here
    expected = alpha * g1 + (1 - alpha) * g2
    got = combined(Aggregation(MGDA()), torch.stack([g1, g2]))
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)


def test_uncertainty_loss_and_gradients_by_hand():
    strategy = bound(Uncertainty(), THREE)
    with torch.no_grad():
        strategy.log_variance.copy_(torch.tensor([0.3, -0.2, 0.1]))
    losses = torch.tensor([0.4, 2.0, 0.7])
    given = losses.clone()
    weights = strategy.loss_weights(losses)
    total = (weights * losses).sum() + strategy.extra_loss()
    s_i, s_r, s_l = 0.3, -0.2, 0.1
    # the rating task is a regression (½), interaction and like classification-style
    expected = math.exp(-s_i) * 0.4 + 0.5 * math.exp(-s_r) * 2.0 + math.exp(-s_l) * 0.7
    expected += 0.5 * (s_i + s_r + s_l)
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    gradient = strategy.log_variance.grad.tolist()
    assert gradient[0] == pytest.approx(-math.exp(-s_i) * 0.4 + 0.5, rel=1e-6)
    assert gradient[1] == pytest.approx(-0.5 * math.exp(-s_r) * 2.0 + 0.5, rel=1e-6)
    assert gradient[2] == pytest.approx(-math.exp(-s_l) * 0.7 + 0.5, rel=1e-6)
    torch.testing.assert_close(losses, given)  # what it was handed is unchanged
    assert set(strategy.logged()) == {
        f"log_variance/{t}" for t in ("interaction", "rating", "like")
    }


def test_dwa_weights_from_given_loss_histories():
    strategy = bound(DWA(temperature=2.0))
    torch.testing.assert_close(strategy.loss_weights(torch.ones(2)), torch.ones(2))  # epoch 1
    strategy.on_train_epoch_end({"interaction": 1.0, "rating": 2.0})
    torch.testing.assert_close(strategy.weights, torch.ones(2))  # second epoch still 1
    strategy.on_train_epoch_end({"interaction": 0.5, "rating": 1.8})
    ratios = torch.tensor([0.5 / 1.0, 1.8 / 2.0])
    expected = 2 * torch.exp(ratios / 2) / torch.exp(ratios / 2).sum()
    torch.testing.assert_close(strategy.weights, expected)
    torch.testing.assert_close(
        dwa_weights(torch.tensor([0.5, 1.8]), torch.tensor([1.0, 2.0]), 2.0), expected
    )
    assert set(strategy.state_dict()) == {"history", "epochs_seen", "weights"}  # in checkpoints
    three = bound(DWA(temperature=2.0), THREE)
    three.on_train_epoch_end({"interaction": 1.0, "rating": 2.0, "like": 0.5})
    three.on_train_epoch_end({"interaction": 0.5, "rating": 1.8, "like": 0.5})
    ratios = torch.tensor([0.5, 0.9, 1.0])
    torch.testing.assert_close(three.weights, 3 * torch.softmax(ratios / 2, dim=0))  # K = 3


def test_gradnorm_targets_and_weight_gradient_by_hand():
    weights = torch.ones(2)
    received = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # G = (5, 1)
    initial = torch.tensor([1.0, 4.0])
    # equal loss ratios: both targets are mean(G) = 3
    gradient = gradnorm_gradient(weights, received, torch.tensor([0.5, 2.0]), initial, 1.5)
    torch.testing.assert_close(gradient, torch.tensor([5.0, -1.0]))  # sign(G - 3) * ||g||
    # the rating task trains slower (ratio 1 against 0.5): its target is larger
    ratios = torch.tensor([0.5, 1.0])
    targets = 3.0 * (ratios / ratios.mean()) ** 1.5
    gradient = gradnorm_gradient(weights, received, torch.tensor([0.5, 4.0]), initial, 1.5)
    torch.testing.assert_close(
        gradient, torch.sign(torch.tensor([5.0, 1.0]) - targets) * torch.tensor([5.0, 1.0])
    )
    first = torch.zeros(2)
    gradnorm_gradient(weights, received, torch.tensor([0.7, 1.1]), first, 1.5)
    torch.testing.assert_close(first, torch.tensor([0.7, 1.1]))  # L(0) kept from the first step


def test_rlw_draws_positive_weights_that_sum_to_one():
    torch.manual_seed(0)
    for tasks in (TWO, THREE):
        weights = bound(RLW(), tasks).loss_weights(torch.tensor([1.0, 3.0, 2.0][: len(tasks)]))
        assert weights.shape == (len(tasks),) and (weights > 0).all()
        assert weights.sum().item() == pytest.approx(1.0)
    first, second = (bound(RLW()).loss_weights(torch.ones(2)) for _ in range(2))
    assert not torch.equal(first, second)  # drawn afresh every step


def step_gradients(net, weighting, diagnostics):
    """The module's gradients and diagnostics after one step on BATCH."""
    objective = Objective([task for task in THREE if task.name in net.tasks])
    module = RecommenderModule(
        net, objective=objective, weighting=weighting, diagnostics=diagnostics
    )
    net.zero_grad()
    module.engine.step(BATCH, torch.Tensor.backward)
    grads = {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}
    return module, grads


def test_fixed_with_per_task_gradients_is_the_weighted_sum():
    torch.manual_seed(0)
    net = multitask_net(DataInfo(4, 8), 4, (12, 8))
    weights = {"interaction": 0.7, "rating": 0.3}
    _, plain = step_gradients(net, FixedWeighting(weights), diagnostics=False)
    module, split = step_gradients(net, FixedWeighting(weights), diagnostics=True)
    assert module.task_gradients  # the rows went through the per-task copies
    assert plain.keys() == split.keys()
    for name in plain:
        torch.testing.assert_close(split[name], plain[name], rtol=1e-5, atol=1e-7)


def test_logged_cosine_equals_a_direct_computation():
    torch.manual_seed(0)
    net = multitask_net(DataInfo(4, 8), 4, (12, 8))
    # direct: each task's gradient with respect to the gathered shared rows
    gathered = net.shared(BATCH["users"], BATCH["items"])
    copies = {
        t: {k: v.gather().requires_grad_() for k, v in gathered.items()}
        for t in ("interaction", "rating")
    }
    losses = Objective()(net, BATCH, copies)
    direct = []
    for task in ("interaction", "rating"):
        grads = torch.autograd.grad(losses[task], list(copies[task].values()), retain_graph=True)
        direct.append(torch.cat([g.reshape(-1) for g in grads]))
    g1, g2 = direct
    cosine = float(g1 @ g2 / (g1.norm() * g2.norm()))
    module, _ = step_gradients(net, FixedWeighting({"interaction": 0.9, "rating": 0.1}), True)
    means = module.engine.diagnostics.epoch_means()
    assert means[f"mtl/grad_cosine/{PAIR}"].item() == pytest.approx(cosine, rel=1e-4, abs=1e-6)
    assert means[f"mtl/grad_conflict_share/{PAIR}"].item() == float(cosine < 0)
    assert means["mtl/grad_norm/interaction"].item() == pytest.approx(float(g1.norm()), rel=1e-4)
    assert means["mtl/weight/rating"].item() == pytest.approx(0.1)
    assert module.engine.diagnostics.epoch_means() == {}  # read once per epoch, then afresh


def test_three_tasks_give_a_cosine_per_pair():
    torch.manual_seed(0)
    net = multitask_net(DataInfo(4, 8), 4, (12, 8), tasks=("interaction", "rating", "like"))
    weights = {"interaction": 0.5, "rating": 0.3, "like": 0.2}
    module, _ = step_gradients(net, FixedWeighting(weights), True)
    means = module.engine.diagnostics.epoch_means()
    pairs = {name.split("/", 2)[2] for name in means if name.startswith("mtl/grad_cosine/")}
    assert pairs == {"interaction-rating", "interaction-like", "rating-like"}
    assert means["mtl/weight/like"].item() == pytest.approx(0.2)
    assert all(-1 <= means[f"mtl/grad_cosine/{p}"].item() <= 1 for p in pairs)


def test_step_values_by_hand():
    gradients = torch.tensor([[3.0, 4.0], [-4.0, 3.0]])
    values = step_values(gradients @ gradients.T, torch.tensor([1.0, 1.0]))
    cosine, conflict, similarity = values[:3].tolist()
    assert cosine == pytest.approx(0.0, abs=1e-7) and conflict == 0.0
    assert similarity == pytest.approx(1.0)  # equal norms
    diagnostics = GradientDiagnostics()
    received = torch.tensor([[2.0, 0.0], [-1.0, 0.0]])
    diagnostics.update(received @ received.T, torch.tensor([2.0, 1.0]))
    means = diagnostics.epoch_means()
    assert means[f"mtl/grad_cosine/{PAIR}"].item() == pytest.approx(-1.0)
    assert means[f"mtl/grad_conflict_share/{PAIR}"].item() == 1.0
    assert means["mtl/grad_norm/interaction"].item() == pytest.approx(1.0)  # 2 / weight 2
    # three tasks: a = (1, 0, 1), b = (-1, 2, 0), c = (0, 0, 3)
    rows = torch.tensor([[1.0, 0.0, 1.0], [-1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    values = step_values(rows @ rows.T, torch.ones(3)).tolist()
    cosines, conflicts, similarities, norms = values[0:3], values[3:6], values[6:9], values[9:12]
    assert cosines == pytest.approx([-1 / math.sqrt(10), 1 / math.sqrt(2), 0.0], abs=1e-6)
    assert conflicts == [1.0, 0.0, 0.0]
    assert similarities[0] == pytest.approx(2 * math.sqrt(2) * math.sqrt(5) / 7)
    assert norms == pytest.approx([math.sqrt(2), math.sqrt(5), 3.0])


def test_gradient_level_training_step_uses_the_aggregated_shared_gradient():
    torch.manual_seed(0)
    net = multitask_net(DataInfo(4, 8), 4, (12, 8))
    module, grads = step_gradients(net, Aggregation(PCGrad()), diagnostics="auto")
    assert module.engine.diagnostics is not None and len(module.engine.diagnostics.steps) == 1
    assert grads["mixer.users.interaction.weight"].abs().sum() > 0
    assert grads["heads.rating.mlp.0.weight"].abs().sum() > 0  # the rating head's own gradient


def test_bad_settings_and_nets_a_strategy_cannot_serve():
    with pytest.raises(ConfigError, match="weighting.temperature=-1.0 is not valid"):
        DWA(temperature=-1.0)
    with pytest.raises(ConfigError, match="weighting.alpha=-0.5 is not valid"):
        GradNorm(alpha=-0.5)
    one_head = MatrixFactorization(DataInfo(4, 8), 4)
    rating = Objective([Rating()])
    with pytest.raises(ConfigError, match="combines the gradients of several tasks"):
        RecommenderModule(one_head, objective=rating, weighting=Aggregation(PCGrad()))
    with pytest.raises(ConfigError, match="model.diagnostics=often is not valid"):
        RecommenderModule(one_head, objective=rating, diagnostics="often")
    net = multitask_net(DataInfo(4, 8), 4, (12, 8))
    with pytest.raises(
        ConfigError, match="weighting.task=like: this run trains interaction, rating"
    ):
        RecommenderModule(net, weighting=SingleTask("like"))
    single = bound(SingleTask("rating"), THREE)
    assert single.effective_weights() == {"interaction": 0.0, "rating": 1.0, "like": 0.0}


def test_a_missing_solver_names_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cvxpy" else real(name, *a)
    )
    with pytest.raises(ConfigError) as error:
        check_aggregator("torchjd.aggregation.NashMTL")
    assert "needs cvxpy" in str(error.value) and "pip install 'mtrec[mtl]'" in str(error.value)
    check_aggregator("torchjd.aggregation.PCGrad")  # pure torch: nothing needed


def test_every_strategy_has_a_config_and_the_study_runs_them_all():
    from pathlib import Path

    from hydra import compose, initialize_config_module

    configs = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "weighting").glob("*"))
    assert len(configs) >= 20
    from hydra.utils import instantiate

    losses = torch.tensor([0.5, 1.5, 0.7])
    rows = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    with initialize_config_module("mtrec.conf", version_base="1.3"):
        study = compose("train", overrides=["experiment=weighting"], return_hydra_config=True)
        for name in configs:  # each composes, binds two or three tasks and weighs them
            for tasks in (TWO, THREE):
                names = ",".join(task.name for task in tasks)
                cfg = compose("train", overrides=[f"weighting={name}", f"tasks=[{names}]"])
                strategy = bound(instantiate(cfg.weighting), tasks)
                weights = torch.as_tensor(strategy.loss_weights(losses[: len(tasks)]))
                assert weights.shape == (len(tasks),) and torch.isfinite(weights).all(), name
                gradient = combined(strategy, rows[: len(tasks)])
                assert gradient.shape == (6,) and torch.isfinite(gradient).all(), name
    strategies = [name for name in configs if name != "single"]  # single: a run's twin
    assert sorted(study.hydra.sweeper.params.weighting.split(",")) == strategies


def test_per_task_gradients_under_mixed_precision_are_refused_before_training(ratings_folder):
    import lightning as L

    from mtrec.data.datamodule import MovieLensDataModule

    dm = MovieLensDataModule(path=str(ratings_folder), batch_size=64)
    dm.setup()
    module = RecommenderModule(
        multitask_net(dm.data_info(), 4, (12, 8)), weighting=Aggregation(PCGrad())
    )
    trainer = L.Trainer(
        max_epochs=1,
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    with pytest.raises(ConfigError, match="runs in full precision on one device or under DDP only"):
        trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 0


def test_a_gradient_level_run_logs_its_diagnostics_every_epoch(ratings_folder, tmp_path, run_cli):
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    status, output = run_cli(
        f"data.path={ratings_folder}",
        "weighting=pcgrad",
        "trainer.max_epochs=2",
        "model.compile=false",
        "hydra.run.dir=run",
    )
    assert status == 0, output
    run = tmp_path / "run"
    history = json.loads((run / "metrics.json").read_text())["history"]
    # PCGrad's weights of the two gradients: 1 where they agree, 1 + |cos| |g_other| / |g|
    # (a projection) where they conflict, as some steps do
    for task in ("interaction", "rating"):
        assert all(h[f"mtl/weight/{task}"] >= 1.0 for h in history)
    assert any(h["mtl/weight/rating"] > 1.0 for h in history)
    assert all(-1 <= h[f"mtl/grad_cosine/{PAIR}"] <= 1 for h in history)
    events = EventAccumulator(str(run))
    events.Reload()
    cosine = [e.value for e in events.Scalars(f"mtl/grad_cosine/{PAIR}")]
    assert cosine == pytest.approx([h[f"mtl/grad_cosine/{PAIR}"] for h in history], rel=1e-6)
