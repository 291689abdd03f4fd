"""What a net may need to know about the data when it is built, handed over explicitly."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtrec.data.interactions import Interactions


@dataclass(frozen=True)
class DataInfo:
    """Counts, item genres and the training interactions of a data module.

    Every net receives one as its first argument and takes what it needs: the counts size its
    tables, genre models read ``item_genres``, closed-form models (popularity, EASE) and
    rating biases read ``train``. Validation and test rows are never in it.
    """

    num_users: int
    num_items: int
    item_genres: torch.Tensor | None = None  # (num_items, max genres), ids 1..G, 0 pads
    train: Interactions | None = None

    def require(self, field: str, model: str) -> object:
        """The field a net cannot do without, or one clear error naming it."""
        value = getattr(self, field)
        if value is None:
            raise ValueError(f"{model} needs data.{field}, which this data module does not give.")
        return value
