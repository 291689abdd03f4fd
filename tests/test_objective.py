"""The objective (each task's unweighted loss), the weighting that turns losses into
gradients, and what a net's tasks share: checked by hand, without a Trainer."""

from __future__ import annotations

import pytest
import torch

from mtrec import losses
from mtrec.data.info import DataInfo
from mtrec.errors import ConfigError
from mtrec.models import MultiTaskNet, SequenceLSTM
from mtrec.mtl.objective import Objective
from mtrec.mtl.weighting import FixedWeighting

BATCH = {
    "users": torch.tensor([0, 1, 2]),
    "items": torch.tensor([3, 4, 5]),
    "ratings": torch.tensor([4.0, 2.0, 5.0]),
    "negatives": torch.tensor([[6, 1], [0, 2], [7, 3]]),
}


def net(sharing=True):
    torch.manual_seed(0)
    return MultiTaskNet(DataInfo(4, 8), 4, (12, 8), embedding_sharing=sharing)


def test_the_objective_returns_each_task_loss_unweighted():
    model = net()
    out = Objective()(model, BATCH)
    assert out.keys() == {"interaction", "rating"}
    positive = model.interaction_logits(BATCH["users"], BATCH["items"])
    negative = model.interaction_logits(BATCH["users"].unsqueeze(-1), BATCH["negatives"])
    by_hand = (1 - torch.sigmoid(positive.unsqueeze(-1) - negative)).mean()
    torch.testing.assert_close(out["interaction"], by_hand)
    predicted = model.ratings(BATCH["users"], BATCH["items"])
    torch.testing.assert_close(out["rating"], ((predicted - BATCH["ratings"]) ** 2).mean())


def test_fixed_weighting_is_the_weighted_sum_plus_penalty():
    task_losses = {"interaction": torch.tensor(0.4), "rating": torch.tensor(2.0)}
    weighting = FixedWeighting({"interaction": 0.99, "rating": 0.01})
    assert weighting.combine(task_losses).item() == pytest.approx(0.99 * 0.4 + 0.01 * 2.0)
    with_penalty = {**task_losses, "penalty": torch.tensor(0.5)}
    assert weighting.combine(with_penalty).item() == pytest.approx(0.396 + 0.02 + 0.5)
    assert weighting.effective_weights() == {"interaction": 0.99, "rating": 0.01}
    with pytest.raises(ConfigError, match="weighting.weights has clicks, which is not a task"):
        FixedWeighting({"clicks": 1.0})


def test_the_weighting_makes_the_backward_call():
    model = net()
    weighting = FixedWeighting({"interaction": 0.5, "rating": 0.5})
    out = Objective()(model, BATCH)
    calls = []
    weighting.backward(
        out, weighting.combine(out), lambda loss: calls.append(loss) or loss.backward()
    )
    assert len(calls) == 1 and model.mlp[0].weight.grad is not None
    model.zero_grad()
    out = Objective()(model, BATCH)
    (0.5 * out["interaction"] + 0.5 * out["rating"]).backward()  # the same sum, by hand
    expected = model.mlp[0].weight.grad.clone()
    model.zero_grad()
    out = Objective()(model, BATCH)
    weighting.backward(out, weighting.combine(out), torch.Tensor.backward)
    torch.testing.assert_close(model.mlp[0].weight.grad, expected)


@pytest.mark.parametrize(
    ("sharing", "shared"), [(True, {"user", "item"}), ("items", {"item"}), (False, set())]
)
def test_a_net_says_what_its_tasks_share(sharing, shared):
    model = net(sharing)
    shared_parts = model.shared(BATCH["users"], BATCH["items"])
    rows = {key: part.gather() for key, part in shared_parts.items()}
    assert rows.keys() == shared
    if "user" in rows:
        torch.testing.assert_close(rows["user"], model.user_embeddings(BATCH["users"]))
        assert rows["user"].shape == (3, 4)  # the batch's rows, never the whole table
    if "item" in rows:
        torch.testing.assert_close(rows["item"], model.rating_item_embeddings(BATCH["items"]))


def test_a_penalty_the_net_cannot_honour_is_refused():
    lstm = SequenceLSTM(DataInfo(4, 8), embedding_dim=4, hidden_size=4)
    with pytest.raises(ConfigError, match="model.embedding_l2=0.1: SequenceLSTM does not say"):
        Objective.check_settings(0.1, type(lstm))


def test_sequence_model_trains_with_negative_ratings():
    torch.manual_seed(0)
    lstm = SequenceLSTM(DataInfo(4, 8), embedding_dim=4, hidden_size=4)
    batch = {**BATCH, "history": torch.tensor([[0, 1, 2], [0, 0, 3], [4, 5, 6]])}
    out = Objective(negative_rating_ratio=2)(lstm, batch)
    negative = lstm.ratings(batch["users"].unsqueeze(-1), batch["negatives"], batch["history"])
    assert negative.shape == (3, 2)
    one = lstm.ratings(batch["users"][:1], batch["negatives"][0, :1], batch["history"][:1])
    torch.testing.assert_close(negative[0, 0], one[0])  # each negative read with its history
    predicted = torch.cat(
        [lstm.ratings(batch["users"], batch["items"], batch["history"]), negative.reshape(-1)]
    )
    observed = torch.cat([batch["ratings"], torch.zeros(6)])
    torch.testing.assert_close(out["rating"], losses.regression_loss(predicted, observed))
    out["rating"].backward()
    assert lstm.item_embeddings.weight.grad.abs().sum() > 0
