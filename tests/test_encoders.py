"""Encoders: SVD++'s history term by hand, only training rows in a history, every
architecture and the per-task path reading the encoded vectors, and what is refused."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mtrec.data.datamodule import MovieLensDataModule
from mtrec.data.info import DataInfo
from mtrec.data.interactions import Interactions
from mtrec.errors import ConfigError
from mtrec.models import MultiTaskNet
from mtrec.models.encoders import history_weights


def train_rows(pairs: list[tuple[int, int]], num_users: int, num_items: int) -> Interactions:
    users, items = (torch.tensor(column) for column in zip(*pairs, strict=True))
    n = len(pairs)
    return Interactions(
        users, items, torch.full((n,), 4.0), torch.zeros(n, dtype=torch.int64), num_users, num_items
    )


def test_the_history_term_by_hand():
    train = train_rows([(0, 1), (0, 2), (1, 0)], num_users=3, num_items=3)  # user 2: none
    net = MultiTaskNet(DataInfo(3, 3, None, train), embedding_dim=2, layer_sizes=(6, 4),
                       encoder="history")  # fmt: skip
    (history,) = net.user_histories  # shared embeddings: one user table, one encoder
    with torch.no_grad():
        net.user_embeddings.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]))
        history.items.copy_(torch.tensor([[1.0, 1.0], [3.0, 0.0], [0.0, 4.0]]))
        net.item_embeddings.weight.copy_(torch.eye(3, 2))
    # user 0: p_0 + (y_1 + y_2) / sqrt(2); user 1: p_1 + y_0; user 2: p_2
    expected = torch.tensor([[1 + 3 / math.sqrt(2), 4 / math.sqrt(2)], [1.0, 2.0], [2.0, 2.0]])
    vectors = net.vectors()
    for task in ("interaction", "rating"):
        assert torch.allclose(vectors["user", task], expected)
    logits = net.interaction_logits(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert torch.allclose(logits, torch.tensor([expected[0, 0], expected[1, 1]]))
    net.eval()
    assert torch.allclose(net.score_all_items(torch.tensor([2])), torch.tensor([[2.0, 2.0, 0.0]]))


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
    net = MultiTaskNet(dm.data_info(), embedding_dim=4, layer_sizes=(12, 4), encoder="history")
    assert torch.equal(net.user_histories[0].weights, weights)  # what the net reads


@pytest.mark.parametrize(
    "sharing", ["shared", "separate", "mmoe", "cgc", "cross_stitch", "mmoe_mlp"]
)
def test_every_architecture_reads_the_encoded_users(sharing):
    train = train_rows([(0, 1), (0, 2), (1, 0)], num_users=3, num_items=3)
    net = MultiTaskNet(DataInfo(3, 3, None, train), embedding_dim=2, layer_sizes=(6, 4),
                       sharing=sharing, encoder="history")  # fmt: skip
    before = net.vectors()
    with torch.no_grad():
        for history in net.user_histories:
            history.items.fill_(1.0)
    after = net.vectors()
    for task in ("interaction", "rating"):
        moved = (after["user", task] - before["user", task]).abs().sum(-1)
        assert (moved[:2] > 0).all() and moved[2] == 0  # user 2 has no training item
        assert torch.equal(after["item", task], before["item", task])


@pytest.mark.parametrize("weighting", ["fixed", "mgda"])
def test_runs_train_the_history_encoder(run_cli, ratings_folder, tmp_path, weighting):
    status, output = run_cli(
        f"data.path={ratings_folder}",
        "model.net.encoder=history",
        f"weighting={weighting}",
        "trainer.max_epochs=2",
        "model.compile=false",
    )
    assert status == 0, output
    (run,) = (tmp_path / "outputs/runs/train").glob("*/*")
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert 0 < final["test/mrr"] <= 1 and math.isfinite(final["test/mse"])
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    items = checkpoint["state_dict"]["net.user_histories.0.items"]
    assert items.abs().sum() > 0  # trained from zero
    assert "net.user_histories.0.weights" not in checkpoint["state_dict"]  # rebuilt from data


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["model.net.encoder=graph"], "model.net.encoder=graph is not an encoder"),
        (["model.net.encoder=history", "model.sparse_rows=true"], "use model.net.encoder=id"),
    ],
)
def test_encoders_refused_with_one_message(run_cli, ratings_folder, settings, message):
    status, output = run_cli(f"data.path={ratings_folder}", *settings)
    assert status != 0 and message in output, output


def test_a_history_too_large_for_memory_is_refused():
    with pytest.raises(ConfigError, match="meant for catalogues up to ML-1M"):
        history_weights(train_rows([(0, 0)], 1, 1), 200_000, 60_000)
