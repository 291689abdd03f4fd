"""Encoders: SVD++'s history term and LightGCN's propagation by hand, only training rows in a
history or the graph, every architecture and the per-task path reading the encoded vectors, and
what is refused."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import multitask_net
from mtrec.data.datamodule import MovieLensDataModule
from mtrec.data.info import DataInfo
from mtrec.data.interactions import Interactions
from mtrec.errors import ConfigError
from mtrec.models.encoders import graph_propagation, history_weights


def train_rows(pairs: list[tuple[int, int]], num_users: int, num_items: int) -> Interactions:
    users, items = (torch.tensor(column) for column in zip(*pairs, strict=True))
    n = len(pairs)
    return Interactions(
        users, items, torch.full((n,), 4.0), torch.zeros(n, dtype=torch.int64), num_users, num_items
    )


def test_the_history_term_by_hand():
    train = train_rows([(0, 1), (0, 2), (1, 0)], num_users=3, num_items=3)  # user 2: none
    net = multitask_net(DataInfo(3, 3, None, train), embedding_dim=2, layer_sizes=(6, 4),
                       encoder="history")  # fmt: skip
    (history,) = net.mixer.histories.values()  # shared embeddings: one user table, one encoder
    with torch.no_grad():
        net.mixer.table("user", "interaction").weight.copy_(
            torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
        )
        history.items.copy_(torch.tensor([[1.0, 1.0], [3.0, 0.0], [0.0, 4.0]]))
        net.mixer.table("item", "interaction").weight.copy_(torch.eye(3, 2))
    # user 0: p_0 + (y_1 + y_2) / sqrt(2); user 1: p_1 + y_0; user 2: p_2
    expected = torch.tensor([[1 + 3 / math.sqrt(2), 4 / math.sqrt(2)], [1.0, 2.0], [2.0, 2.0]])
    vectors = net.vectors()
    for task in ("interaction", "rating"):
        assert torch.allclose(vectors["user", task], expected)
    logits = net.head("interaction")(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert torch.allclose(logits, torch.tensor([expected[0, 0], expected[1, 1]]))
    net.eval()
    assert torch.allclose(net.score_all_items(torch.tensor([2])), torch.tensor([[2.0, 2.0, 0.0]]))


def test_the_graph_by_hand():
    # users 0, 1; items 0, 1; edges u0-i0, u0-i1, u1-i0: degrees u0 2, u1 1, i0 2, i1 1
    train = train_rows([(0, 0), (0, 1), (1, 0), (0, 0)], num_users=2, num_items=2)  # twice: once
    a = {("u0", "i0"): 1 / 2, ("u0", "i1"): 1 / math.sqrt(2), ("u1", "i0"): 1 / math.sqrt(2)}
    one = graph_propagation(train, 2, 2, layers=1)  # (I + A) / 2
    expected = torch.eye(4) / 2
    for (user, item), value in a.items():
        u, i = int(user[1]), 2 + int(item[1])
        expected[u, i] = expected[i, u] = value / 2
    torch.testing.assert_close(one, expected)
    two = graph_propagation(train, 2, 2, layers=2)  # (I + A + A^2) / 3
    # A^2[u0, u0] = 1/4 + 1/2; A^2[u0, u1] = A[u0, i0] A[i0, u1] = 1 / (2 sqrt 2)
    assert two[0, 0].item() == pytest.approx((1 + 3 / 4) / 3)
    assert two[0, 1].item() == pytest.approx(1 / (2 * math.sqrt(2)) / 3)
    assert two[0, 3].item() == pytest.approx(1 / math.sqrt(2) / 3)  # one hop only: A[u0, i1]
    net = multitask_net(DataInfo(2, 2, None, train), embedding_dim=4, layer_sizes=(12, 4),
                       encoder="graph", graph_layers=1)  # fmt: skip
    with torch.no_grad():  # each node's row a unit vector: a vector shows its row of P
        net.mixer.table("user", "interaction").weight.copy_(torch.eye(4)[:2])
        net.mixer.table("item", "interaction").weight.copy_(torch.eye(4)[2:])
    vectors = net.vectors()
    for task in ("interaction", "rating"):
        torch.testing.assert_close(vectors["user", task], expected[:2])
        torch.testing.assert_close(vectors["item", task], expected[2:])
    net.eval()
    scores = net.score_all_items(torch.tensor([1]))  # u1 . q_j, the item vectors propagated
    torch.testing.assert_close(scores, (expected[1] @ expected[2:].T).unsqueeze(0))


def test_a_history_holds_training_rows_only(ratings_folder):
    dm = MovieLensDataModule(path=str(ratings_folder), test_fraction=0.1, val_fraction=0.1)
    dm.setup()
    split = dm.split
    weights = history_weights(split.train, dm.num_users, dm.num_items)
    for held_out in (split.val, split.test):
        reached = weights[held_out.users, held_out.items]
        rated_in_train = set(
            zip(split.train.users.tolist(), split.train.items.tolist(), strict=True)
        )
        alone = [
            i
            for i, pair in enumerate(
                zip(held_out.users.tolist(), held_out.items.tolist(), strict=True)
            )
            if pair not in rated_in_train  # a pair rated twice may sit on both sides
        ]
        assert len(alone) > 0 and (reached[alone] == 0).all()
    counts = torch.bincount(split.train.users, minlength=dm.num_users).float()
    assert torch.allclose(
        weights[split.train.users, split.train.items], counts[split.train.users].rsqrt()
    )
    net = multitask_net(dm.data_info(), embedding_dim=4, layer_sizes=(12, 4), encoder="history")
    assert torch.equal(net.mixer.histories["interaction"].weights, weights)  # what the net reads
    # the graph: one step of propagation links exactly the training pairs
    one = graph_propagation(split.train, dm.num_users, dm.num_items, layers=1)
    users, items = torch.meshgrid(
        torch.arange(dm.num_users), torch.arange(dm.num_items), indexing="ij"
    )
    linked = one[users, items + dm.num_users] > 0
    trained = torch.zeros_like(linked)
    trained[split.train.users, split.train.items] = True
    assert torch.equal(linked, trained) and torch.equal(one, one.T)
    net = multitask_net(dm.data_info(), embedding_dim=4, layer_sizes=(12, 4), encoder="graph",
                       graph_layers=1)  # fmt: skip
    assert torch.equal(net.mixer.graph.propagation, one)


@pytest.mark.parametrize(
    "sharing", ["shared", "separate", "mmoe", "cgc", "cross_stitch", "mmoe_mlp"]
)
def test_every_architecture_reads_the_encoded_users(sharing):
    train = train_rows([(0, 1), (0, 2), (1, 0)], num_users=3, num_items=3)
    net = multitask_net(DataInfo(3, 3, None, train), embedding_dim=2, layer_sizes=(6, 4),
                       sharing=sharing, encoder="history")  # fmt: skip
    before = net.vectors()
    with torch.no_grad():
        for history in net.mixer.histories.values():
            history.items.fill_(1.0)
    after = net.vectors()
    for task in ("interaction", "rating"):
        moved = (after["user", task] - before["user", task]).abs().sum(-1)
        assert (moved[:2] > 0).all() and moved[2] == 0  # user 2 has no training item
        assert torch.equal(after["item", task], before["item", task])


@pytest.mark.parametrize(
    "sharing", ["shared", "separate", "items", "mmoe", "ple", "cross_stitch", "mmoe_mlp"]
)
def test_every_architecture_reads_the_graph(sharing):
    """Moving item 1's rows moves the users who rated it, and not the user who rated nothing."""
    train = train_rows([(0, 1), (0, 2), (1, 0)], num_users=3, num_items=3)
    tasks = ("interaction", "rating", "like")
    net = multitask_net(DataInfo(3, 3, None, train), embedding_dim=2, layer_sizes=(6, 4),
                       sharing=sharing, encoder="graph", tasks=tasks)  # fmt: skip
    before = net.vectors()
    with torch.no_grad():
        for table in net.mixer.tables("item"):
            table.weight[1] += 1.0
    after = net.vectors()
    for task in tasks:
        moved = (after["user", task] - before["user", task]).abs().sum(-1)
        assert moved[0] > 0 and moved[1] == 0 and moved[2] == 0  # only user 0 rated item 1
        moved = (after["item", task] - before["item", task]).abs().sum(-1)
        assert moved[1] > 0 and moved[2] > 0 and moved[0] == 0  # item 2 shares user 0


@pytest.mark.parametrize(("encoder", "weighting"), [("history", "fixed"), ("history", "mgda"),
                                                    ("graph", "mgda")])  # fmt: skip
def test_runs_train_the_encoders(short_run, encoder, weighting):
    run, record = short_run(f"model.net.encoder={encoder}", f"weighting={weighting}")
    final = record["final"]
    assert 0 < final["test/mrr"] <= 1 and math.isfinite(final["test/mse"])
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    if encoder == "history":
        assert state["net.mixer.histories.interaction.items"].abs().sum() > 0  # from zero
    assert not [key for key in state if key.endswith(("weights", "propagation"))]  # from data


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["model.net.encoder=gcn"], "model.net.encoder=gcn is not an encoder"),
        (["model.net.encoder=history", "model.sparse_rows=true"], "use model.net.encoder=id"),
        (["model.net.encoder=graph", "model.sparse_rows=true"], "use model.net.encoder=id"),
        (["model.net.graph_layers=0"], "model.net.graph_layers=0 is not valid"),
    ],
)
def test_encoders_refused_with_one_message(run_cli, ratings_folder, settings, message):
    status, output = run_cli(f"data.path={ratings_folder}", *settings)
    assert status != 0 and message in output, output


def test_a_history_too_large_for_memory_is_refused():
    with pytest.raises(ConfigError, match="meant for catalogues up to ML-1M"):
        history_weights(train_rows([(0, 0)], 1, 1), 200_000, 60_000)
    with pytest.raises(ConfigError, match=r"encoder=graph keeps a \(users \+ items\)"):
        graph_propagation(train_rows([(0, 0)], 1, 1), 20_000, 10_000, layers=3)
