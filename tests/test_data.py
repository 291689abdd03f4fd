import numpy as np
import pandas as pd
import pytest
import torch

from conftest import synthetic_ratings
from mtrec.data.datamodule import MovieLensDataModule, ShuffledBatches
from mtrec.data.interactions import index_ratings, random_split


def test_reindexing_is_contiguous_and_keeps_row_order():
    ratings = pd.DataFrame(
        {
            "user": [10, 3, 10, 7],
            "item": [500, 20, 20, 9],
            "rating": [1.0, 2, 3, 4],
            "timestamp": [1, 2, 3, 4],
        }
    )
    data, vocab = index_ratings(ratings)
    assert data.users.tolist() == [2, 0, 2, 1] and data.items.tolist() == [2, 1, 1, 0]
    assert (data.num_users, data.num_items) == (3, 3)
    assert vocab.user_ids[data.users].tolist() == [10, 3, 10, 7]
    assert data.ratings.dtype == torch.float32 and data.users.dtype == torch.int64


def test_split_reproduces_the_reference_recipe():
    data, _ = index_ratings(synthetic_ratings(num_users=100, per_user=10))  # 1,000 rows
    split = random_split(data, test_fraction=0.05, seed=123)
    order = np.arange(1000)
    np.random.RandomState(123).shuffle(order)
    assert len(split.train) == 950 and len(split.test) == 50 and split.val is None
    assert split.test.users.tolist() == data.users[order[950:]].tolist()
    assert split.train.items.tolist() == data.items[order[:950]].tolist()


def test_split_is_deterministic_and_seed_dependent():
    data, _ = index_ratings(synthetic_ratings())
    a, b = random_split(data, seed=5), random_split(data, seed=5)
    assert torch.equal(a.test.users, b.test.users) and torch.equal(a.test.items, b.test.items)
    c = random_split(data, seed=6)
    assert not torch.equal(a.test.items, c.test.items)


def test_validation_carve_out_comes_from_train_only():
    data, _ = index_ratings(synthetic_ratings(num_users=100, per_user=10))
    plain = random_split(data, test_fraction=0.1, seed=1)
    split = random_split(data, test_fraction=0.1, val_fraction=0.2, seed=1)
    assert (len(split.train), len(split.val), len(split.test)) == (700, 200, 100)
    assert torch.equal(split.test.items, plain.test.items)  # test rows do not move
    train_pairs = set(zip(plain.train.users.tolist(), plain.train.items.tolist(), strict=True))
    val_pairs = set(zip(split.val.users.tolist(), split.val.items.tolist(), strict=True))
    assert val_pairs <= train_pairs


def test_batches_cover_every_row_once_per_epoch_with_negatives_in_range():
    data, _ = index_ratings(synthetic_ratings())
    batches = ShuffledBatches(data, batch_size=64, num_negatives=3, seed=0)
    epoch = list(batches)
    assert len(epoch) == len(batches) == -(-len(data) // 64)
    pairs = torch.cat([b["users"] * 1000 + b["items"] for b in epoch])
    assert sorted(pairs.tolist()) == sorted((data.users * 1000 + data.items).tolist())
    negatives = torch.cat([b["negatives"] for b in epoch])
    assert negatives.shape == (len(data), 3)
    assert negatives.min() >= 0 and negatives.max() < data.num_items
    assert len(negatives.unique()) > data.num_items // 2  # drawn from the whole catalogue
    again = list(batches)
    assert not torch.equal(epoch[0]["users"], again[0]["users"])  # reshuffled every epoch


def test_ranks_take_disjoint_equal_shares_of_each_epoch():
    data, _ = index_ratings(synthetic_ratings())  # 900 rows
    shares = [list(ShuffledBatches(data, 64, 1, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == len(ShuffledBatches(data, 64, 1, 3, world_size=2))
    keys = [torch.cat([b["users"] * 1000 + b["items"] for b in share]) for share in shares]
    assert len(keys[0]) == len(keys[1]) == 450
    assert not set(keys[0].tolist()) & set(keys[1].tolist())


def test_batches_are_reproducible_for_a_seed():
    data, _ = index_ratings(synthetic_ratings())
    first = next(iter(ShuffledBatches(data, 32, 1, seed=7)))
    second = next(iter(ShuffledBatches(data, 32, 1, seed=7)))
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("val_fraction, names", [(0.0, ("test", "test")), (0.1, ("val", "test"))])
def test_datamodule_names_the_held_out_sets(ratings_folder, val_fraction, names):
    dm = MovieLensDataModule(path=str(ratings_folder), val_fraction=val_fraction)
    dm.setup()
    assert (dm.num_users, dm.num_items) == (60, 40)
    val, test = next(iter(dm.val_dataloader())), next(iter(dm.test_dataloader()))
    assert (val.name, test.name) == names
    # every known interaction of an evaluated user is filtered, and nothing else
    known = [dm.split.train] + ([dm.split.val] if val_fraction else [])
    evaluated = set(test.eval_users.tolist())
    expected = [
        (u, i)
        for part in known
        for u, i in zip(part.users.tolist(), part.items.tolist(), strict=True)
        if u in evaluated
    ]
    filtered = list(
        zip(test.eval_users[test.seen_rows].tolist(), test.seen_items.tolist(), strict=True)
    )
    assert set(filtered) == set(expected) and len(filtered) == len(expected)
    assert len(dm.item_metadata) == 40 and dm.item_metadata.title.iloc[0] == "Movie 1 (1990)"


def test_datamodule_reads_own_half_star_ratings_csv_with_no_variant(tmp_path):
    """One's own ratings.csv, half stars as in the MovieLens releases, needs no other setting."""
    ratings = synthetic_ratings().assign(rating=lambda frame: frame.rating - 0.5)  # 0.5 to 4.5
    columns = {"user": "userId", "item": "movieId"}
    ratings.rename(columns=columns).to_csv(tmp_path / "ratings.csv", index=False)
    dm = MovieLensDataModule(variant=None, path=str(tmp_path / "ratings.csv"))
    dm.setup()
    assert (dm.num_users, dm.num_items) == (60, 40)
    rated = torch.cat([dm.split.train.ratings, dm.split.test.ratings])
    assert sorted(rated.tolist()) == sorted(ratings.rating.tolist()) and rated.min() == 0.5
