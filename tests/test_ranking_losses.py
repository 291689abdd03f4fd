"""The ranking losses (full softmax, sampled softmax with the logQ correction), the negative
sampler they read, and the cosine interaction score, against hand computations."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import multitask_net
from mtrec.data.datamodule import ShuffledBatches
from mtrec.data.info import DataInfo
from mtrec.data.interactions import Interactions
from mtrec.errors import ConfigError
from mtrec.models import MultiTaskNet
from mtrec.models.protocol import Ranker, Recommender
from mtrec.mtl import losses
from mtrec.mtl.tasks import Interaction

LOG_SUM = math.log(math.e + math.e**2 + math.e**3)  # log(e^1 + e^2 + e^3) = 3.40761...


def test_the_full_softmax_by_hand():
    catalogue = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    positive = torch.tensor([2.0, 3.0])  # item 1 of the first user, item 0 of the second
    expected = ((LOG_SUM - 2.0) + (LOG_SUM - 3.0)) / 2
    assert float(losses.softmax(positive, catalogue)) == pytest.approx(expected)
    assert float(losses.softmax(positive, catalogue)) == pytest.approx(0.90761, abs=1e-5)


def test_the_sampled_softmax_by_hand():
    positive, negative = torch.tensor([2.0]), torch.tensor([[1.0, 3.0]])
    assert float(losses.sampled_softmax(positive, negative)) == pytest.approx(LOG_SUM - 2.0)
    assert float(losses.sampled_softmax(positive, negative)) == pytest.approx(1.40761, abs=1e-5)


def sampled_gradient(scores, positive, q, k, draws, corrected, generator) -> torch.Tensor:
    """The mean over ``draws`` of the sampled loss's gradient in ``scores``, each draw k
    negatives from ``q``, the logits less log Q where ``corrected``."""
    total = torch.zeros_like(scores)
    for _ in range(draws):
        drawn = torch.multinomial(q, k, replacement=True, generator=generator)
        s = scores.detach().requires_grad_(True)
        pos, neg = s[positive].unsqueeze(0), s[drawn].unsqueeze(0)
        if corrected:
            pos, neg = pos - q[positive].log(), neg - q[drawn].log()
        losses.sampled_softmax(pos, neg).backward()
        total += s.grad
    return total / draws


def test_the_log_q_correction_gives_the_full_softmax_gradient_in_expectation():
    scores = torch.tensor([1.0, 0.5, -0.5, 2.0])
    positive = 0
    full = torch.softmax(scores, 0) - torch.nn.functional.one_hot(torch.tensor(positive), 4)
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])  # the sampler favours the low scores
    generator = torch.Generator().manual_seed(0)
    corrected = sampled_gradient(scores, positive, q, 4000, 40, True, generator)
    assert torch.allclose(corrected, full, atol=0.01)
    plain = sampled_gradient(scores, positive, q, 4000, 40, False, generator)
    assert (plain - full).abs().max() > 0.1  # without it: the sampler's bias, not the softmax


class Scores(Recommender, Ranker):
    """A net whose interaction score of an item is ``scores[item]`` for every user."""

    heads = ("interaction",)

    def __init__(self, scores):
        super().__init__()
        self.scores = torch.tensor(scores)
        self.num_items = len(scores)

    def head(self, task):
        return lambda users, items, rows=None, history=None: self.scores[items].expand(
            torch.broadcast_shapes(users.shape, items.shape)
        )

    def score_all_items(self, user_ids):
        return self.scores.expand(len(user_ids), -1)

    def item_vectors(self):
        return self.scores.unsqueeze(1)


def test_the_interaction_task_reads_the_catalogue_and_the_log_q_it_is_given():
    net = Scores([1.0, 2.0, 3.0])
    batch = {
        "users": torch.tensor([0]),
        "items": torch.tensor([1]),
        "negatives": torch.tensor([[0]]),
    }
    full = Interaction(factorization_loss="softmax").loss(net, batch)
    assert float(full) == pytest.approx(LOG_SUM - 2.0)  # every item, not the one negative
    sampled = Interaction(factorization_loss="sampled_softmax")
    assert float(sampled.loss(net, batch)) == pytest.approx(math.log(math.e + math.e**2) - 2.0)
    log_q = torch.log(torch.tensor([0.5, 0.25, 0.25]))  # Q of items 0, 1, 2
    with_q = batch | {
        "log_q_items": log_q[batch["items"]],
        "log_q_negatives": log_q[batch["negatives"]],
    }
    corrected = float(sampled.loss(net, with_q))
    pos, neg = 2.0 - math.log(0.25), 1.0 - math.log(0.5)
    assert corrected == pytest.approx(math.log(math.exp(pos) + math.exp(neg)) - pos)
    bpr = Interaction(factorization_loss="bpr")  # only the sampled softmax reads log Q
    assert float(bpr.loss(net, with_q)) == pytest.approx(math.log1p(math.e**-1))


def test_the_full_softmax_is_refused_for_a_net_that_does_not_rank_the_catalogue():
    class Unranked(Recommender):
        heads = ("interaction",)

    Interaction(factorization_loss="softmax").check_net(Scores)
    Interaction(factorization_loss="sampled_softmax").check_net(Unranked)
    with pytest.raises(ConfigError, match="Unranked does not rank the catalogue"):
        Interaction(factorization_loss="softmax").check_net(Unranked)


def training_rows(counts: list[int]) -> Interactions:
    items = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    n = len(items)
    users = torch.arange(n) % 5
    return Interactions(users, items, torch.ones(n), torch.zeros(n, dtype=torch.int64), 5, 4)


def test_popularity_negatives_are_drawn_with_q_and_their_log_q_rides_along():
    data = training_rows([1, 4, 16, 0])  # alpha 0.5: weights 1, 2, 4, 0
    batches = ShuffledBatches(data, 8, 200, seed=0, negative_alpha=0.5)
    drawn = torch.cat([batch["negatives"].reshape(-1) for batch in batches])
    frequencies = torch.bincount(drawn, minlength=4).double() / len(drawn)
    q = torch.tensor([1 / 7, 2 / 7, 4 / 7, 0.0], dtype=torch.float64)
    assert torch.allclose(frequencies, q, atol=0.01) and frequencies[3] == 0
    batch = next(iter(batches))  # log Q of each row's item and of each of its negatives
    assert torch.allclose(batch["log_q_items"].exp().double(), q[batch["items"]])
    assert torch.allclose(batch["log_q_negatives"].exp().double(), q[batch["negatives"]])
    assert batch["log_q_negatives"].shape == batch["negatives"].shape == (8, 200)
    uniform = next(iter(ShuffledBatches(data, 8, 200, seed=0)))
    assert not {"log_q_items", "log_q_negatives"} & set(uniform)  # the reference's batches


def test_log_q_by_row_gives_the_loss_and_gradients_of_log_q_by_item_id():
    """The sampled softmax on the batch's log Q per row equals its form on log Q per item
    id (``log_q[items]``, ``log_q[negatives]``), value and gradients, to the last bit."""
    data = training_rows([3, 5, 9, 2])
    batch = next(iter(ShuffledBatches(data, 6, 5, seed=1, negative_alpha=0.75)))
    counts = torch.bincount(data.items, minlength=4).double().pow(0.75)
    log_q = (counts / counts.sum()).log().float()
    task = Interaction(factorization_loss="sampled_softmax")
    nets = []
    for _ in range(2):  # the same start
        torch.manual_seed(0)
        nets.append(multitask_net(DataInfo(5, 4), embedding_dim=2, layer_sizes=(6, 4)))
    by_row, by_id = nets
    loss = task.loss(by_row, batch)
    loss.backward()
    head, users = by_id.head("interaction"), batch["users"]
    positive = head(users, batch["items"]) - log_q[batch["items"]]
    negative = head(users.unsqueeze(-1), batch["negatives"]) - log_q[batch["negatives"]]
    expected = losses.sampled_softmax(positive, negative)
    expected.backward()
    assert torch.equal(loss, expected)
    for (name, p), q in zip(by_row.named_parameters(), by_id.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad), name


def tiny_net(**settings) -> MultiTaskNet:
    torch.manual_seed(0)
    return multitask_net(DataInfo(3, 4), embedding_dim=2, layer_sizes=(6, 4), **settings)


def test_the_cosine_score_by_hand_and_in_the_catalogue_scorer():
    net = tiny_net(cosine=True, temperature=0.5)
    with torch.no_grad():
        net.mixer.table("user", "interaction").weight.copy_(
            torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
        )
        net.mixer.table("item", "interaction").weight.copy_(
            torch.tensor([[1.0, 0.0], [0.0, 5.0], [1.0, 1.0], [-2.0, 0.0]])
        )
        net.heads["interaction"].item_biases.weight.copy_(
            torch.tensor([[0.1], [0.2], [0.3], [0.4]])
        )
    # user 0 is (0.6, 0.8) once normalised; item 2 is (1, 1) / sqrt(2): cos = 1.4 / sqrt(2)
    logit = net.head("interaction")(torch.tensor([0]), torch.tensor([2]))
    assert float(logit) == pytest.approx(1.4 / math.sqrt(2) / 0.5 + 0.3)
    net.eval()
    scores = net.score_all_items(torch.tensor([0, 2]))
    expected = torch.tensor([[0.6, 0.8, 1.4 / math.sqrt(2), -0.6], [0.0, 1.0, 1 / math.sqrt(2), 0]])
    assert torch.allclose(scores, expected / 0.5 + torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert "heads.interaction.log_inverse_temperature" in dict(net.named_parameters())  # learned
    assert "log_inverse_temperature" not in dict(tiny_net().named_parameters())


@pytest.mark.parametrize(
    "value",
    [
        "model.net.temperature=0",
        "model.net.temperature=warm",
        "model.net.cosine=2",
        "data.negative_alpha=-1",
    ],
)
def test_bad_ranking_settings_get_one_message_before_training(run_cli, ratings_folder, value):
    status, output = run_cli(f"data.path={ratings_folder}", value, "trainer.max_epochs=1")
    assert status != 0 and f"{value} is not valid" in output, output


@pytest.mark.parametrize(
    "settings",
    [
        ["model.factorization_loss=softmax", "model.net.cosine=true", "model.compile=true"],
        ["model.factorization_loss=softmax", "weighting=mgda", "model.net.sharing=cgc"],
        ["model.factorization_loss=sampled_softmax", "data.negative_alpha=0.75"],
    ],
)
def test_runs_train_with_the_ranking_losses(run_cli, ratings_folder, tmp_path, settings):
    compiled = "model.compile=true" in settings
    status, output = run_cli(
        f"data.path={ratings_folder}",
        "trainer.max_epochs=2",
        "data.num_negatives=4",
        *settings,
        *([] if compiled else ["model.compile=false"]),
    )
    assert status == 0, output
    (run,) = (tmp_path / "outputs/runs/train").glob("*/*")
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert 0 < final["test/mrr"] <= 1 and math.isfinite(final["test/mse"])
