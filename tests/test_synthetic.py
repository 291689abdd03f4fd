"""Synthetic MovieLens-shaped data: exact shape, no repeated pairs, deterministic, cached."""

import pytest

from mtrec.data import synthetic
from mtrec.data.movielens import DataError
from mtrec.data.synthetic import GENERATOR_VERSION, SHAPES, SyntheticDataModule, cached, generate


def test_generated_data_has_the_variant_shape():
    data = generate("ml-100k", seed=3)
    ratings = data.ratings
    assert (ratings.user.nunique(), ratings.item.nunique(), len(ratings)) == SHAPES["ml-100k"]
    assert not ratings.duplicated(["user", "item"]).any()
    assert ratings.groupby("user").size().min() >= 20
    assert set(ratings.rating.unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    per_item = ratings.item.value_counts()
    assert per_item.iloc[0] > 20 * per_item.median()  # long-tailed popularity


def test_generation_is_deterministic_by_seed():
    assert generate("ml-latest-small", seed=1).ratings.equals(
        generate("ml-latest-small", seed=1).ratings
    )
    assert not generate("ml-latest-small", seed=1).ratings.equals(
        generate("ml-latest-small", seed=2).ratings
    )


def test_synthetic_data_module_splits_like_the_real_one(tmp_path):
    dm = SyntheticDataModule(shape="ml-100k", cache_dir=str(tmp_path))
    dm.setup()
    assert (dm.num_users, dm.num_items) == (943, 1682)
    assert (len(dm.split.train), len(dm.split.test)) == (95_000, 5_000)


def test_generated_data_is_cached_once_and_read_back_the_same(tmp_path, monkeypatch):
    first = cached("ml-latest-small", 4, tmp_path)
    (path,) = (tmp_path / "synthetic").iterdir()
    assert path.name == f"ml-latest-small-seed4-v{GENERATOR_VERSION}.pt"
    written = path.stat().st_mtime_ns

    def no_generating(*args):
        raise AssertionError("generated again")

    monkeypatch.setattr(synthetic, "generate", no_generating)
    again = cached("ml-latest-small", 4, tmp_path)
    assert again.ratings.equals(first.ratings)
    assert again.items.equals(first.items)
    assert path.stat().st_mtime_ns == written
    assert list((tmp_path / "synthetic").iterdir()) == [path]  # no temporary file left
    with pytest.raises(AssertionError, match="generated again"):  # another seed: not cached
        cached("ml-latest-small", 5, tmp_path)


def test_unknown_shape_names_the_known_ones():
    with pytest.raises(
        DataError, match="data.shape='ml-5k' is unknown. Known shapes: ml-100k, ml-1m"
    ):
        generate("ml-5k")
