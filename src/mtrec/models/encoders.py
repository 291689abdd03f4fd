"""Encoders: how a user id becomes a vector before any sharing architecture reads it.

``id`` (the reference) reads the user's row of a table. ``history`` adds what the user's
training items say about them, as SVD++ does (Koren, "Factorization Meets the Neighborhood: a
Multifaceted Collaborative Filtering Model", KDD 2008): ``p_u + |N(u)|^(-1/2) sum_{j in N(u)}
y_j`` over the user's training items N(u), with ``y_j`` an item table of the encoder's own.
FISM (Kabbur et al., KDD 2013) is its second term alone. ``graph`` is LightGCN's (He et al.,
"LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation", SIGIR 2020):
users and items alike become the mean of their K-hop propagations over the training graph.
Only training rows ever enter a history or the graph.
"""

from __future__ import annotations

import torch
from torch import nn

from mtrec.data.interactions import Interactions, rated
from mtrec.errors import ConfigError

ENCODERS = ("id", "history", "graph")
MAX_CELLS = 100_000_000  # of a history or propagation matrix (400 MB of floats)


def check_encoder(encoder: object) -> None:
    if encoder not in ENCODERS:
        raise ConfigError(
            f"model.net.encoder={encoder} is not an encoder: use one of {', '.join(ENCODERS)}."
        )


def check_graph_layers(layers: object) -> None:
    if type(layers) is not int or layers < 1:
        raise ConfigError(
            f"model.net.graph_layers={layers} is not valid: use a positive integer, e.g. 3 "
            "(LightGCN's propagation steps)."
        )


def _check_size(encoder: str, shape: str, rows: int, columns: int) -> None:
    if rows * columns > MAX_CELLS:
        raise ConfigError(
            f"model.net.encoder={encoder} keeps a {shape} matrix: {rows} x {columns} would take "
            f"{rows * columns * 4 / 1e9:.1f} GB. It is meant for catalogues up to ML-1M's "
            "size; use model.net.encoder=id for this one."
        )


def _without_training_data(encoder: str) -> ConfigError:
    return ConfigError(
        f"model.net.encoder={encoder} reads each user's training items, and this net was "
        "built without training data: build it from a data module's data_info()."
    )


def history_weights(train: Interactions | None, num_users: int, num_items: int) -> torch.Tensor:
    """The (users, items) matrix with ``|N(u)|^(-1/2)`` where user u rated item j in ``train``
    and 0 elsewhere: a user's row times the item table is SVD++'s history term. Dense, so a
    batch's rows are one gather and one matrix product (compiled like the rest of the step)."""
    if train is None:
        raise _without_training_data("history")
    _check_size("history", "users x items", num_users, num_items)
    weights = rated(train, num_users, num_items)
    counts = weights.sum(1, keepdim=True)
    return weights / counts.clamp(min=1).sqrt()


class HistoryEncoder(nn.Module):
    """Adds SVD++'s history term to a user table's rows: ``rows + W[users] @ Y``, with ``W``
    from :func:`history_weights` and ``Y`` (items x width) started at zero, so training starts
    from the plain rows. Rows wider than ``width`` (a mixture's rows, whose last columns are
    its gates' logits) get the term on their first ``width`` columns only."""

    def __init__(self, weights: torch.Tensor, width: int):
        super().__init__()
        self.register_buffer("weights", weights, persistent=False)  # rebuilt from the data
        self.items = nn.Parameter(torch.zeros(weights.shape[1], width))

    def forward(self, rows: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        term = self.weights[users] @ self.items
        width = term.shape[-1]
        if rows.shape[-1] == width:
            return rows + term
        return torch.cat([rows[..., :width] + term, rows[..., width:]], -1)


def graph_propagation(
    train: Interactions | None, num_users: int, num_items: int, layers: int
) -> torch.Tensor:
    """LightGCN's propagation as one (users + items)-square matrix ``P = (1 / (K + 1))
    sum_{k=0..K} A^k``, with ``A = D^(-1/2) [[0, R], [R^T, 0]] D^(-1/2)`` the normalised
    adjacency of the training graph (users first, then items; ``R`` the user-item matrix of
    ``train``, a pair rated twice counted once). LightGCN's layers are linear, so its final
    vectors are ``P @ [U; Q]`` for tables ``U``, ``Q``: built once here, a batch's vectors are
    a gather of ``P``'s rows and one matrix product, compiled with the rest of the step."""
    if train is None:
        raise _without_training_data("graph")
    nodes = num_users + num_items
    _check_size("graph", "(users + items) x (users + items)", nodes, nodes)
    pairs = torch.unique(torch.stack([train.users.cpu(), train.items.cpu() + num_users]), dim=1)
    edges = torch.cat([pairs, pairs.flip(0)], dim=1)
    degrees = torch.bincount(edges[0], minlength=nodes).float()
    scale = degrees.clamp(min=1).rsqrt()
    adjacency = torch.sparse_coo_tensor(
        edges, scale[edges[0]] * scale[edges[1]], (nodes, nodes)
    ).coalesce()
    power = torch.eye(nodes)
    total = power.clone()
    for _ in range(layers):
        power = torch.sparse.mm(adjacency, power)
        total += power
    return total / (layers + 1)


class GraphEncoder(nn.Module):
    """LightGCN's vectors of a task's (user table, item table) pair: a node's row of
    :func:`graph_propagation` times both tables stacked. No parameters of its own: the
    gradient reaches every row of both tables the propagation mixes in."""

    def __init__(self, propagation: torch.Tensor, num_users: int):
        super().__init__()
        self.register_buffer("propagation", propagation, persistent=False)  # rebuilt from data
        self.num_users = num_users

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, side: str, ids: torch.Tensor
    ) -> torch.Tensor:
        """The vectors of ``ids`` (users or items, by ``side``) from the tables' weights."""
        tables = torch.cat([users, items])
        if side == "user":
            block = self.propagation[: self.num_users]
        else:
            block = self.propagation[self.num_users :]
        if ids.numel() >= len(block):  # e.g. the catalogue: every vector once, then gathered
            return (block @ tables)[ids]
        return block[ids] @ tables
