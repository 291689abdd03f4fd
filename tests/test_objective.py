"""The objective (each task's unweighted loss), the weighting that turns losses into
gradients, and what a net's tasks share: checked by hand, without a Trainer."""

from __future__ import annotations

import pytest
import torch

from conftest import multitask_net
from mtrec.data.info import DataInfo
from mtrec.errors import ConfigError
from mtrec.models import MatrixFactorization, MultiTaskNet, SequenceLSTM
from mtrec.mtl import losses
from mtrec.mtl.objective import Objective, check_settings
from mtrec.mtl.step import LOSS, StepEngine
from mtrec.mtl.tasks import Interaction, Like, Rating
from mtrec.mtl.weighting import FixedWeighting

BATCH = {
    "users": torch.tensor([0, 1, 2]),
    "items": torch.tensor([3, 4, 5]),
    "ratings": torch.tensor([4.0, 2.0, 5.0]),
    "negatives": torch.tensor([[6, 1], [0, 2], [7, 3]]),
}


def net(sharing=True, tasks=("interaction", "rating")):
    torch.manual_seed(0)
    return multitask_net(DataInfo(4, 8), 4, (12, 8), embedding_sharing=sharing, tasks=tasks)


def test_the_objective_returns_each_task_loss_unweighted():
    model = net()
    out = Objective()(model, BATCH)
    assert out.keys() == {"interaction", "rating"}
    positive = model.head("interaction")(BATCH["users"], BATCH["items"])
    negative = model.head("interaction")(BATCH["users"].unsqueeze(-1), BATCH["negatives"])
    by_hand = (1 - torch.sigmoid(positive.unsqueeze(-1) - negative)).mean()
    torch.testing.assert_close(out["interaction"], by_hand)
    predicted = model.head("rating")(BATCH["users"], BATCH["items"])
    torch.testing.assert_close(out["rating"], ((predicted - BATCH["ratings"]) ** 2).mean())


def test_the_like_task_is_binary_cross_entropy_of_rating_at_least_the_threshold():
    model = net(tasks=("interaction", "rating", "like"))
    out = Objective([Interaction(), Rating(), Like(threshold=4)])(model, BATCH)
    assert list(out) == ["interaction", "rating", "like"]
    logits = model.head("like")(BATCH["users"], BATCH["items"])
    labels = torch.tensor([1.0, 0.0, 1.0])  # ratings 4, 2, 5 against 4
    by_hand = -(labels * logits.sigmoid().log() + (1 - labels) * (1 - logits.sigmoid()).log())
    torch.testing.assert_close(out["like"], by_hand.mean())
    at_five = Objective([Like(threshold=5)])(model, BATCH)["like"]
    assert not torch.allclose(at_five, out["like"])  # the threshold is read


def test_fixed_weighting_is_the_weighted_sum_plus_penalty():
    model = net()
    objective = Objective(l2=0.5)
    weighting = FixedWeighting({"interaction": 0.99, "rating": None})  # null: 1 - the others
    engine = StepEngine(model, objective, weighting)
    assert weighting.effective_weights() == {"interaction": 0.99, "rating": pytest.approx(0.01)}
    out, weights = engine.losses(BATCH)
    assert weights is None  # plain numbers, summed as the reference does
    by_hand = 0.99 * out["interaction"] + 0.01 * out["rating"] + out["penalty"]
    torch.testing.assert_close(out[LOSS], by_hand)
    with pytest.raises(ConfigError, match="weighting.weights.clicks=1.0: this run does not train"):
        FixedWeighting({"clicks": 1.0}).check(("interaction", "rating"), True)
    with pytest.raises(ConfigError, match="interaction, rating are all null"):
        StepEngine(net(), Objective(), FixedWeighting({"interaction": None, "rating": None}))


def test_the_engine_makes_one_backward_call_of_the_weighted_sum():
    model = net()
    engine = StepEngine(model, Objective(), FixedWeighting({"interaction": 0.5, "rating": 0.5}))
    calls = []
    engine.step(BATCH, lambda loss: calls.append(loss) or loss.backward())
    assert len(calls) == 1
    got = model.heads["rating"].mlp[0].weight.grad.clone()
    model.zero_grad()
    out = Objective()(model, BATCH)
    (0.5 * out["interaction"] + 0.5 * out["rating"]).backward()  # the same sum, by hand
    torch.testing.assert_close(got, model.heads["rating"].mlp[0].weight.grad)


def test_a_task_the_net_has_no_head_for_is_refused_when_the_run_is_built():
    mf = MatrixFactorization(DataInfo(4, 8), 4)
    refused = "interaction asks for a ranking head, and MatrixFactorization builds score heads"
    with pytest.raises(ConfigError, match=refused):
        StepEngine(mf, Objective(), FixedWeighting({"interaction": 0.5, "rating": 0.5}))
    assert set(MultiTaskNet.head_kinds) == {"ranking", "score", "logit", "classes"}


@pytest.mark.parametrize(
    ("sharing", "shared"), [(True, {"user", "item"}), ("items", {"item"}), (False, set())]
)
def test_a_net_says_what_its_tasks_share(sharing, shared):
    model = net(sharing)
    shared_parts = model.shared(BATCH["users"], BATCH["items"])
    rows = {key: part.gather() for key, part in shared_parts.items()}
    assert rows.keys() == shared
    if "user" in rows:
        torch.testing.assert_close(
            rows["user"], model.mixer.table("user", "interaction")(BATCH["users"])
        )
        assert rows["user"].shape == (3, 4)  # the batch's rows, never the whole table
    if "item" in rows:
        torch.testing.assert_close(
            rows["item"], model.mixer.table("item", "rating")(BATCH["items"])
        )


def test_a_penalty_the_net_cannot_honour_is_refused():
    lstm = SequenceLSTM(DataInfo(4, 8), embedding_dim=4, hidden_size=4)
    with pytest.raises(ConfigError, match="model.embedding_l2=0.1: SequenceLSTM does not say"):
        check_settings(0.1, type(lstm))


def test_sequence_model_trains_with_negative_ratings():
    torch.manual_seed(0)
    lstm = SequenceLSTM(DataInfo(4, 8), embedding_dim=4, hidden_size=4)
    batch = {**BATCH, "history": torch.tensor([[0, 1, 2], [0, 0, 3], [4, 5, 6]])}
    out = Objective([Rating(negative_rating_ratio=2)])(lstm, batch)
    negative = lstm.ratings(
        batch["users"].unsqueeze(-1), batch["negatives"], history=batch["history"]
    )
    assert negative.shape == (3, 2)
    one = lstm.ratings(batch["users"][:1], batch["negatives"][0, :1], history=batch["history"][:1])
    torch.testing.assert_close(negative[0, 0], one[0])  # each negative read with its history
    predicted = torch.cat(
        [
            lstm.ratings(batch["users"], batch["items"], history=batch["history"]),
            negative.reshape(-1),
        ]
    )
    observed = torch.cat([batch["ratings"], torch.zeros(6)])
    torch.testing.assert_close(out["rating"], losses.regression_loss(predicted, observed))
    out["rating"].backward()
    assert lstm.item_embeddings.weight.grad.abs().sum() > 0


def test_a_batch_without_a_tasks_fields_is_refused_with_one_message():
    engine = StepEngine(net(), Objective(), FixedWeighting({"interaction": 0.5, "rating": 0.5}))
    unrated = {key: value for key, value in BATCH.items() if key != "ratings"}
    with pytest.raises(ConfigError, match="rating reads the batch fields ratings, which"):
        engine.step(unrated, torch.Tensor.backward)
    engine.step(BATCH, torch.Tensor.backward)  # every field there: it trains


def test_each_task_its_own_embedding_penalty_on_the_rows_its_head_reads():
    model = multitask_net(DataInfo(4, 8), 4, (12, 8), sharing="separate", score_head="dot")
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-1, 1)  # the biases too
    l2 = {"interaction": 0.001, "rating": 0.1}
    out = Objective(embedding_l2=l2)(model, BATCH)
    users, items = BATCH["users"], BATCH["items"]

    def rows(task):  # by hand: the task's own tables and its head's biases at the pairs' ids
        tables = model.mixer
        norms = tables.table("user", task)(users).pow(2).sum(-1)
        norms = norms + tables.table("item", task)(items).pow(2).sum(-1)
        head = model.heads[task]
        norms = norms + head.item_biases(items).pow(2).sum(-1)
        if task == "rating":
            norms = norms + head.user_biases(users).pow(2).sum(-1)
        return norms.mean()

    torch.testing.assert_close(out["penalty"], 0.001 * rows("interaction") + 0.1 * rows("rating"))
    every = Objective(embedding_l2=0.1)(model, BATCH)["penalty"]  # one number: every row once
    torch.testing.assert_close(every, 0.1 * (rows("interaction") + rows("rating")))
    with pytest.raises(ConfigError, match="model.embedding_l2 names clicks, which this run"):
        Objective(embedding_l2={"clicks": 0.1})


def test_per_task_embedding_penalties_from_the_command_line(run_cli, ratings_folder):
    status, output = run_cli(
        f"data.path={ratings_folder}", "model.embedding_l2={interaction:0.001,rating:-1}"
    )
    assert status != 0 and "model.embedding_l2=" in output and "one per task" in output, output
