"""The item-to-item encoder: a user is the items it rated in training, read through an
item x item weight matrix with a zero diagonal (the EASE / SLIM family).

EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019) scores item i
for user u as ``x_u . B[:, i]``, ``x_u`` the user's binary row of the training matrix and
``B`` the closed-form minimiser of ``||X - X B||^2 + reg ||B||^2`` with ``diag(B) = 0``.
SLIM (Ning and Karypis, "SLIM: Sparse Linear Methods for Top-N Recommender Systems", ICDM
2011) learns the same form with sparse columns. Here ``B`` starts at EASE's closed form on
the training rows and is learned with the step, kept near it by an optional penalty, or
kept as it is (``learned=False``: each user's scores of every item are then computed once,
and a step reads them, as cheap as a table lookup).

Both kinds of head read it. A ranking head ranks by its own score plus ``scale`` times the
user's EASE score ``s(u, i) = sum_{j in N(u)} B[j, i]``, and trains on its own loss, as it
would alone: the two are an ensemble (training the factors on the sum made them undo part of
EASE's ranking, docs/studies.md). Every other head of one output adds ``s(u, i)`` times a
scale of its own, learned from 0 in its loss: for a rating, the implicit neighbourhood term
of Koren's integrated model (Koren, "Factorization Meets the Neighborhood", KDD 2008:
``sum_{j in N^k(i; u)} c_ij``) with ``c = B``, so the implicit feedback EASE's weights hold
reaches the rating head.

``neighbours`` keeps each item's strongest weights (by magnitude) and learns only those: a
step reads and updates that many weights per pair, not the catalogue's. The closed form it
starts from is items x items all the same, so catalogues past ML-1M's size are refused with
one message. Only training rows enter ``X`` and the closed form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mtrec.data.interactions import Interactions, rated
from mtrec.errors import ConfigError, shown

MAX_CELLS = 100_000_000  # of the training matrix X and of the closed form (400 MB of floats)


def ease_weights(x: torch.Tensor, reg: float) -> torch.Tensor:
    """EASE's closed form for the binary training matrix ``x`` (users x items,
    :func:`~mtrec.data.interactions.rated`): with ``P = (X^T X + reg I)^-1``, ``B = I - P /
    diag(P)`` (so ``diag(B) = 0``), computed in float64, returned in float32."""
    x = x.to(torch.float64)
    gram = x.T @ x
    gram.diagonal().add_(reg)
    p = torch.linalg.inv(gram)
    weights = -p / p.diagonal()
    weights.diagonal().zero_()
    return weights.to(torch.float32)


# each number setting: its default, and what it may be (whether 0 is allowed, what to use)
NUMBERS = {
    "item_to_item_reg": (300.0, False, "a number > 0, e.g. 300 (EASE's regularisation on ML-100K)"),
    "item_to_item_scale": (30.0, True, "a number >= 0 (the EASE score's weight, e.g. 30)"),
    "item_to_item_penalty": (0.0, True, "a number >= 0 (0: no pull toward the closed form)"),
}


def check_item_to_item(settings: Mapping) -> None:
    """The rules of ``model.net.item_to_item*``: one clear error each."""
    get = settings.get
    for name, use in (
        ("item_to_item", "true or false"),
        ("item_to_item_learned", "true (learned with the step) or false (the closed form kept)"),
    ):
        value = get(name, name == "item_to_item_learned")
        if not isinstance(value, bool):
            raise ConfigError(f"model.net.{name}={shown(value)} is not valid: use {use}.")
    for name, (default, zero_ok, use) in NUMBERS.items():
        value = get(name, default)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or value < 0 or (value == 0 and not zero_ok):
            raise ConfigError(f"model.net.{name}={shown(value)} is not valid: use {use}.")
    neighbours = get("item_to_item_neighbours", None)
    if neighbours is not None and (type(neighbours) is not int or neighbours < 1):
        raise ConfigError(
            f"model.net.item_to_item_neighbours={shown(neighbours)} is not valid: use a "
            "positive integer (each item's strongest weights kept), or null (all of them)."
        )


def _check_size(num_users: int, num_items: int) -> None:
    cells = max(num_users * num_items, num_items * num_items)
    if cells > MAX_CELLS:
        raise ConfigError(
            f"model.net.item_to_item=true starts from EASE's closed form and keeps the "
            f"training matrix: {num_users} users x {num_items} items would take "
            f"{cells * 4 / 1e9:.1f} GB. It fits catalogues up to ML-1M's size; use "
            "model.net.item_to_item=false for this one."
        )


class ItemToItem(nn.Module):
    """The item-to-item term of every one-output head (see the module's docstring).

    ``sources[i]``: the items whose weights toward item ``i`` are kept (all others but ``i``
    itself, or the ``neighbours`` strongest), ``weights[i]`` those weights, started at EASE's
    closed form (``reg``); ``penalty``: the strength of ``||weights - closed form||^2`` in
    the loss; ``scales``: the learned scale of each task in ``tasks`` (the heads whose loss
    reads the term), started at 0.
    ``learned=False``: the closed form is a constant and every user's scores ``X B`` are
    kept (users x items), so a pair's term is one gather."""

    def __init__(
        self,
        train: Interactions | None,
        num_users: int,
        num_items: int,
        tasks: Sequence[str],
        reg: float = 300.0,
        neighbours: int | None = None,
        penalty: float = 0.0,
        learned: bool = True,
    ):
        super().__init__()
        if train is None:
            raise ConfigError(
                "model.net.item_to_item=true reads each user's training items, and this net "
                "was built without training data: build it from a data module's data_info()."
            )
        _check_size(num_users, num_items)
        history = rated(train, num_users, num_items)
        self.register_buffer("history", history, persistent=False)  # rebuilt from the data
        closed = ease_weights(history, reg)
        kept = num_items - 1 if neighbours is None else min(neighbours, num_items - 1)
        strength = closed.abs()
        strength.diagonal().fill_(-1.0)  # an item never predicts itself
        sources = strength.topk(kept, dim=0).indices.T.contiguous()  # (items, kept)
        start = closed.T.gather(1, sources)  # weights[i, m] = B[sources[i, m], i]
        # learned weights are saved beside the sources they pair with; else both are rebuilt
        self.register_buffer("sources", sources, persistent=learned)
        self.learned = learned
        if learned:
            self.weights = nn.Parameter(start.clone())
            self.register_buffer("closed_form", start, persistent=False)  # rebuilt from data
        else:  # rebuilt from the data
            self.register_buffer("weights", start, persistent=False)
            self.register_buffer("scores", history @ self.matrix(), persistent=False)
        self.penalty_strength = float(penalty) if learned else 0.0
        self.scales = nn.ParameterDict({task: nn.Parameter(torch.tensor(0.0)) for task in tasks})

    def forward(self, task: str, user_ids: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        """``task``'s term for broadcastable id tensors: its scale times ``s(u, i)``."""
        return self.scales[task] * self.pairs(user_ids, item_ids)

    def pairs(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        """``s(u, i)`` for broadcastable id tensors."""
        if not self.learned:
            return self.scores[user_ids, item_ids]
        sources = self.sources[item_ids]  # (..., kept)
        rated = self.history[user_ids.unsqueeze(-1), sources]
        return (rated * self.weights[item_ids]).sum(-1)

    def matrix(self) -> torch.Tensor:
        """The dense item x item matrix ``B`` (zero where no weight is kept)."""
        dense = torch.zeros(
            self.weights.shape[0], self.weights.shape[0], device=self.weights.device
        )
        targets = torch.arange(len(self.sources), device=self.sources.device)
        targets = targets.unsqueeze(1).expand_as(self.sources)
        return dense.index_put((self.sources, targets), self.weights)

    def catalogue(self, scale: float = 1.0):
        """``scale`` times ``s(u, i)`` of every item for a chunk of users, ``B`` built once."""
        if not self.learned:
            return lambda user_ids: self.scores[user_ids] * scale
        matrix = self.matrix() * scale
        return lambda user_ids: self.history[user_ids] @ matrix

    def penalty(self) -> torch.Tensor:
        """``penalty * ||weights - closed form||^2``: the pull toward EASE's solution."""
        return self.penalty_strength * (self.weights - self.closed_form).pow(2).sum()
