"""Synthetic interactions shaped like a MovieLens variant, for scale tests without downloads.

Users, items and ratings match the named variant's counts; item popularity is long-tailed
(Zipf-like), per-user activity is long-tailed (log-normal, at least 20 ratings as in
MovieLens), ratings are integers 1-5 from user and item tendencies plus noise. The same seed
gives the same data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mtrec.data.datamodule import MovieLensDataModule
from mtrec.data.movielens import DataError, MovieLens
from mtrec.files import atomic_path

log = logging.getLogger(__name__)

# (users, items, ratings) of the GroupLens releases
SHAPES: dict[str, tuple[int, int, int]] = {
    "ml-100k": (943, 1_682, 100_000),
    "ml-1m": (6_040, 3_706, 1_000_209),
    "ml-10m": (69_878, 10_677, 10_000_054),
    "ml-20m": (138_493, 26_744, 20_000_263),
    "ml-25m": (162_541, 59_047, 25_000_095),
    "ml-32m": (200_948, 84_432, 32_000_204),
    "ml-latest-small": (610, 9_724, 100_836),
}


def user_activity(
    rng: np.random.Generator, num_users: int, num_items: int, total: int
) -> np.ndarray:
    """Ratings per user: log-normal, 20 to half the catalogue each, summing to ``total``."""
    floor, cap = min(20, num_items // 2), num_items // 2
    if total > cap * num_users:
        raise DataError(f"{total} ratings do not fit {num_users} users x {num_items} items.")
    weights = rng.lognormal(0.0, 1.0, num_users)
    counts = floor + np.floor(weights / weights.sum() * (total - floor * num_users)).astype(
        np.int64
    )
    counts = np.minimum(counts, cap)
    while (short := total - int(counts.sum())) > 0:  # hand out what rounding and the cap left over
        room = np.flatnonzero(counts < cap)
        counts[rng.choice(room, size=min(short, len(room)), replace=False)] += 1
    return counts


def distinct_items(users: torch.Tensor, popularity: torch.Tensor, generator) -> torch.Tensor:
    """One item per row, drawn by popularity, with no (user, item) pair twice.

    Draw with replacement, then redraw the repeated pairs until none is left: a few rounds,
    since each user rates at most half the catalogue.
    """
    num_items = len(popularity)
    items = torch.multinomial(popularity, len(users), replacement=True, generator=generator)
    for _ in range(1000):
        keys = users * num_items + items
        order = torch.argsort(keys, stable=True)
        repeated = torch.zeros(len(keys), dtype=torch.bool)
        repeated[order[1:]] = keys[order[1:]] == keys[order[:-1]]
        if not repeated.any():
            return items
        items[repeated] = torch.multinomial(
            popularity, int(repeated.sum()), replacement=True, generator=generator
        )
    raise RuntimeError("could not draw distinct items; the popularity is too concentrated")


def generate(shape: str = "ml-1m", seed: int = 0) -> MovieLens:
    """A ratings table (and placeholder item titles) shaped like the MovieLens ``shape``."""
    if shape not in SHAPES:
        raise DataError(f"data.shape={shape!r} is unknown. Known shapes: {', '.join(SHAPES)}.")
    num_users, num_items, total = SHAPES[shape]
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    counts = user_activity(rng, num_users, num_items, total)
    users = torch.repeat_interleave(torch.arange(num_users), torch.from_numpy(counts))
    popularity = 1.0 / torch.arange(1, num_items + 1, dtype=torch.float64) ** 0.9  # Zipf-like
    popularity = popularity[torch.randperm(num_items, generator=generator)]
    items = distinct_items(users, popularity, generator).numpy()
    users = users.numpy()
    taste = rng.normal(0.0, 0.5, num_users)[users] + rng.normal(0.0, 0.6, num_items)[items]
    ratings = np.clip(np.rint(3.6 + taste + rng.normal(0.0, 0.9, total)), 1, 5)
    return movielens(shape, seed, users, items, ratings)


def movielens(shape: str, seed: int, users, items, ratings) -> MovieLens:
    """The :class:`MovieLens` of generated 0-based ``users``, ``items`` and ``ratings``:
    1-based ids, timestamps in row order, placeholder item titles."""
    total, num_items = len(users), SHAPES[shape][1]
    frame = pd.DataFrame(
        {
            "user": users.astype(np.int64) + 1,
            "item": items.astype(np.int64) + 1,
            "rating": ratings.astype(np.float32),
            "timestamp": 880_000_000 + np.arange(total, dtype=np.int64),
        }
    )
    ids = np.arange(1, num_items + 1)
    metadata = pd.DataFrame(
        {"item": ids, "title": [f"synthetic item {i}" for i in ids], "genres": [()] * num_items}
    )
    return MovieLens(frame, metadata, source=f"synthetic {shape}, seed {seed}")


# Bump when generate() changes what it draws: cached files of older versions are not read.
GENERATOR_VERSION = 1


def cached(shape: str, seed: int, cache_dir: str | Path) -> MovieLens:
    """:func:`generate`'s data, from ``cache_dir/synthetic`` if generated before, else
    generated and cached (compact: int32 ids, int8 ratings; written atomically). A cached file
    that cannot be read is generated again and replaced, with a warning naming it."""
    path = Path(cache_dir) / "synthetic" / f"{shape}-seed{seed}-v{GENERATOR_VERSION}.pt"
    columns = _read_cache(path, SHAPES[shape][2] if shape in SHAPES else None)
    if columns is not None:
        log.info("Read %d synthetic ratings from %s", len(columns[0]), path)
        return movielens(shape, seed, *columns)
    data = generate(shape, seed)
    ratings = data.ratings
    compact = {
        "users": torch.from_numpy((ratings.user.to_numpy() - 1).astype(np.int32)),
        "items": torch.from_numpy((ratings.item.to_numpy() - 1).astype(np.int32)),
        "ratings": torch.from_numpy(ratings.rating.to_numpy().astype(np.int8)),
    }
    with atomic_path(path) as tmp:
        torch.save(compact, tmp)
    log.info("Generated %d ratings (%s), cached in %s", len(ratings), data.source, path)
    return data


def _read_cache(path: Path, total: int | None) -> tuple[np.ndarray, ...] | None:
    """The users, items and ratings cached in ``path``; None when there is no file, or when
    it is damaged (cut short by a full disk, say): then a warning says it will be replaced."""
    if not path.exists():
        return None
    try:
        stored = torch.load(path, weights_only=True)
        columns = tuple(stored[key].numpy() for key in ("users", "items", "ratings"))
        if {len(column) for column in columns} != {total}:
            raise ValueError(f"{[len(c) for c in columns]} rows, not {total}")
        return columns
    except Exception as error:  # anything unreadable is regenerated: the file is only a cache
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        log.warning(
            "The synthetic data cache %s is damaged (%s): generating the data again and "
            "writing it anew in its place.",
            path,
            reason,
        )
        return None


class SyntheticDataModule(MovieLensDataModule):
    """The MovieLens data module over :func:`generate` data instead of downloaded files,
    generated once per shape and seed and read from the data cache after."""

    def __init__(self, shape: str = "ml-1m", generator_seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.shape, self.generator_seed = shape, generator_seed

    def load(self) -> MovieLens:
        return cached(self.shape, self.generator_seed, self.hparams.cache_dir)
