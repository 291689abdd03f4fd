"""The LightningDataModule: the split, shuffled index batches and sampled negatives."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch

from mtrec.data.info import DataInfo
from mtrec.data.interactions import (
    HeldOut,
    Interactions,
    held_out,
    index_ratings,
    last_items,
    random_split,
    to_device,
)
from mtrec.data.movielens import MovieLens, load_movielens
from mtrec.lightning_internals import StepBoundaries, step_boundaries

#: what every training batch carries, or may: the rows' ids and ratings, the sampled negatives,
#: each user's last rated items (``history``), and under non-uniform negatives log Q of each
#: row's item and of each of its negatives (``log_q_items``, ``log_q_negatives``)
BATCH_FIELDS = (
    "users",
    "items",
    "ratings",
    "negatives",
    "history",
    "log_q_items",
    "log_q_negatives",
)


class ShuffledBatches:
    """Mini-batches taken by slicing a fresh permutation of the rows every epoch.

    All data stay in memory as tensors: a batch is a handful of index operations, never a
    per-sample ``Dataset``. Each positive gets ``num_negatives`` items drawn uniformly from the
    whole catalogue: seen items included, as in the reference, unless ``exclude_seen``, which
    redraws every negative that the user rated in training. ``negative_alpha`` > 0 draws them
    with probability Q(item) ∝ (the item's training rows)^alpha instead (0.75 as in word2vec),
    and every batch then carries log Q of its items (``log_q_items``, (B,)) and of its
    negatives (``log_q_negatives``, (B, K)), for losses that correct for it: gathered per
    row, so a loss reads no value by item id and a step over the batch's rows serves it.
    Epoch ``e`` uses a generator seeded with ``(seed, e)``, so the batches of a run are
    reproducible. ``rows`` (name -> one value per training row: the history of past items for
    sequence models, a field a data module adds for a task) ride along under their names.

    Under data parallelism every rank draws the same permutation and takes its own share,
    ``rank::world_size`` (trimmed to equal length), so ranks see disjoint rows and the same
    number of batches.
    """

    def __init__(
        self,
        data: Interactions,
        batch_size: int,
        num_negatives: int,
        seed: int,
        exclude_seen: bool = False,
        rows: Mapping[str, torch.Tensor] | None = None,
        rank: int = 0,
        world_size: int = 1,
        negative_alpha: float = 0.0,
    ):
        self.data = data
        self.weights = self.log_q = None
        if negative_alpha:
            counts = torch.bincount(data.items.cpu(), minlength=data.num_items).to(torch.float64)
            weights = counts.pow(negative_alpha)
            self.weights = weights.to(torch.float32)
            self.log_q = (weights / weights.sum()).log().to(torch.float32).to(data.users.device)
        self.rank, self.world_size = rank, world_size
        self.batch_size = batch_size
        self.num_negatives = num_negatives
        self.seed = seed
        self.rows = dict(rows or {})
        self.seen_keys = (
            torch.sort(data.users * data.num_items + data.items).values if exclude_seen else None
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer before every epoch: a resumed run draws what it would have."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.data) // self.world_size / self.batch_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        d = self.data
        order = torch.randperm(len(d), generator=generator).to(d.users.device)
        n = len(d) // self.world_size
        order = order[self.rank :: self.world_size][:n]
        negatives = self._draw((len(d), self.num_negatives), generator)
        negatives = negatives[self.rank :: self.world_size][:n].to(d.users.device)
        if self.seen_keys is not None:
            self._redraw_seen(negatives, d.users[order], generator)
        for start in range(0, n, self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = {
                "users": d.users[rows],
                "items": d.items[rows],
                "ratings": d.ratings[rows],
                "negatives": negatives[start : start + self.batch_size],
            }
            for name, values in self.rows.items():
                batch[name] = values[rows]
            if self.log_q is not None:
                batch["log_q_items"] = self.log_q[batch["items"]]
                batch["log_q_negatives"] = self.log_q[batch["negatives"]]
            yield batch

    def _draw(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Items drawn from the negative sampler's Q, on the CPU."""
        if self.weights is None:
            return torch.randint(self.data.num_items, shape, generator=generator)
        count = math.prod(shape)
        drawn = torch.multinomial(self.weights, count, replacement=True, generator=generator)
        return drawn.view(shape)

    def _redraw_seen(self, negatives: torch.Tensor, users: torch.Tensor, generator) -> None:
        """Redraw, in place, every negative the user rated in training, until none is left."""
        users = users.unsqueeze(1).expand_as(negatives)
        for _ in range(1000):
            keys = users * self.data.num_items + negatives
            found = torch.searchsorted(self.seen_keys, keys).clamp(max=len(self.seen_keys) - 1)
            seen = self.seen_keys[found] == keys
            if not seen.any():
                return
            negatives[seen] = self._draw((int(seen.sum()),), generator).to(negatives.device)
        raise RuntimeError(
            "data.exclude_seen_negatives=true: some users rated (nearly) every item, so no unseen "
            "negative could be drawn. Fix: set data.exclude_seen_negatives=false."
        )


class Chunks:
    """Consecutive mini-batches grouped into lists: one list per Lightning ``training_step``.

    Each mini-batch still gets its own optimizer step; a chunk only spares the Trainer's
    per-call work (hooks, progress bar, loop bookkeeping), which costs more than the
    arithmetic of a small batch. Chunks hold up to ``size`` batches and end where a
    step-counted event falls (``boundaries``: checkpoints every n steps, ``max_steps``), so
    those happen at the exact optimizer step. ``limit_train_batches`` counts chunks.
    """

    def __init__(self, batches, size: int, boundaries: Callable[[], StepBoundaries] | None = None):
        self.batches, self.size = batches, size
        self.boundaries = boundaries
        # Lightning calls sampler.set_epoch(epoch) before each epoch, as for a DistributedSampler
        self.sampler = batches

    def chunk_sizes(self) -> list[int]:
        """The sizes of this epoch's chunks, planned from the steps done before it."""
        boundaries = self.boundaries() if self.boundaries else StepBoundaries(0, (), None)
        return boundaries.chunk_sizes(len(self.batches), self.size)

    def __len__(self) -> int:
        return len(self.chunk_sizes())

    def __iter__(self):
        sizes = iter(self.chunk_sizes())
        size, chunk = next(sizes, 0), []
        for batch in self.batches:
            chunk.append(batch)
            if len(chunk) == size:
                yield chunk
                size, chunk = next(sizes, 0), []
        if chunk:
            yield chunk


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

    ``batch_fields`` are the fields a training batch can carry (a task's ``fields`` must be
    among them, checked before any work): where a new field comes from is a data module that
    adds it to ``batch_fields`` and gives its values per training row in :meth:`row_fields`.
    """

    batch_fields: ClassVar[tuple[str, ...]] = BATCH_FIELDS

    def __init__(
        self,
        variant: str | None = None,
        path: str | None = None,
        cache_dir: str = "data",
        split_seed: int = 123,
        test_fraction: float = 0.05,
        val_fraction: float = 0.0,
        batch_size: int = 256,
        batches_per_chunk: int = 64,
        num_negatives: int = 1,
        exclude_seen_negatives: bool = False,
        negative_alpha: float = 0.0,
        history_length: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.split = None
        self._device_copies: dict = {}

    def setup(self, stage: str | None = None) -> None:
        if self.split is not None:
            return
        hp = self.hparams
        data = self.load()
        interactions, self.vocabulary = index_ratings(data.ratings)
        self.item_metadata = data.items
        self.num_users, self.num_items = interactions.num_users, interactions.num_items
        self.split = random_split(interactions, hp.test_fraction, hp.val_fraction, hp.split_seed)
        self.train_history = (
            last_items(self.split.train, hp.history_length) if hp.history_length else None
        )

    @property
    def item_genres(self) -> torch.Tensor:
        """(num_items, max genres) genre ids ``1..G`` per item, padded with 0 (for genre models)."""
        names = sorted({g for genres in self.item_metadata.genres for g in genres})
        genre_id = {name: i + 1 for i, name in enumerate(names)}
        by_item = dict(zip(self.item_metadata.item, self.item_metadata.genres, strict=True))
        rows = [[genre_id[g] for g in by_item.get(i, ())] for i in self.vocabulary.item_ids]
        table = torch.zeros(len(rows), max(1, max(map(len, rows))), dtype=torch.int64)
        for i, ids in enumerate(rows):
            table[i, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return table

    def load(self) -> MovieLens:
        hp = self.hparams
        return load_movielens(hp.variant, Path(hp.cache_dir), hp.path)

    @property
    def has_validation(self) -> bool:
        return self.split.val is not None

    def train_dataloader(self) -> Chunks:
        hp = self.hparams
        trainer = self.trainer  # None when used outside a Trainer
        batches = ShuffledBatches(
            self._on_device("train", self.split.train),
            hp.batch_size,
            hp.num_negatives,
            hp.seed,
            exclude_seen=hp.exclude_seen_negatives,
            rows={n: self._on_device(f"rows/{n}", v) for n, v in self.row_fields().items()},
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            negative_alpha=hp.negative_alpha,
        )
        boundaries = partial(step_boundaries, trainer) if trainer else None
        return Chunks(batches, hp.batches_per_chunk, boundaries)

    def row_fields(self) -> dict[str, torch.Tensor]:
        """The fields beside users, items and ratings that training batches carry, one value
        per training row: each user's last rated items (``history``) for sequence models. A
        data module that gives a task a new field adds it here (and to ``batch_fields``)."""
        return {} if self.train_history is None else {"history": self.train_history}

    def val_dataloader(self) -> SingleBatch:
        if self.has_validation:
            return self._held_out("val", self.split.val, self.split.train)
        return self._held_out("test", self.split.test, self.split.train)

    def test_dataloader(self) -> SingleBatch:
        known = [self.split.train] + ([self.split.val] if self.has_validation else [])
        return self._held_out("test", self.split.test, *known)

    def _held_out(self, name: str, target: Interactions, *known: Interactions) -> SingleBatch:
        k = self.hparams.history_length
        key = f"{name}_held_out_{len(known)}_{self._device}"  # built once per run and device
        if key not in self._device_copies:
            built = held_out(name, target, *known, history_length=k)
            self._device_copies[key] = to_device(built, self._device)
        return SingleBatch(self._device_copies[key])

    @property
    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer else torch.device("cpu")

    def _on_device(self, key: str, value):
        """``value`` on the training device, copied there once per run, not once per batch."""
        if value is None:
            return None
        cached = self._device_copies.get(key)
        if cached is None or _device_of(cached) != self._device:
            cached = self._device_copies[key] = to_device(value, self._device)
        return cached

    def data_info(self) -> DataInfo:
        """What nets may need: counts, item genres, the training rows."""
        return DataInfo(self.num_users, self.num_items, self.item_genres, self.split.train)


def _device_of(value) -> torch.device:
    return value.device if isinstance(value, torch.Tensor) else value.users.device
