"""The LightningDataModule: the split, shuffled index batches and sampled negatives."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch

from mtrec.data.interactions import HeldOut, Interactions, held_out, index_ratings, random_split
from mtrec.data.movielens import load_movielens


class ShuffledBatches:
    """Mini-batches taken by slicing a fresh permutation of the rows every epoch.

    All data stay in memory as tensors: a batch is a handful of index operations, never a
    per-sample ``Dataset``. Each positive gets ``num_negatives`` items drawn uniformly from the
    whole catalogue (seen items included, as in the reference). Epoch ``e`` uses a generator
    seeded with ``(seed, e)``, so the batches of a run are reproducible.
    """

    def __init__(self, data: Interactions, batch_size: int, num_negatives: int, seed: int):
        self.data = data
        self.batch_size = batch_size
        self.num_negatives = num_negatives
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        n, d = len(self.data), self.data
        order = torch.randperm(n, generator=generator)
        negatives = torch.randint(d.num_items, (n, self.num_negatives), generator=generator)
        for start in range(0, n, self.batch_size):
            rows = order[start : start + self.batch_size]
            yield {
                "users": d.users[rows],
                "items": d.items[rows],
                "ratings": d.ratings[rows],
                "negatives": negatives[start : start + self.batch_size],
            }


class SingleBatch:
    """An iterable of one batch: a whole held-out set, evaluated in one vectorised pass."""

    def __init__(self, batch: HeldOut):
        self.batch = batch

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        yield self.batch


class MovieLensDataModule(L.LightningDataModule):
    """MovieLens ratings, split at random into train / (validation) / test.

    With ``val_fraction=0`` (the reference protocol) the validation loop evaluates the test
    rows every epoch and its metrics are named ``test/...``; with a carve-out it evaluates
    the validation rows (``val/...``) and the test loop runs once at the end.
    """

    def __init__(
        self,
        variant: str = "ml-100k",
        path: str | None = None,
        cache_dir: str = "data",
        split_seed: int = 123,
        test_fraction: float = 0.05,
        val_fraction: float = 0.0,
        batch_size: int = 256,
        num_negatives: int = 1,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.split = None

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        hp = self.hparams
        data = load_movielens(hp.variant, Path(hp.cache_dir), hp.path)
        interactions, self.vocabulary = index_ratings(data.ratings)
        self.item_metadata = data.items
        self.num_users, self.num_items = interactions.num_users, interactions.num_items
        self.split = random_split(interactions, hp.test_fraction, hp.val_fraction, hp.split_seed)

    @property
    def has_validation(self) -> bool:
        return self.split.val is not None

    def train_dataloader(self) -> ShuffledBatches:
        hp = self.hparams
        return ShuffledBatches(self.split.train, hp.batch_size, hp.num_negatives, hp.seed)

    def val_dataloader(self) -> SingleBatch:
        if self.has_validation:
            return SingleBatch(held_out("val", self.split.val, self.split.train))
        return SingleBatch(held_out("test", self.split.test, self.split.train))

    def test_dataloader(self) -> SingleBatch:
        known = [self.split.train] + ([self.split.val] if self.has_validation else [])
        return SingleBatch(held_out("test", self.split.test, *known))
