"""Encoders: SVD++'s history term and LightGCN's propagation by hand, only training rows in a
history or the graph, every architecture and the per-task path reading the encoded vectors, the
sparse forms training as the dense ones did, and what is refused."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from conftest import multitask_net
from mtrec.data.datamodule import MovieLensDataModule
from mtrec.data.info import DataInfo
from mtrec.data.interactions import Interactions
from mtrec.models import encoders
from mtrec.models.encoders import histories, normalised_adjacency, propagate
from mtrec.models.mixers import base


def dense_propagation(train: Interactions, num_users: int, num_items: int, layers: int):
    """LightGCN's ``(1 / (K + 1)) sum_k A^k`` as one dense matrix: the encoder's first form."""
    adjacency = normalised_adjacency(train, num_users, num_items).dense()
    power = total = torch.eye(len(adjacency))
    for _ in range(layers):
        power = adjacency @ power
        total = total + power
    return total / (layers + 1)


class DenseHistory(nn.Module):
    """The history encoder's first form: ``rows + W[users] @ Y`` with a dense users x items
    ``W``. The reference the bags must train as."""

    def __init__(self, found, width: int):
        super().__init__()
        self.register_buffer("weights", found.dense(), persistent=False)
        self.items = nn.Parameter(torch.zeros(found.columns, width))

    def forward(self, rows, users):
        term = self.weights[users] @ self.items
        width = term.shape[-1]
        if rows.shape[-1] == width:
            return rows + term
        return torch.cat([rows[..., :width] + term, rows[..., width:]], -1)


class DenseGraph(nn.Module):
    """The graph encoder's first form: a gather of a dense propagation matrix's rows."""

    def __init__(self, adjacency, num_users: int, layers: int):
        super().__init__()
        power = total = torch.eye(adjacency.columns)
        for _ in range(layers):
            power = adjacency.dense() @ power
            total = total + power
        self.register_buffer("propagation", total / (layers + 1), persistent=False)
        self.num_users = num_users

    def forward(self, users, items, side, ids):
        tables = torch.cat([users, items])
        block = (
            self.propagation[: self.num_users]
            if side == "user"
            else self.propagation[self.num_users :]
        )
        return block[ids] @ tables


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
        history.items.weight.copy_(torch.tensor([[1.0, 1.0], [3.0, 0.0], [0.0, 4.0]]))
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
    one = dense_propagation(train, 2, 2, layers=1)  # (I + A) / 2
    expected = torch.eye(4) / 2
    for (user, item), value in a.items():
        u, i = int(user[1]), 2 + int(item[1])
        expected[u, i] = expected[i, u] = value / 2
    torch.testing.assert_close(one, expected)
    two = dense_propagation(train, 2, 2, layers=2)  # (I + A + A^2) / 3
    # A^2[u0, u0] = 1/4 + 1/2; A^2[u0, u1] = A[u0, i0] A[i0, u1] = 1 / (2 sqrt 2)
    assert two[0, 0].item() == pytest.approx((1 + 3 / 4) / 3)
    assert two[0, 1].item() == pytest.approx(1 / (2 * math.sqrt(2)) / 3)
    assert two[0, 3].item() == pytest.approx(1 / math.sqrt(2) / 3)  # one hop only: A[u0, i1]
    adjacency = normalised_adjacency(train, 2, 2)  # the sparse products give the same
    torch.testing.assert_close(propagate(adjacency, torch.eye(4), 2), two)
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
    weights = histories(split.train, dm.num_users, dm.num_items).dense()
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
    reads = net.mixer.histories["interaction"]  # what the net reads: each user's bag
    every = torch.arange(dm.num_users)
    assert torch.allclose(reads.term(every), weights @ reads.items.weight)
    # the graph: one step of propagation links exactly the training pairs
    one = dense_propagation(split.train, dm.num_users, dm.num_items, layers=1)
    users, items = torch.meshgrid(
        torch.arange(dm.num_users), torch.arange(dm.num_items), indexing="ij"
    )
    linked = one[users, items + dm.num_users] > 0
    trained = torch.zeros_like(linked)
    trained[split.train.users, split.train.items] = True
    assert torch.equal(linked, trained) and torch.equal(one, one.T)
    net = multitask_net(dm.data_info(), embedding_dim=4, layer_sizes=(12, 4), encoder="graph",
                       graph_layers=1)  # fmt: skip
    adjacency = net.mixer.graph.adjacency().dense()
    torch.testing.assert_close((torch.eye(len(one)) + adjacency) / 2, one)


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
            history.items.weight.fill_(1.0)
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
        assert state["net.mixer.histories.interaction.items.weight"].abs().sum() > 0  # from 0
    rebuilt = ("history_starts", "history_counts", "history_items", "history_weights", "crow")
    assert not [key for key in state if key.endswith(rebuilt)]  # from the data


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["model.net.encoder=gcn"], "model.net.encoder=gcn is not an encoder"),
        (["model.net.graph_layers=0"], "model.net.graph_layers=0 is not valid"),
    ],
)
def test_encoders_refused_with_one_message(run_cli, ratings_folder, settings, message):
    status, output = run_cli(f"data.path={ratings_folder}", *settings)
    assert status != 0 and message in output, output


@pytest.mark.parametrize(
    ("encoder", "settings"),
    [
        ("history", ["model.net.sharing=cgc"]),
        ("graph", []),
        ("graph", ["model.net.sharing=separate"]),
    ],
)
def test_the_sparse_encoders_train_as_the_dense_ones(
    run_cli, ratings_folder, monkeypatch, tmp_path, encoder, settings
):
    """Three epochs of the bags (or the sparse propagation) and of the dense first form from
    the same seed: the same metrics, within float tolerance. (Up to ML-1M's size the
    encoders themselves take the dense form.)"""

    def metrics(name: str) -> dict:
        status, output = run_cli(
            f"data.path={ratings_folder}", f"model.net.encoder={encoder}", *settings,
            "trainer.max_epochs=3", "model.compile=false", f"hydra.run.dir={tmp_path / name}",
        )  # fmt: skip
        assert status == 0, output
        return json.loads((tmp_path / name / "metrics.json").read_text())["final"]

    with monkeypatch.context() as sparse_only:  # the sparse forms, even where dense ones fit
        sparse_only.setattr(encoders, "DENSE_CELLS", 0)
        sparse = metrics("sparse")
    monkeypatch.setattr(base, "HistoryEncoder", DenseHistory)
    monkeypatch.setattr(base, "GraphEncoder", DenseGraph)
    dense = metrics("dense")
    assert sparse.keys() == dense.keys() and "test/mrr" in sparse
    for key, value in dense.items():
        assert sparse[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_sparse_rows_move_only_the_items_the_histories_read():
    train = train_rows([(0, 1), (0, 2), (1, 0), (2, 3)], num_users=3, num_items=4)
    net = multitask_net(DataInfo(3, 4, None, train), embedding_dim=2, layer_sizes=(6, 4),
                       encoder="history")  # fmt: skip
    (history,) = net.mixer.histories.values()
    history.items.sparse = True  # as model.sparse_rows=true makes every bag
    with torch.no_grad():
        history.items.weight.fill_(1.0)
    net.head("rating")(torch.tensor([0, 0]), torch.tensor([3, 1])).sum().backward()
    grad = history.items.weight.grad
    assert grad.is_sparse
    assert sorted(set(grad.coalesce().indices()[0].tolist())) == [1, 2]  # user 0's items


def test_large_catalogues_keep_only_the_training_pairs():
    """ML-25M's counts with three training pairs: the history and the graph hold what the
    pairs need, not users x items."""
    train = train_rows([(0, 0), (5, 7), (162_000, 59_000)], 162_541, 59_047)
    found = histories(train, 162_541, 59_047)
    assert found.members.tolist() == [0, 7, 59_000] and found.counts.sum() == 3
    adjacency = normalised_adjacency(train, 162_541, 59_047)
    assert adjacency.weights.numel() == 6 and adjacency.csr().layout == torch.sparse_csr
    net = multitask_net(DataInfo(162_541, 59_047, None, train), embedding_dim=2,
                       layer_sizes=(6, 4), encoder="graph")  # fmt: skip
    vectors = net.mixer.vector("user", "interaction", torch.tensor([5, 1]))
    assert vectors.shape == (2, 2) and torch.isfinite(vectors).all()
