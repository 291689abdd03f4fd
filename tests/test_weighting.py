"""Weighting strategies and gradient diagnostics, each against a hand computation on a toy
two-task problem with known gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torchjd.aggregation import MGDA, PCGrad

from mtrec.data.info import DataInfo
from mtrec.errors import ConfigError
from mtrec.models import MatrixFactorization, MultiTaskNet
from mtrec.module import RecommenderModule
from mtrec.mtl.diagnostics import GradientDiagnostics, step_values
from mtrec.mtl.objective import Objective
from mtrec.mtl.weighting import DWA, RLW, Aggregation, FixedWeighting, GradNorm, Uncertainty
from mtrec.mtl.weighting.gradient import check_aggregator
from mtrec.mtl.weighting.loss_level import dwa_weights, gradnorm_gradient

BATCH = {
    "users": torch.tensor([0, 1, 2, 1]),
    "items": torch.tensor([3, 4, 5, 6]),
    "ratings": torch.tensor([4.0, 2.0, 5.0, 3.0]),
    "negatives": torch.tensor([[6], [0], [7], [2]]),
}


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
    torch.testing.assert_close(strategy.shared_gradient(conflicting), expected)
    # as weights of the two gradients: g1 + 0.5 g2 and g2 + g1, logged under mtl/weight/...
    torch.testing.assert_close(strategy.step_weights, torch.tensor([2.0, 1.5]))
    agreeing = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(strategy.shared_gradient(agreeing), torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(strategy.step_weights, torch.tensor([1.0, 1.0]))


@pytest.mark.parametrize("name", ["UPGrad", "MGDA", "DualProj", "IMTLG", "AlignedMTL", "Mean"])
def test_weights_from_the_gramian_give_what_the_aggregator_gives(name):
    import torchjd.aggregation

    rows = torch.randn(2, 50, generator=torch.Generator().manual_seed(1))
    aggregator = getattr(torchjd.aggregation, name)()
    strategy = Aggregation(getattr(torchjd.aggregation, name)())
    torch.testing.assert_close(strategy.shared_gradient(rows), aggregator(rows))
    assert strategy.step_weights.shape == (2,)


def test_an_aggregator_that_is_no_weighting_is_called_as_it_is():
    from torchjd.aggregation import ConFIG

    rows = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    strategy = Aggregation(ConFIG())
    torch.testing.assert_close(strategy.shared_gradient(rows), ConFIG()(rows))
    assert strategy.step_weights is None


def test_mgda_equals_the_two_task_closed_form():
    g1, g2 = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([-1.0, 1.0, 3.0])
    alpha = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))
    alpha = min(max(alpha, 0.0), 1.0)  # 10 / 14 here
    expected = alpha * g1 + (1 - alpha) * g2
    got = Aggregation(MGDA()).shared_gradient(torch.stack([g1, g2]))
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)


def test_uncertainty_loss_and_gradients_by_hand():
    strategy = Uncertainty()
    with torch.no_grad():
        strategy.log_variance.copy_(torch.tensor([0.3, -0.2]))
    losses = {"interaction": torch.tensor(0.4), "rating": torch.tensor(2.0)}
    total = strategy.combine(losses)
    s_i, s_r = 0.3, -0.2
    expected = math.exp(-s_i) * 0.4 + 0.5 * math.exp(-s_r) * 2.0 + 0.5 * (s_i + s_r)
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    gradient = strategy.log_variance.grad.tolist()
    assert gradient[0] == pytest.approx(-math.exp(-s_i) * 0.4 + 0.5, rel=1e-6)
    assert gradient[1] == pytest.approx(-0.5 * math.exp(-s_r) * 2.0 + 0.5, rel=1e-6)
    torch.testing.assert_close(
        losses["weights"], torch.tensor([math.exp(-s_i), 0.5 * math.exp(-s_r)])
    )


def test_dwa_weights_from_given_loss_histories():
    strategy = DWA(temperature=2.0)
    losses = {"interaction": torch.tensor(1.0), "rating": torch.tensor(1.0)}
    strategy.combine(losses)
    torch.testing.assert_close(losses["weights"], torch.ones(2))  # first epoch
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
    losses = {"interaction": torch.tensor(1.0), "rating": torch.tensor(3.0)}
    total = RLW().combine(losses)
    weights = losses["weights"]
    assert weights.sum().item() == pytest.approx(1.0) and (weights > 0).all()
    assert total.item() == pytest.approx(weights[0].item() + 3 * weights[1].item(), rel=1e-6)


def step_gradients(net, weighting, diagnostics):
    """The module's gradients and diagnostics after one step on BATCH."""
    module = RecommenderModule(net, weighting=weighting, diagnostics=diagnostics)
    net.zero_grad()
    module._step(BATCH, torch.Tensor.backward)
    grads = {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}
    return module, grads


def test_fixed_with_per_task_gradients_is_the_weighted_sum():
    torch.manual_seed(0)
    net = MultiTaskNet(DataInfo(4, 8), 4, (12, 8))
    weights = {"interaction": 0.7, "rating": 0.3}
    _, plain = step_gradients(net, FixedWeighting(weights), diagnostics=False)
    module, split = step_gradients(net, FixedWeighting(weights), diagnostics=True)
    assert module.task_gradients  # the rows went through the per-task copies
    assert plain.keys() == split.keys()
    for name in plain:
        torch.testing.assert_close(split[name], plain[name], rtol=1e-5, atol=1e-7)


def test_logged_cosine_equals_a_direct_computation():
    torch.manual_seed(0)
    net = MultiTaskNet(DataInfo(4, 8), 4, (12, 8))
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
    means = module.diagnostics.epoch_means()
    assert means["mtl/grad_cosine"].item() == pytest.approx(cosine, rel=1e-4, abs=1e-6)
    assert means["mtl/grad_conflict_share"].item() == float(cosine < 0)
    assert means["mtl/grad_norm/interaction"].item() == pytest.approx(float(g1.norm()), rel=1e-4)
    assert means["mtl/weight/rating"].item() == pytest.approx(0.1)
    assert module.diagnostics.epoch_means() == {}  # read once per epoch, then afresh


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
    assert means["mtl/grad_cosine"].item() == pytest.approx(-1.0)
    assert means["mtl/grad_conflict_share"].item() == 1.0
    assert means["mtl/grad_norm/interaction"].item() == pytest.approx(1.0)  # 2 / weight 2


def test_gradient_level_training_step_uses_the_aggregated_shared_gradient():
    torch.manual_seed(0)
    net = MultiTaskNet(DataInfo(4, 8), 4, (12, 8))
    module, grads = step_gradients(net, Aggregation(PCGrad()), diagnostics="auto")
    assert module.diagnostics is not None and len(module.diagnostics.steps) == 1
    assert grads["user_embeddings.weight"].abs().sum() > 0
    assert grads["mlp.0.weight"].abs().sum() > 0  # the rating head's own gradient


def test_bad_settings_and_nets_a_strategy_cannot_serve():
    with pytest.raises(ConfigError, match="weighting.temperature=-1.0 is not valid"):
        DWA(temperature=-1.0)
    with pytest.raises(ConfigError, match="weighting.alpha=-0.5 is not valid"):
        GradNorm(alpha=-0.5)
    one_head = MatrixFactorization(DataInfo(4, 8), 4)
    with pytest.raises(ConfigError, match="combines the gradients of two tasks"):
        RecommenderModule(one_head, weighting=Aggregation(PCGrad()))
    with pytest.raises(ConfigError, match="model.diagnostics=often is not valid"):
        RecommenderModule(one_head, diagnostics="often")


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
    with initialize_config_module("mtrec.conf", version_base="1.3"):
        study = compose("train", overrides=["experiment=weighting"], return_hydra_config=True)
        for name in configs:  # each composes and builds its strategy
            cfg = compose("train", overrides=[f"weighting={name}"])
            from hydra.utils import instantiate

            assert instantiate(cfg.weighting).combine is not None
    assert sorted(study.hydra.sweeper.params.weighting.split(",")) == configs


def test_per_task_gradients_under_mixed_precision_are_refused_before_training(ratings_folder):
    import lightning as L

    from mtrec.data.datamodule import MovieLensDataModule

    dm = MovieLensDataModule(path=str(ratings_folder), batch_size=64)
    dm.setup()
    module = RecommenderModule(
        MultiTaskNet(dm.data_info(), 4, (12, 8)), weighting=Aggregation(PCGrad())
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
    assert all(-1 <= h["mtl/grad_cosine"] <= 1 for h in history)
    events = EventAccumulator(str(run))
    events.Reload()
    cosine = [e.value for e in events.Scalars("mtl/grad_cosine")]
    assert cosine == pytest.approx([h["mtl/grad_cosine"] for h in history], rel=1e-6)
