"""A sequence model: the rating of the next item from the user's last k rated items."""

from __future__ import annotations

import torch
from torch import nn

from mtrec.data.info import DataInfo
from mtrec.models.embeddings import ScaledEmbedding, embedding_size
from mtrec.models.protocol import Recommender


class SequenceLSTM(Recommender):
    """LSTM over the user's last k rated items (time order, 0 = padding), then the next item.

    ``history`` holds item indices shifted by one so that 0 can pad short histories; the
    final hidden state and the target item's embedding feed a linear layer that gives the
    rating.
    """

    head_kinds = ("score",)  # its one head, for any task asking for a score
    needs_history = True

    def __init__(self, data: DataInfo, embedding_dim: int | str = 32, hidden_size: int = 64):
        super().__init__()
        dim = embedding_size(embedding_dim, data.num_items)
        self.item_embeddings = ScaledEmbedding(data.num_items + 1, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, hidden_size, batch_first=True)
        self.output = nn.Sequential(
            nn.Linear(hidden_size + dim, hidden_size), nn.ReLU(), nn.Linear(hidden_size, 1)
        )

    def head(self, task: str):
        return self.ratings

    def ratings(self, users, items, rows=None, history=None) -> torch.Tensor:
        _, (hidden, _) = self.lstm(self.item_embeddings(history))
        target = self.item_embeddings(items + 1)
        # several items per history, e.g. (B, K) sampled negatives: one summary, broadcast
        summary = hidden[-1].reshape(len(history), *[1] * (items.dim() - 1), -1)
        summary = summary.expand(*target.shape[:-1], -1)
        return self.output(torch.cat([summary, target], dim=-1)).squeeze(-1)

    def item_vectors(self) -> torch.Tensor:
        return self.item_embeddings.weight[1:]
