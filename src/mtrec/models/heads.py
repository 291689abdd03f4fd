"""Heads: what a task reads of its vectors, by the kind of head it asks for
(:class:`~mtrec.models.protocol.HeadKind`). A head gets the task's user and item vectors
(from the net's mixer) and their ids, and gives one output per pair."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtrec.models.embeddings import ZeroEmbedding
from mtrec.models.protocol import HeadKind


class RankingHead(nn.Module):
    """Matrix factorization's score ``u . q + b_j``, with a per-item bias ``b_j`` (no user
    bias: it cannot change a user's ranking). ``cosine``: ``cos(u, q) / tau + b``, both
    vectors L2-normalised so no user or item wins by its norm alone, and a learned
    temperature ``tau`` (started at ``temperature``)."""

    def __init__(self, num_items: int, cosine: bool = False, temperature: float = 0.1):
        super().__init__()
        self.item_biases = ZeroEmbedding(num_items, 1)
        self.cosine = cosine
        if cosine:  # log(1 / tau), learned
            self.log_inverse_temperature = nn.Parameter(torch.tensor(-math.log(temperature)))

    def items(self, vectors: torch.Tensor) -> torch.Tensor:
        """Item vectors as the score reads them: unit length under ``cosine``."""
        return F.normalize(vectors, dim=-1) if self.cosine else vectors

    def users(self, vectors: torch.Tensor) -> torch.Tensor:
        """The user side, which also carries the cosine score's 1 / tau."""
        return self.items(vectors) * self.log_inverse_temperature.exp() if self.cosine else vectors

    def forward(self, users, items, user_ids, item_ids) -> torch.Tensor:
        users, items = self.users(users), self.items(items)
        if user_ids.dim() == 2 and user_ids.shape[1] == 1 and item_ids.dim() == 1:
            # every user against the same items (the catalogue): one matrix product
            return torch.addmm(self.item_biases(item_ids).T, users.squeeze(1), items.T)
        return (users * items).sum(-1) + self.item_biases(item_ids).squeeze(-1)

    def all_items(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of every item (``items``: every item's vector, as :meth:`items` gives)."""
        # one fused multiply-add: no second users x items buffer for the bias
        return torch.addmm(self.item_biases.weight.T, self.users(users), items.T)

    def id_tables(self) -> dict[str, tuple[nn.Embedding, ...]]:
        """Its tables read at the batch's ids, by side."""
        return {"item": (self.item_biases,)}


class MLPHead(nn.Module):
    """An MLP over ``[u, q, u * q]``: ``Linear -> ReLU (-> Dropout) -> ... ->
    Linear(., outputs)``, the last layer's outputs being the head's (one: squeezed).
    ``biases`` (a rating): plus ``mu + b_u + b_i``, ``mu`` the training mean, so the MLP
    models only the interaction of user and item."""

    def __init__(
        self,
        layer_sizes: Sequence[int],
        outputs: int = 1,
        dropout: float = 0.0,
        biases: tuple[int, int, torch.Tensor] | None = None,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        for width_in, width_out in zip(layer_sizes[:-1], layer_sizes[1:], strict=False):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
            layers += [nn.Dropout(dropout)] if dropout else []
        layers.append(nn.Linear(layer_sizes[-1], outputs))
        self.mlp = nn.Sequential(*layers)
        self.outputs = outputs
        self.biases = biases is not None
        if biases is not None:
            num_users, num_items, mean = biases
            self.register_buffer("mean_rating", mean)
            self.user_biases = ZeroEmbedding(num_users, 1)
            self.item_biases = ZeroEmbedding(num_items, 1)

    def forward(self, users, items, user_ids, item_ids) -> torch.Tensor:
        out = self.mlp(torch.cat([users, items, users * items], dim=-1))
        out = out.squeeze(-1) if self.outputs == 1 else out
        if self.biases:
            biases = self.user_biases(user_ids) + self.item_biases(item_ids)
            out = out + self.mean_rating + biases.squeeze(-1)
        return out

    def id_tables(self) -> dict[str, tuple[nn.Embedding, ...]]:
        if not self.biases:
            return {}
        return {"user": (self.user_biases,), "item": (self.item_biases,)}


class BiasedDotHead(nn.Module):
    """The classic rating model, biased matrix factorization (Koren, Bell and Volinsky,
    "Matrix Factorization Techniques for Recommender Systems", IEEE Computer 2009):
    ``r = mu + b_u + b_i + u . q``, ``mu`` the training mean rating, the biases the head's own
    (started at zero). Under ``model.net.encoder=history`` the user vector carries SVD++'s
    implicit term (Koren, KDD 2008), so this is SVD++'s rating model."""

    def __init__(self, num_users: int, num_items: int, mean: torch.Tensor):
        super().__init__()
        self.register_buffer("mean_rating", mean)
        self.user_biases = ZeroEmbedding(num_users, 1)
        self.item_biases = ZeroEmbedding(num_items, 1)

    def forward(self, users, items, user_ids, item_ids) -> torch.Tensor:
        biases = self.user_biases(user_ids) + self.item_biases(item_ids)
        return (users * items).sum(-1) + self.mean_rating + biases.squeeze(-1)

    def id_tables(self) -> dict[str, tuple[nn.Embedding, ...]]:
        return {"user": (self.user_biases,), "item": (self.item_biases,)}


#: how a score task's head is built (``model.net.score_head``)
SCORE_HEADS = ("mlp", "dot")


def build_head(
    kind: HeadKind,
    num_users: int,
    num_items: int,
    layer_sizes: Sequence[int],
    dropout: float = 0.0,
    cosine: bool = False,
    temperature: float = 0.1,
    score_biases: torch.Tensor | None = None,
    score_head: str = "mlp",
) -> nn.Module:
    """The head of ``kind``: a ranking head, a score head (``score_head``: an MLP, or
    ``dot``, biased matrix factorization), or an MLP with ``kind.outputs`` outputs
    (``score_biases``: the training mean rating, for a score head with biases)."""
    if kind.name == "ranking":
        return RankingHead(num_items, cosine, temperature)
    if kind.name == "score" and score_head == "dot":
        return BiasedDotHead(num_users, num_items, score_biases)
    biases = None
    if kind.name == "score" and score_biases is not None:
        biases = (num_users, num_items, score_biases)
    return MLPHead(layer_sizes, kind.outputs, dropout, biases)
