"""Rating models that feed concatenated embeddings through a small feed-forward net."""

from __future__ import annotations

import torch
from torch import nn

from mtrec.data.info import DataInfo
from mtrec.models.embeddings import GenreBag, ScaledEmbedding, embedding_size
from mtrec.models.protocol import Recommender


class DenseNet(Recommender):
    """``[u, q] -> Linear -> ReLU -> Linear(., 1)``: the rating from concatenated embeddings."""

    head_kinds = ("score",)  # its one head, for any task asking for a score

    def __init__(self, data: DataInfo, embedding_dim: int | str = 32, hidden_size: int = 64):
        super().__init__()
        num_users, num_items = data.num_users, data.num_items
        self.user_embeddings = ScaledEmbedding(num_users, embedding_size(embedding_dim, num_users))
        self.item_embeddings = ScaledEmbedding(num_items, embedding_size(embedding_dim, num_items))
        width = self.user_embeddings.embedding_dim + self.item_embeddings.embedding_dim
        self.mlp = nn.Sequential(
            nn.Linear(width + self.extra_width(), hidden_size), nn.ReLU(), nn.Linear(hidden_size, 1)
        )

    def extra_width(self) -> int:
        return 0

    def features(self, users: torch.Tensor, items: torch.Tensor) -> list[torch.Tensor]:
        return [self.user_embeddings(users), self.item_embeddings(items)]

    def head(self, task: str):
        return self.ratings

    def ratings(self, users, items, rows=None, history=None) -> torch.Tensor:
        users, items = torch.broadcast_tensors(users, items)
        return self.mlp(torch.cat(self.features(users, items), dim=-1)).squeeze(-1)

    def item_vectors(self) -> torch.Tensor:
        return self.item_embeddings.weight


class GenreDenseNet(DenseNet):
    """The dense net with the mean embedding of the item's genres concatenated to its input."""

    def __init__(self, data: DataInfo, embedding_dim=32, hidden_size=64, genre_dim: int = 8):
        self._genre_dim = genre_dim
        super().__init__(data, embedding_dim, hidden_size)
        self.genres = GenreBag(data.require("item_genres", type(self).__name__), genre_dim)

    def extra_width(self) -> int:
        return self._genre_dim

    def features(self, users: torch.Tensor, items: torch.Tensor) -> list[torch.Tensor]:
        return [*super().features(users, items), self.genres(items)]
