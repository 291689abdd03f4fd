"""MultiTaskNet: a factorization head for interactions and an MLP head for ratings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtrec.data.info import DataInfo
from mtrec.errors import ConfigError, shown
from mtrec.models.embeddings import ScaledEmbedding, ZeroEmbedding, embedding_size
from mtrec.shared import TableRows


class MultiTaskNet(nn.Module):
    """Two heads over user and item embeddings.

    - interaction head (matrix factorization): ``p_ij = u_i . q_j + b_j``
    - rating head (MLP): ``[u_i, q_j, u_i * q_j] -> Linear -> ReLU -> ... -> Linear(., 1)``

    With ``embedding_sharing=true`` both heads read one (U, Q) pair; with ``false`` each head
    has its own pair; with ``items`` they share the item table and each has its own user
    table. The item bias always belongs to the interaction head. There is no user bias in it:
    it cannot change a user's ranking. With ``embedding_dim="auto"`` the size follows the rule
    of thumb for the larger vocabulary and the first layer size follows it (3 * size).

    ``rating_biases`` adds ``mu + b_u + b_i`` (``mu`` the training mean rating, the biases
    the rating head's own) to the MLP's output, so the MLP models only the interaction of
    user and item. ``dropout`` drops MLP activations during training.
    """

    heads = ("interaction", "rating")

    def __init__(
        self,
        data: DataInfo,
        embedding_dim: int | str = 32,
        layer_sizes: tuple[int, ...] = (96, 64),
        embedding_sharing: bool | str = True,
        rating_biases: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.check_settings(embedding_dim, layer_sizes, embedding_sharing)
        num_users, num_items = data.num_users, data.num_items
        if embedding_dim == "auto":
            embedding_dim = embedding_size("auto", max(num_users, num_items))
            layer_sizes = (3 * embedding_dim, *layer_sizes[1:])
        self.num_users, self.num_items = num_users, num_items
        self.embedding_sharing = embedding_sharing
        self.user_embeddings = ScaledEmbedding(num_users, embedding_dim)
        self.item_embeddings = ScaledEmbedding(num_items, embedding_dim)
        self.item_biases = ZeroEmbedding(num_items, 1)
        self.rating_user_embeddings = (
            self.user_embeddings
            if embedding_sharing is True
            else ScaledEmbedding(num_users, embedding_dim)
        )
        self.rating_item_embeddings = (
            self.item_embeddings if embedding_sharing else ScaledEmbedding(num_items, embedding_dim)
        )
        self.rating_biases = rating_biases
        if rating_biases:
            mean = data.train.ratings.mean() if data.train is not None else torch.tensor(0.0)
            self.register_buffer("mean_rating", mean)
            self.rating_user_biases = ZeroEmbedding(num_users, 1)
            self.rating_item_biases = ZeroEmbedding(num_items, 1)
        layers: list[nn.Module] = []
        for width_in, width_out in zip(layer_sizes[:-1], layer_sizes[1:], strict=False):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
            layers += [nn.Dropout(dropout)] if dropout else []
        layers.append(nn.Linear(layer_sizes[-1], 1))
        self.mlp = nn.Sequential(*layers)

    @staticmethod
    def check_settings(embedding_dim, layer_sizes, embedding_sharing) -> None:
        """The rules of these settings, checked once: when the net is built, and by config
        validation before any work (it calls this with the config's values)."""
        if not (isinstance(embedding_sharing, bool) or embedding_sharing == "items"):
            raise ConfigError(
                f"model.embedding_sharing={shown(embedding_sharing)} is not valid: "
                "use true, false or items."
            )
        if embedding_dim == "auto":  # the net sizes the MLP's input itself
            return
        dim = embedding_size(embedding_dim, 1)
        sizes = [] if isinstance(layer_sizes, str) else layer_sizes
        sizes = list(sizes) if isinstance(sizes, Sequence) else []
        if not sizes or not all(type(s) is int and s > 0 for s in sizes):
            raise ConfigError(
                f"model.layer_sizes={shown(layer_sizes)} is not valid: use a list of positive "
                "integers, e.g. [96,64]."
            )
        if sizes[0] != 3 * dim:
            fixed = shown([3 * dim, *sizes[1:]])
            raise ConfigError(
                f"model.layer_sizes={shown(sizes)} does not fit model.embedding_dim={dim}: its "
                f"first entry must be 3 * model.embedding_dim = {3 * dim} (the MLP input is "
                f"[u, q, u * q]). Use model.layer_sizes={fixed}, or model.embedding_dim=auto, "
                "which sizes it itself."
            )

    def interaction_logits(
        self, user_ids: torch.Tensor, item_ids: torch.Tensor, rows: Rows | None = None
    ) -> torch.Tensor:
        """Logits ``u . q + b`` for broadcastable id tensors, e.g. (B, 1) users x (B, K) items.

        ``rows`` may hold the shared rows of these ids (``"user"``, ``"item"``, as
        :meth:`shared` gathers them), read instead of the tables: per-task gradients land there.
        """
        users = _row(rows, "user", self.user_embeddings, user_ids)
        items = _row(rows, "item", self.item_embeddings, item_ids)
        return (users * items).sum(-1) + self.item_biases(item_ids).squeeze(-1)

    def ratings(
        self, user_ids: torch.Tensor, item_ids: torch.Tensor, rows: Rows | None = None
    ) -> torch.Tensor:
        users = _row(rows, "user", self.rating_user_embeddings, user_ids)
        items = _row(rows, "item", self.rating_item_embeddings, item_ids)
        rating = self.mlp(torch.cat([users, items, users * items], dim=-1)).squeeze(-1)
        if self.rating_biases:
            biases = self.rating_user_biases(user_ids) + self.rating_item_biases(item_ids)
            rating = rating + self.mean_rating + biases.squeeze(-1)
        return rating

    def embedding_norms(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        """Squared norms of the embedding and bias rows each (user, item) pair uses."""
        tables = [(self.user_embeddings, user_ids), (self.item_embeddings, item_ids)]
        tables += [(self.item_biases, item_ids)]
        if self.rating_user_embeddings is not self.user_embeddings:
            tables.append((self.rating_user_embeddings, user_ids))
        if self.rating_item_embeddings is not self.item_embeddings:
            tables.append((self.rating_item_embeddings, item_ids))
        if self.rating_biases:
            tables += [(self.rating_user_biases, user_ids), (self.rating_item_biases, item_ids)]
        return sum(table(ids).pow(2).sum(-1) for table, ids in tables)

    def shared(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> dict[str, TableRows]:
        """What the two tasks share for a batch: the embedding rows both heads read.

        Shared embeddings: the user and the item rows; ``items``: the item rows; separate:
        nothing. Per-task gradients taken with respect to these cost what the batch costs,
        never the size of the catalogue.
        """
        shared = {}
        if self.rating_user_embeddings is self.user_embeddings:
            shared["user"] = TableRows(self.user_embeddings, user_ids)
        if self.rating_item_embeddings is self.item_embeddings:
            shared["item"] = TableRows(self.item_embeddings, item_ids)
        return shared

    def forward(
        self, user_ids: torch.Tensor, item_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (interaction logits, predicted ratings), each of shape ``user_ids.shape``."""
        return self.interaction_logits(user_ids, item_ids), self.ratings(user_ids, item_ids)

    def score_all_items(self, user_ids: torch.Tensor) -> torch.Tensor:
        """Interaction logits of every item for each user: shape (len(user_ids), num_items)."""
        users = self.user_embeddings(user_ids)
        # one fused multiply-add: no second users x items buffer for the bias
        return torch.addmm(self.item_biases.weight.T, users, self.item_embeddings.weight.T)

    def item_vectors(self) -> torch.Tensor:
        return self.item_embeddings.weight


Rows = dict[str, torch.Tensor]


def _row(rows: Rows | None, key: str, table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """The given shared rows, else the table's rows of ``ids``."""
    return rows[key] if rows is not None and key in rows else table(ids)
