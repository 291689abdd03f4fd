"""Ratings as tensors: contiguous re-indexing, the random split and held-out sets."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd
import torch


@dataclass
class Interactions:
    """Rows of (user, item, rating, timestamp) with contiguous 0-based ids, as tensors."""

    users: torch.Tensor  # int64
    items: torch.Tensor  # int64
    ratings: torch.Tensor  # float32
    timestamps: torch.Tensor  # int64
    num_users: int
    num_items: int

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, rows: torch.Tensor) -> Interactions:
        return Interactions(
            self.users[rows],
            self.items[rows],
            self.ratings[rows],
            self.timestamps[rows],
            self.num_users,
            self.num_items,
        )


@dataclass
class Vocabulary:
    """The raw ids behind the contiguous indices (index ``i`` is ``raw[i]``)."""

    user_ids: np.ndarray
    item_ids: np.ndarray


def rated(train: Interactions, num_users: int, num_items: int) -> torch.Tensor:
    """The (users, items) matrix with 1 where the user rated the item in ``train``, else 0
    (a pair rated twice counts once): what EASE, SVD++'s history and the item-to-item
    encoder read of the training rows."""
    matrix = torch.zeros(num_users, num_items)
    matrix[train.users.cpu(), train.items.cpu()] = 1.0
    return matrix


def index_ratings(ratings: pd.DataFrame) -> tuple[Interactions, Vocabulary]:
    """Map raw user and item ids to ``0..n-1`` (sorted by raw id), keeping file order of rows."""
    user_ids, users = np.unique(ratings.user.to_numpy(), return_inverse=True)
    item_ids, items = np.unique(ratings.item.to_numpy(), return_inverse=True)
    interactions = Interactions(
        users=torch.from_numpy(users.astype(np.int64)),
        items=torch.from_numpy(items.astype(np.int64)),
        ratings=torch.tensor(ratings.rating.to_numpy(dtype=np.float32)),
        timestamps=torch.tensor(ratings.timestamp.to_numpy(dtype=np.int64)),
        num_users=len(user_ids),
        num_items=len(item_ids),
    )
    return interactions, Vocabulary(user_ids, item_ids)


@dataclass
class Split:
    train: Interactions
    val: Interactions | None
    test: Interactions


def random_split(
    data: Interactions, test_fraction: float = 0.05, val_fraction: float = 0.0, seed: int = 123
) -> Split:
    """Interaction-level random split, as the reference: the shuffled rows ``0..N-1``
    (``numpy.random.RandomState(seed).shuffle``) give train first, test last.

    The validation carve-out, a fraction of all rows, is taken from the end of the train part,
    so the test rows do not depend on ``val_fraction``.
    """
    n = len(data)
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    n_train = int((1.0 - test_fraction) * n)
    n_val = int(val_fraction * n)
    order = torch.from_numpy(order)
    train, test = order[: n_train - n_val], order[n_train:]
    val = data.subset(order[n_train - n_val : n_train]) if n_val else None
    return Split(train=data.subset(train), val=val, test=data.subset(test))


@dataclass
class HeldOut:
    """A held-out set ready for evaluation in one pass.

    ``users``/``items``/``ratings`` are the held-out rows, grouped by user; ``row_of`` maps
    each of them to a row of ``eval_users`` (the users that have held-out rows, ascending);
    ``seen_rows``/``seen_items`` list the known (training) interactions of those users, sorted
    by row, pushed to the bottom of rankings. Both sortings let evaluation take the users in
    chunks with two binary searches per chunk.
    """

    name: str  # metric prefix: "val" or "test"
    num_items: int
    users: torch.Tensor
    items: torch.Tensor
    ratings: torch.Tensor
    eval_users: torch.Tensor
    row_of: torch.Tensor
    seen_rows: torch.Tensor
    seen_items: torch.Tensor
    history: torch.Tensor | None = None  # (rows, k) last k training items, for sequence models


def held_out(
    name: str, target: Interactions, *known: Interactions, history_length: int = 0
) -> HeldOut:
    """Build the :class:`HeldOut` for ``target`` with ``known`` rows filtered from rankings.

    With ``history_length``, each row also gets the last items of its user among the first
    ``known`` set (the training rows) up to its timestamp: held-out items never enter a history.
    """
    target = target.subset(torch.argsort(target.users, stable=True))
    eval_users, row_of = torch.unique(target.users, return_inverse=True)
    position = torch.full((target.num_users,), -1, dtype=torch.int64)
    position[eval_users] = torch.arange(len(eval_users))
    known_users = torch.cat([k.users for k in known])
    known_items = torch.cat([k.items for k in known])
    keep = position[known_users] >= 0
    seen_rows, by_row = torch.sort(position[known_users[keep]], stable=True)
    return HeldOut(
        name=name,
        num_items=target.num_items,
        users=target.users,
        items=target.items,
        ratings=target.ratings,
        eval_users=eval_users,
        row_of=row_of,
        seen_rows=seen_rows,
        seen_items=known_items[keep][by_row],
        history=last_items(known[0], history_length, target) if history_length else None,
    )


def last_items(train: Interactions, length: int, rows: Interactions | None = None) -> torch.Tensor:
    """The user's last ``length`` training items before each row, oldest first.

    Items are shifted by one and histories padded on the left with 0. For the training rows
    themselves (``rows=None``), "before" follows (timestamp, file order); for other rows, it
    means training rows with a timestamp up to theirs. Only training items are ever used.
    """
    target = train if rows is None else rows
    span = int(max(train.timestamps.max(), target.timestamps.max())) + 1
    key = train.users * span + train.timestamps
    order = torch.argsort(key, stable=True)
    sorted_key, sorted_items = key[order], train.items[order] + 1
    if rows is None:
        end = torch.empty_like(order)
        end[order] = torch.arange(len(order))
    else:
        end = torch.searchsorted(sorted_key, rows.users * span + rows.timestamps, right=True)
    user_start = torch.searchsorted(sorted_key, target.users * span)
    index = end.unsqueeze(1) - length + torch.arange(length)
    valid = index >= user_start.unsqueeze(1)
    return torch.where(valid, sorted_items[index.clamp(min=0)], 0)


def to_device(value, device: torch.device | str):
    """A tensor, or a dataclass of tensors (:class:`Interactions`, :class:`HeldOut`), on
    ``device``; the value itself when it is there already."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    moved = {
        f.name: getattr(value, f.name).to(device)
        for f in fields(value)
        if isinstance(getattr(value, f.name), torch.Tensor)
    }
    return replace(value, **moved)
