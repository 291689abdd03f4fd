"""FAMO, STCH, DB-MTL, MetaBalance and MultiBalance against hand computations on toy problems,
and each trained from the command line with two and three tasks."""

from __future__ import annotations

import math

import pytest
import torch

from mtrec.errors import ConfigError
from mtrec.mtl.tasks import Interaction, Like, Rating
from mtrec.mtl.weighting import DBMTL, FAMO, STCH, MetaBalance, MultiBalance

TWO, THREE = (Interaction(), Rating()), (Interaction(), Rating(), Like())


def bound(strategy, tasks=TWO):
    strategy.bind(tasks)
    return strategy


def losses_of(*values: float) -> dict[str, torch.Tensor]:
    return {task.name: torch.tensor(v) for task, v in zip(THREE, values, strict=False)}


def test_famo_weights_and_its_logit_step_by_hand():
    famo = bound(FAMO(step_size=0.025, decay=0.0))
    # z = (1/2, 1/2); w_t = (z_t / L_t) / sum: (1/2, 1/8) / (5/8)
    weights = famo.loss_weights(torch.tensor([1.0, 4.0]))
    torch.testing.assert_close(weights, torch.tensor([0.8, 0.2]))
    famo.after_backward(None, losses_of(1.0, 4.0))  # the first step: nothing to compare yet
    assert torch.equal(famo.logits, torch.zeros(2))
    famo.after_backward(None, losses_of(0.5, 4.0))
    # delta = (log 2, 0); J_z^T delta = z * (delta - z . delta) = (log 2 / 4, -log 2 / 4);
    # Adam's first step moves each logit by step_size against the sign of its gradient
    torch.testing.assert_close(famo.logits, torch.tensor([-0.025, 0.025]))
    # the task whose log loss fell faster now weighs less than it did: z_1 = sigmoid(-0.05)
    z = torch.softmax(torch.tensor([-0.025, 0.025]), 0)
    share = z / torch.tensor([1.0, 4.0])
    torch.testing.assert_close(famo.loss_weights(torch.tensor([1.0, 4.0])), share / share.sum())


def test_famo_with_three_tasks_and_decay():
    famo = bound(FAMO(step_size=0.1, decay=0.5), THREE)
    famo.logits.copy_(torch.tensor([1.0, 0.0, -1.0]))
    famo.steps.fill_(1)
    famo.previous_losses.copy_(torch.tensor([1.0, 1.0, 1.0]))
    famo.after_backward(None, losses_of(1.0, 1.0, 1.0))  # delta = 0: only the decay acts
    # gradient = 0.5 * logits; Adam's first step: step_size * sign
    torch.testing.assert_close(famo.logits, torch.tensor([0.9, 0.0, -0.9]))


def test_stch_warms_up_on_log_losses_then_follows_the_worst_task():
    stch = bound(STCH(mu=1.0, warmup_epochs=1))
    # warm-up: the gradient of log L_t, weights 1 / L_t
    warm = stch.loss_weights(torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(warm, torch.tensor([0.5, 2.0]))
    stch.on_train_epoch_end({"interaction": 2.0, "rating": 1.0})  # the marks n_t
    # L = (1, 1): log(L / n) = (log 1/2, 0), softmax = (1/3, 2/3); w = K softmax / L
    weights = stch.loss_weights(torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(weights, torch.tensor([2 / 3, 4 / 3]))
    sharp = bound(STCH(mu=0.1, warmup_epochs=1))
    sharp.on_train_epoch_end({"interaction": 2.0, "rating": 1.0})
    weights = sharp.loss_weights(torch.tensor([1.0, 1.0]))  # softmax of (log 1/2, 0) / 0.1
    expected = 2 * torch.softmax(torch.tensor([math.log(0.5), 0.0]) / 0.1, 0)
    torch.testing.assert_close(weights, expected)
    assert weights[1] > 1.99  # the task furthest above its mark takes almost all


def test_stch_waits_for_its_warmup_epochs():
    stch = bound(STCH(warmup_epochs=2), THREE)
    stch.on_train_epoch_end({"interaction": 9.0, "rating": 9.0, "like": 9.0})
    torch.testing.assert_close(stch.loss_weights(torch.tensor([1.0, 2.0, 4.0])),
                               torch.tensor([1.0, 0.5, 0.25]))  # fmt: skip
    stch.on_train_epoch_end({"interaction": 1.0, "rating": 2.0, "like": 4.0})
    # losses at their marks: log(L / n) = 0 for all, softmax 1/3 each, w = 3 (1/3) / L
    torch.testing.assert_close(stch.loss_weights(torch.tensor([1.0, 2.0, 4.0])),
                               torch.tensor([1.0, 0.5, 0.25]))  # fmt: skip
    assert float(stch.active) == 1.0


def test_db_mtl_by_hand():
    db = bound(DBMTL(beta=0.9, beta_sigma=0.5))
    torch.testing.assert_close(db.loss_weights(torch.tensor([2.0, 0.25])), torch.tensor([0.5, 4.0]))
    rows = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # norms 5 and 1
    gradient, weights = db.shared_gradient(rows, rows @ rows.T)
    # step 1: m = n + 0.9 (0 - n) = 0.1 n = (0.5, 0.1); alpha = max m / m = (1, 5)
    torch.testing.assert_close(weights, torch.tensor([1.0, 5.0]))
    torch.testing.assert_close(gradient, torch.tensor([8.0, 4.0]))
    rows = torch.tensor([[0.0, 2.0], [0.0, 2.0]])  # norms 2 and 2
    _, weights = db.shared_gradient(rows, rows @ rows.T)
    keep = 0.9 / math.sqrt(2)
    m = torch.tensor([2 + keep * (0.5 - 2), 2 + keep * (0.1 - 2)])
    torch.testing.assert_close(weights, m.max() / m)


def test_metabalance_per_part_and_multibalance_on_the_whole_by_hand():
    # parts: two numbers of user rows, one of item rows; main task interaction
    rows = torch.tensor([[3.0, 4.0, 0.0], [0.6, 0.8, 2.0]])
    meta = bound(MetaBalance(main="interaction", relax=0.7, beta=0.9))
    gradient, _ = meta.shared_gradient(rows, rows @ rows.T, (2, 1))
    # averages after one step: 0.1 * norms; part 0: main 0.5, rating 0.1; part 1: main 0, rating 0.2
    rating_scale = torch.tensor([0.7 * 0.5 / 0.1 + 0.3, 0.7 * 0.0 / 0.2 + 0.3])
    expected = rows[0] + rows[1] * torch.tensor([rating_scale[0], rating_scale[0], rating_scale[1]])
    torch.testing.assert_close(gradient, expected)
    multi = bound(MultiBalance(main="interaction", relax=0.7, beta=0.9))
    gradient, _ = multi.shared_gradient(rows, rows @ rows.T, (2, 1))
    # one magnitude per task: main 0.1 * 5, rating 0.1 * sqrt(0.36 + 0.64 + 4)
    scale = 0.7 * 0.5 / (0.1 * math.sqrt(5.0)) + 0.3
    torch.testing.assert_close(gradient, rows[0] + scale * rows[1])
    # the moving average: a second step keeps 0.9 of the first's
    gradient, _ = multi.shared_gradient(rows, rows @ rows.T, (2, 1))
    m_main, m_rating = 0.19 * 5, 0.19 * math.sqrt(5.0)
    torch.testing.assert_close(gradient, rows[0] + (0.7 * m_main / m_rating + 0.3) * rows[1])


def test_metabalance_with_three_tasks_and_a_main_task_of_choice():
    rows = torch.tensor([[1.0, 0.0], [0.0, 3.0], [4.0, 0.0]])
    meta = bound(MetaBalance(main="rating", relax=1.0, beta=0.0), THREE)
    gradient, _ = meta.shared_gradient(rows, rows @ rows.T)
    # relax 1, no averaging: every task at the rating gradient's norm, 3
    torch.testing.assert_close(gradient, torch.tensor([3.0 + 3.0, 3.0]))


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        (lambda: FAMO(step_size=0), "weighting.step_size=0 is not valid"),
        (lambda: STCH(mu=0), "weighting.mu=0 is not valid"),
        (lambda: STCH(warmup_epochs=0), "weighting.warmup_epochs=0 is not valid"),
        (lambda: DBMTL(beta=1.0), "weighting.beta=1.0 is not valid"),
        (
            lambda: MetaBalance(main="clicks").check(("interaction", "rating"), True),
            "weighting.main=clicks: this run trains interaction, rating",
        ),
        (lambda: MetaBalance(relax=1.5), "weighting.relax=1.5 is not valid"),
    ],
)
def test_bad_settings_get_one_message(strategy, message):
    with pytest.raises(ConfigError, match=message):
        strategy()


@pytest.mark.parametrize("weighting", ["famo", "stch", "db_mtl", "metabalance", "multibalance"])
@pytest.mark.parametrize("tasks", ["[interaction,rating]", "[interaction,rating,like]"])
def test_each_trains_from_the_command_line(short_run, weighting, tasks):
    _, record = short_run(f"weighting={weighting}", f"tasks={tasks}")
    final = record["final"]
    assert 0 < final["test/mrr"] <= 1 and math.isfinite(final["test/mse"])
    if "like" in tasks:
        assert 0 < final["test/auc"] < 1
    logged = set().union(*(entry.keys() for entry in record["history"]))
    assert any(name.startswith("mtl/") for name in logged)  # its diagnostics are there


def test_metabalance_refuses_a_main_task_the_run_does_not_train(run_cli, ratings_folder):
    status, output = run_cli(
        f"data.path={ratings_folder}", "weighting=metabalance", "weighting.main=like"
    )
    assert status != 0 and "weighting.main=like: this run trains interaction, rating" in output


def test_their_state_travels_in_a_checkpoint():
    rows = torch.tensor([[3.0, 4.0, 0.0], [0.6, 0.8, 2.0]])
    meta = bound(MetaBalance())
    meta.shared_gradient(rows, rows @ rows.T, (2, 1))
    famo = bound(FAMO())
    famo.after_backward(None, losses_of(1.0, 4.0))
    famo.after_backward(None, losses_of(0.5, 4.0))
    for saved, fresh in ((meta, bound(MetaBalance())), (famo, bound(FAMO()))):
        fresh.load_state_dict(saved.state_dict())  # sized by the saved run's shared parts
        for name, value in saved.state_dict().items():
            assert torch.equal(fresh.state_dict()[name], value), name
    assert meta.norms.shape == (2, 2)
