"""The item-to-item encoder: EASE's closed form by hand, the kept neighbours, only training
rows in it, both heads reading it, its penalty, its parts and what is refused."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import multitask_net, tasks_named
from mtrec.data.datamodule import MovieLensDataModule
from mtrec.data.info import DataInfo
from mtrec.data.interactions import Interactions, rated
from mtrec.errors import ConfigError
from mtrec.models.baselines import EASE
from mtrec.models.neighbours import ItemToItem, ease_weights
from mtrec.mtl.objective import PENALTY, Objective
from mtrec.mtl.step import StepEngine
from mtrec.mtl.weighting import FixedWeighting
from mtrec.training.compiled_step import unsupported
from mtrec.training.optim import RowSparseAdam


def train_rows(pairs: list[tuple[int, int]], num_users: int, num_items: int) -> Interactions:
    users, items = (torch.tensor(column) for column in zip(*pairs, strict=True))
    n = len(pairs)
    return Interactions(
        users, items, torch.full((n,), 4.0), torch.zeros(n, dtype=torch.int64), num_users, num_items
    )


# user 0 rated items 0 and 1, user 1 item 0, user 2 item 1: X^T X = [[2, 1], [1, 2]]
BY_HAND = train_rows([(0, 0), (0, 1), (1, 0), (2, 1)], num_users=3, num_items=2)


def test_ease_closed_form_by_hand():
    # reg 1: P = (X^T X + I)^-1 = [[3, -1], [-1, 3]] / 8, B = -P / diag(P): 1/3 off the diagonal
    weights = ease_weights(rated(BY_HAND, 3, 2), reg=1.0)
    torch.testing.assert_close(weights, torch.tensor([[0.0, 1 / 3], [1 / 3, 0.0]]))
    for learned in (True, False):
        encoder = ItemToItem(BY_HAND, 3, 2, ["rating"], reg=1.0, learned=learned)
        users, items = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 0, 1, 0])
        # s(u, i) = sum over u's other items j of B[j, i]: an item never scores itself
        expected = torch.tensor([1 / 3, 1 / 3, 0.0, 1 / 3, 1 / 3])
        torch.testing.assert_close(encoder.pairs(users, items), expected)
        torch.testing.assert_close(
            encoder.catalogue(2.0)(torch.arange(3)), torch.tensor([[2, 2], [0, 2], [2, 0]]) / 3
        )


def random_rows(seed: int = 0, users: int = 30, items: int = 25, n: int = 300) -> Interactions:
    generator = torch.Generator().manual_seed(seed)
    pairs = zip(
        torch.randint(0, users, (n,), generator=generator).tolist(),
        torch.randint(0, items, (n,), generator=generator).tolist(),
        strict=True,
    )
    return train_rows(list(pairs), users, items)


def test_all_neighbours_are_ease_and_fewer_keep_the_strongest():
    train = random_rows()
    ease = EASE(DataInfo(30, 25, None, train), reg=5.0)
    users = torch.arange(30)
    every = ItemToItem(train, 30, 25, [], reg=5.0)
    torch.testing.assert_close(every.catalogue()(users), ease.score_all_items(users))
    kept = ItemToItem(train, 30, 25, [], reg=5.0, neighbours=3)
    closed = ease_weights(rated(train, 30, 25), 5.0)
    dense = kept.matrix()
    for item in range(25):
        column = closed[:, item].abs()
        column[item] = -1.0
        strongest = set(column.topk(3).indices.tolist())
        assert set(dense[:, item].nonzero().flatten().tolist()) <= strongest
        assert item not in kept.sources[item].tolist()  # the diagonal is never kept
    # the pairs' term is the catalogue's, read at those pairs
    items = torch.arange(25).expand(30, 25)
    torch.testing.assert_close(kept.pairs(users.unsqueeze(1), items), kept.catalogue()(users))


def test_it_holds_training_rows_only(ratings_folder):
    dm = MovieLensDataModule(path=str(ratings_folder), test_fraction=0.1, val_fraction=0.1)
    dm.setup()
    split = dm.split
    net = multitask_net(dm.data_info(), embedding_dim=4, layer_sizes=(12, 4), item_to_item=True)
    expected = torch.zeros(dm.num_users, dm.num_items)
    expected[split.train.users, split.train.items] = 1.0
    assert torch.equal(net.item_to_item.history, expected)
    closed = ease_weights(rated(split.train, dm.num_users, dm.num_items), 300.0)
    torch.testing.assert_close(net.item_to_item.matrix(), closed)
    # no held-out row changes it: the same training rows with other held-out rows
    info = DataInfo(dm.num_users, dm.num_items, None, split.train)
    again = multitask_net(info, embedding_dim=4, layer_sizes=(12, 4), item_to_item=True)
    assert torch.equal(again.item_to_item.weights, net.item_to_item.weights)


def test_both_heads_read_it_and_start_where_they_should():
    train = random_rows()
    info = DataInfo(30, 25, None, train)
    torch.manual_seed(0)
    plain = multitask_net(info, embedding_dim=4, layer_sizes=(12, 4), score_head="dot")
    torch.manual_seed(0)
    net = multitask_net(info, embedding_dim=4, layer_sizes=(12, 4), score_head="dot",
                        item_to_item=True, item_to_item_reg=5.0)  # fmt: skip
    users, items = torch.arange(30).unsqueeze(1), torch.randint(0, 25, (30, 4))
    # the ranking head trains as it would alone; the catalogue is ranked by the ensemble
    torch.testing.assert_close(
        net.head("interaction")(users, items), plain.head("interaction")(users, items)
    )
    every = torch.arange(30)
    ease = EASE(info, reg=5.0).score_all_items(every)
    assert ease.abs().sum() > 0
    torch.testing.assert_close(
        net.score_all_items(every), plain.score_all_items(every) + 30.0 * ease
    )
    # the rating head's scale starts at 0: as before
    torch.testing.assert_close(net.head("rating")(users, items), plain.head("rating")(users, items))
    # the rating head learns its scale: a step of its loss moves it and reaches the weights
    net.item_to_item.scales["rating"].data.fill_(0.5)
    ratings = net.head("rating")(users, items)
    ratings.pow(2).mean().backward()
    assert net.item_to_item.scales["rating"].grad != 0
    assert net.item_to_item.weights.grad.abs().sum() > 0


def test_its_parts_and_its_penalty():
    train = random_rows()
    net = multitask_net(DataInfo(30, 25, None, train), embedding_dim=4, layer_sizes=(12, 4),
                        item_to_item=True, item_to_item_reg=5.0,
                        item_to_item_penalty=0.5)  # fmt: skip
    parts = net.parts()
    assert any(p is net.item_to_item.weights for p in parts["encoders"])
    assert list(net.item_to_item.scales) == ["rating"]  # the ranking head's is a constant
    assert any(p is net.item_to_item.scales["rating"] for p in parts["rating"])
    placed = [id(p) for ps in parts.values() for p in ps]
    assert sorted(placed) == sorted(id(p) for p in net.parameters())  # each once
    assert net.penalty() == 0  # at the closed form
    with torch.no_grad():
        net.item_to_item.weights[0, 0] += 2.0
    assert net.penalty().item() == pytest.approx(0.5 * 4.0)
    objective = Objective(tasks_named("interaction", "rating"))
    batch = {
        "users": torch.tensor([0, 1]),
        "items": torch.tensor([2, 3]),
        "ratings": torch.tensor([4.0, 3.0]),
        "negatives": torch.tensor([[5], [6]]),
    }
    assert objective(net, batch)[PENALTY].item() == pytest.approx(2.0)


def test_a_net_without_it_is_unchanged():
    net = multitask_net(DataInfo(30, 25, None, random_rows()), embedding_dim=4,
                        layer_sizes=(12, 4))  # fmt: skip
    assert net.item_to_item is None and net.penalty() == 0
    assert not [name for name, _ in net.named_parameters() if "item_to_item" in name]


@pytest.mark.parametrize("learned", [True, False])
def test_runs_train_it_and_checkpoints_keep_only_what_data_cannot_rebuild(short_run, learned):
    run, record = short_run("model.net.item_to_item=true", "model.net.item_to_item_reg=10",
                            "model.net.item_to_item_neighbours=5",
                            f"model.net.item_to_item_learned={str(learned).lower()}")  # fmt: skip
    assert 0 < record["final"]["test/mrr"] <= 1 and math.isfinite(record["final"]["test/mse"])
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    saved = {key for key in state if key.startswith("net.item_to_item.")}
    assert "net.item_to_item.scales.rating" in saved
    if learned:  # the weights, with the sources they pair with
        assert state["net.item_to_item.weights"].shape[1] == 5
        assert {"net.item_to_item.weights", "net.item_to_item.sources"} <= saved
    else:  # a constant: rebuilt from the data, as the history and the scores are
        assert saved == {"net.item_to_item.scales.rating"}
    assert "net.item_to_item.history" not in saved


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("model.net.item_to_item=yes", "model.net.item_to_item=yes is not valid"),
        ("model.net.item_to_item_reg=0", "model.net.item_to_item_reg=0 is not valid"),
        ("model.net.item_to_item_neighbours=0", "item_to_item_neighbours=0 is not valid"),
        ("model.net.item_to_item_penalty=-1", "model.net.item_to_item_penalty=-1 is not valid"),
        ("model.net.item_to_item_scale=-1", "model.net.item_to_item_scale=-1 is not valid"),
        ("model.net.item_to_item_learned=no", "model.net.item_to_item_learned=no is not valid"),
    ],
)
def test_bad_settings_are_refused_with_one_message(run_cli, ratings_folder, setting, message):
    status, output = run_cli(f"data.path={ratings_folder}", setting)
    assert status != 0 and message in output, output


def test_a_catalogue_too_large_is_refused():
    with pytest.raises(ConfigError, match="fits catalogues up to ML-1M"):
        ItemToItem(train_rows([(0, 0)], 1, 1), 200_000, 60_000, [])
    with pytest.raises(ConfigError, match="built without training data"):
        ItemToItem(None, 3, 2, [])


def test_sparse_rows_in_the_compiled_step_leave_it_to_the_separate_path():
    """It reads each user's training items and each item's weights by id: a step that sees
    only the batch's rows (ids as positions) would read the wrong ones."""
    info = DataInfo(30, 25, None, random_rows())
    net = multitask_net(info, embedding_dim=4, layer_sizes=(12, 4), item_to_item=True)
    for table in net.modules():
        if isinstance(table, torch.nn.Embedding):
            table.sparse = True
    engine = StepEngine(net, Objective(tasks_named("interaction", "rating")), FixedWeighting())
    found = unsupported(RowSparseAdam(net.parameters()), engine)
    assert found == "MultiTaskNet does not say which ids index its tables"
    plain = multitask_net(info, embedding_dim=4, layer_sizes=(12, 4))
    assert plain.tables_read() and not net.tables_read()
