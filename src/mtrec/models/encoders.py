"""Encoders: how a user id becomes a vector before any sharing architecture reads it.

``id`` (the reference) reads the user's row of a table. ``history`` adds what the user's
training items say about them, as SVD++ does (Koren, "Factorization Meets the Neighborhood: a
Multifaceted Collaborative Filtering Model", KDD 2008): ``p_u + |N(u)|^(-1/2) sum_{j in N(u)}
y_j`` over the user's training items N(u), with ``y_j`` an item table of the encoder's own.
FISM (Kabbur et al., KDD 2013) is its second term alone. Only training rows ever enter N(u).
"""

from __future__ import annotations

import torch
from torch import nn

from mtrec.data.interactions import Interactions
from mtrec.errors import ConfigError

ENCODERS = ("id", "history")
MAX_HISTORY_CELLS = 100_000_000  # users x items of the history matrix (400 MB of floats)


def check_encoder(encoder: object) -> None:
    if encoder not in ENCODERS:
        raise ConfigError(
            f"model.net.encoder={encoder} is not an encoder: use one of {', '.join(ENCODERS)}."
        )


def history_weights(train: Interactions | None, num_users: int, num_items: int) -> torch.Tensor:
    """The (users, items) matrix with ``|N(u)|^(-1/2)`` where user u rated item j in ``train``
    and 0 elsewhere: a user's row times the item table is SVD++'s history term. Dense, so a
    batch's rows are one gather and one matrix product (compiled like the rest of the step)."""
    if train is None:
        raise ConfigError(
            "model.net.encoder=history reads each user's training items, and this net was "
            "built without training data: build it from a data module's data_info()."
        )
    if num_users * num_items > MAX_HISTORY_CELLS:
        raise ConfigError(
            f"model.net.encoder=history keeps a users x items matrix: {num_users} x {num_items} "
            f"would take {num_users * num_items * 4 / 1e9:.1f} GB. It is meant for catalogues up "
            "to ML-1M's size; use model.net.encoder=id for this one."
        )
    weights = torch.zeros(num_users, num_items)
    weights[train.users.cpu(), train.items.cpu()] = 1.0  # a pair rated twice counts once
    counts = weights.sum(1, keepdim=True)
    return weights / counts.clamp(min=1).sqrt()


class HistoryEncoder(nn.Module):
    """Adds SVD++'s history term to a user table's rows: ``rows + W[users] @ Y``, with ``W``
    from :func:`history_weights` and ``Y`` (items x width) started at zero, so training starts
    from the plain rows."""

    def __init__(self, weights: torch.Tensor, width: int):
        super().__init__()
        self.register_buffer("weights", weights, persistent=False)  # rebuilt from the data
        self.items = nn.Parameter(torch.zeros(weights.shape[1], width))

    def forward(self, rows: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        return rows + self.weights[users] @ self.items
