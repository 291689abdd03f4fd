"""The model zoo: every model trains through the same module, data and metrics."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_module

from conftest import multitask_net, run_main, synthetic_ratings
from mtrec import explore
from mtrec.data.datamodule import ShuffledBatches
from mtrec.data.info import DataInfo
from mtrec.data.interactions import Interactions, held_out, index_ratings, last_items
from mtrec.models import MatrixFactorization
from mtrec.models.embeddings import embedding_size
from mtrec.mtl import losses
from mtrec.mtl.objective import Objective
from mtrec.mtl.tasks import Rating
from mtrec.train import build

MODELS = [
    "multitask",
    "mf",
    "dense",
    "biased_dot",
    "genre_mf",
    "genre_dense",
    "sequence_lstm",
    "biased_mf",
]
RANKING = {"mrr", "mrr_interaction", "hr@10", "ndcg@10"}
RATING = {"mse", "rmse"}


def config(ratings_folder, tmp_path, *overrides):
    with initialize_config_module("mtrec.conf", version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"data.path={ratings_folder}",
                f"paths.output_dir={tmp_path}",
                f"paths.data_dir={tmp_path}",
                f"paths.root_dir={tmp_path}",
                "data.batch_size=64",
                *overrides,
            ],
        )


@pytest.mark.parametrize("name", MODELS)
def test_each_model_trains_and_reports_only_its_heads(ratings_folder, tmp_path, name):
    sizes = ["model.net.layer_sizes=[24,16]"] if name == "multitask" else []
    cfg = config(
        ratings_folder,
        tmp_path,
        f"model={name}",
        "model.net.embedding_dim=8",
        "optimizer.lr=0.01",
        *sizes,
    )
    datamodule, module = build(cfg)
    batch = next(iter(datamodule.train_dataloader()))[0]  # the first batch of the first chunk
    terms, _ = module.engine.losses(batch)
    assert torch.isfinite(terms["loss"])
    heads = {task.name for task in module.tasks}
    assert ("interaction" in terms) == ("interaction" in heads)
    assert ("rating" in terms) == ("rating" in heads)
    trainer = L.Trainer(
        max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(module, datamodule=datamodule)
    logged = {k.split("/", 1)[1] for k in trainer.callback_metrics if k.startswith("test/")}
    expected = (RANKING if "interaction" in heads else set()) | (
        RATING if "rating" in heads else set()
    )
    assert logged == expected
    assert module.engine.losses(batch)[0]["loss"] < terms["loss"]  # it learned something
    assert module.net.item_vectors().shape[0] == datamodule.num_items


def test_rating_models_predict_one_rating_per_pair(ratings_folder, tmp_path):
    for name in ("mf", "dense", "biased_dot", "genre_mf", "genre_dense"):
        _, module = build(
            config(ratings_folder, tmp_path, f"model={name}", "model.net.embedding_dim=4")
        )
        users, items = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
        assert module.net.ratings(users, items).shape == (3,)
        assert module.net.ratings(users.unsqueeze(-1), torch.randint(0, 40, (3, 4))).shape == (3, 4)


def test_biased_dot_stays_inside_its_rating_range(ratings_folder, tmp_path):
    _, module = build(config(ratings_folder, tmp_path, "model=biased_dot"))
    torch.nn.init.normal_(module.net.user_embeddings.weight, std=10)
    ratings = module.net.ratings(
        torch.arange(60).repeat(40), torch.arange(40).repeat_interleave(60)
    )
    assert ratings.min() > 0.0 and ratings.max() < 5.5


def test_genre_models_use_the_item_genres(ratings_folder, tmp_path):
    datamodule, module = build(config(ratings_folder, tmp_path, "model=genre_mf"))
    genres = datamodule.item_genres
    assert genres.shape[0] == 40 and (genres > 0).sum(1).min() >= 1  # every item has a genre
    before = module.net.ratings(torch.tensor([0]), torch.tensor([0])).item()
    torch.nn.init.normal_(module.net.genres.bag.weight)
    assert module.net.ratings(torch.tensor([0]), torch.tensor([0])).item() != before


def test_embedding_size_rule_of_thumb():
    assert embedding_size("auto", 1682) == round(1.6 * 1682**0.56) == 102
    assert embedding_size("auto", 10**8) == 600
    assert MatrixFactorization(DataInfo(943, 1682), "auto").item_embeddings.embedding_dim == 102
    net = multitask_net(DataInfo(943, 1682), "auto", layer_sizes=(96, 64))
    assert net.heads["rating"].mlp[0].in_features == 3 * 102
    with pytest.raises(ValueError, match="model.net.embedding_dim=-3"):
        embedding_size(-3, 10)


def toy(users, items, timestamps, num_users=3, num_items=9):
    n = len(users)
    return Interactions(
        torch.tensor(users),
        torch.tensor(items),
        torch.ones(n),
        torch.tensor(timestamps),
        num_users,
        num_items,
    )


def test_histories_are_time_ordered_padded_and_never_leak_held_out_items():
    # file order differs from time order on purpose
    train = toy([0, 0, 0, 1, 0], [1, 2, 3, 4, 5], [30, 10, 20, 5, 40])
    assert last_items(train, 3).tolist() == [
        [0, 3, 4],  # item 1 at t=30: before it items 2 (t=10), 3 (t=20); shifted by one
        [0, 0, 0],  # item 2 is the user's first
        [0, 0, 3],
        [0, 0, 0],  # user 1's first
        [3, 4, 2],  # item 5 at t=40: the last three, oldest first
    ]
    test = toy([0, 0, 1], [7, 8, 6], [25, 15, 1])
    history = held_out("test", test, train, history_length=2).history
    assert history.tolist() == [[3, 4], [0, 3], [0, 0]]
    held_out_items = set((test.items + 1).tolist())
    assert not held_out_items & set(last_items(train, 4).flatten().tolist())
    assert not held_out_items & set(history.flatten().tolist())


def test_sequence_batches_carry_histories_of_training_items(ratings_folder, tmp_path):
    cfg = config(ratings_folder, tmp_path, "model=sequence_lstm")
    datamodule, _ = build(cfg)
    assert datamodule.hparams.history_length == 10
    batch = next(iter(datamodule.train_dataloader()))[0]  # the first batch of the first chunk
    assert batch["history"].shape == (len(batch["users"]), 10)
    held = next(iter(datamodule.val_dataloader()))
    assert held.history.shape == (len(held.users), 10)


def test_excluded_negatives_are_never_items_the_user_rated():
    data, _ = index_ratings(synthetic_ratings(num_users=30, num_items=12, per_user=5))
    seen = set(zip(data.users.tolist(), data.items.tolist(), strict=True))
    batches = ShuffledBatches(data, 32, num_negatives=4, seed=0, exclude_seen=True)
    for _ in range(3):
        for batch in batches:
            for user, negatives in zip(
                batch["users"].tolist(), batch["negatives"].tolist(), strict=True
            ):
                assert not any((user, item) in seen for item in negatives)
    plain = ShuffledBatches(data, 32, num_negatives=4, seed=0)
    drawn = [
        (u, i)
        for b in plain
        for u, n in zip(b["users"].tolist(), b["negatives"].tolist(), strict=True)
        for i in n
    ]
    assert any(pair in seen for pair in drawn)  # without the option, seen items do get drawn


def test_penalties_and_negative_ratings_enter_the_loss():
    torch.manual_seed(0)
    net = MatrixFactorization(DataInfo(5, 6), embedding_dim=3)
    batch = {
        "users": torch.tensor([0, 1]),
        "items": torch.tensor([2, 3]),
        "ratings": torch.tensor([4.0, 2.0]),
        "negatives": torch.tensor([[5, 1], [0, 4]]),
    }
    plain = Objective([Rating()])(net, batch)
    with_l2 = Objective([Rating()], l2=0.1)(net, batch)
    assert plain.keys() == {"rating"} and with_l2.keys() == {"rating", "penalty"}
    assert with_l2["rating"] == plain["rating"]  # task losses come unweighted, penalties apart
    squares = sum(p.pow(2).sum() for p in net.parameters())
    assert with_l2["penalty"].item() == pytest.approx(0.1 * squares.item(), rel=1e-6)
    pointwise = Objective([Rating(negative_rating_ratio=1)])
    predicted = torch.cat(
        [
            net.ratings(batch["users"], batch["items"]),
            net.ratings(batch["users"], torch.tensor([5, 0])),
        ]
    )
    expected = losses.regression_loss(predicted, torch.tensor([4.0, 2.0, 0.0, 0.0]))
    assert pointwise(net, batch)["rating"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_optimizer_and_scheduler_groups(ratings_folder, tmp_path):
    _, module = build(
        config(
            ratings_folder, tmp_path, "optimizer=sgd", "scheduler=cosine", "trainer.max_epochs=7"
        )
    )
    chosen = module.configure_optimizers()
    assert isinstance(chosen["optimizer"], torch.optim.SGD)
    assert chosen["lr_scheduler"].T_max == 7
    _, module = build(config(ratings_folder, tmp_path, "optimizer=adamw"))
    assert isinstance(module.configure_optimizers(), torch.optim.AdamW)


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    from conftest import write_u_data

    out = tmp_path_factory.mktemp("explore")
    folder = write_u_data(out / "data", synthetic_ratings())
    argv = [
        f"data.path={folder}",
        "trainer.max_epochs=2",
        f"hydra.run.dir={out / 'run'}",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    assert run_main(argv) == 0
    return out / "run" / "checkpoints" / "last.ckpt"


def _json(capsys) -> str:
    out = capsys.readouterr().out
    return out[out.index("{") :]


def test_explore_biases(trained_checkpoint, capsys):
    explore.main([str(trained_checkpoint), "biases", "--k", "3", "--json"])
    result = json.loads(_json(capsys))
    largest = [row["bias"] for row in result["largest"]]
    smallest = [row["bias"] for row in result["smallest"]]
    assert len(largest) == 3 and largest == sorted(largest, reverse=True)
    assert smallest == sorted(smallest) and smallest[0] <= largest[-1]
    assert result["largest"][0]["title"].startswith("Movie ")


def test_explore_similar_by_title_and_id(trained_checkpoint, capsys):
    explore.main([str(trained_checkpoint), "similar", "movie 7 (", "--k", "4", "--json"])
    by_title = json.loads(_json(capsys))
    assert by_title["movie"]["id"] == 7 and by_title["movie"]["title"] == "Movie 7 (1990)"
    ids = [row["id"] for row in by_title["similar"]]
    assert len(ids) == 4 and 7 not in ids
    scores = [row["similarity"] for row in by_title["similar"]]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    explore.main([str(trained_checkpoint), "similar", "7", "--k", "4", "--json"])
    assert json.loads(_json(capsys))["similar"] == by_title["similar"]
    with pytest.raises(SystemExit, match="no movie matches 'Star Wars'"):
        explore.main([str(trained_checkpoint), "similar", "Star Wars"])


def test_explore_recommend_leaves_out_rated_items(trained_checkpoint, capsys):
    explore.main([str(trained_checkpoint), "recommend", "3", "--k", "5", "--json"])
    result = json.loads(_json(capsys))
    rated = set(synthetic_ratings().query("user == 3").item)
    recommended = {row["id"] for row in result["recommendations"]}
    assert result["user"] == 3 and result["rated"] == len(rated) == 15
    assert len(recommended) == 5 and not recommended & rated
    explore.main([str(trained_checkpoint), "recommend", "3", "--k", "5"])
    assert "Top 5 for user 3" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="user '999' is not in the data"):
        explore.main([str(trained_checkpoint), "recommend", "999"])
