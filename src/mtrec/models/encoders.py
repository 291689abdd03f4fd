"""Encoders: how a user id becomes a vector before any sharing architecture reads it.

``id`` (the reference) reads the user's row of a table. ``history`` adds what the user's
training items say about them, as SVD++ does (Koren, "Factorization Meets the Neighborhood: a
Multifaceted Collaborative Filtering Model", KDD 2008): ``p_u + |N(u)|^(-1/2) sum_{j in N(u)}
y_j`` over the user's training items N(u), with ``y_j`` an item table of the encoder's own.
FISM (Kabbur et al., KDD 2013) is its second term alone. ``graph`` is LightGCN's (He et al.,
"LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation", SIGIR 2020):
users and items alike become the mean of their K-hop propagations over the training graph.
Only training rows ever enter a history or the graph.

Both are sparse, as the interactions are: a history is a bag of the user's training items
(one weighted sum per user, :class:`torch.nn.EmbeddingBag`), the graph a sparse normalised
adjacency whose products cost its nonzeros, never users x items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mtrec.data.interactions import Interactions
from mtrec.errors import ConfigError

ENCODERS = ("id", "history", "graph")
#: the most cells of a dense history (users x items) or propagation ((users + items)^2) kept:
#: up to ML-1M's size a dense row is one gather and one matrix product, compiled with the
#: step, and cheaper than the sparse forms there (docs/performance.md); past it, sparse only
DENSE_CELLS = 100_000_000


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


def _without_training_data(encoder: str) -> ConfigError:
    return ConfigError(
        f"model.net.encoder={encoder} reads each user's training items, and this net was "
        "built without training data: build it from a data module's data_info()."
    )


def _distinct_pairs(train: Interactions) -> tuple[torch.Tensor, torch.Tensor]:
    """The training (user, item) pairs, a pair rated twice once, sorted by user then item."""
    pairs = torch.unique(torch.stack([train.users.cpu(), train.items.cpu()]), dim=1)
    return pairs[0], pairs[1]


@dataclass(frozen=True)
class SparseRows:
    """A sparse matrix by rows (a CSR matrix's arrays): row r's nonzeros are in columns
    ``members[starts[r] : starts[r] + counts[r]]``, with values ``weights[...]`` there.
    ``columns``: how many columns it has."""

    starts: torch.Tensor
    counts: torch.Tensor
    members: torch.Tensor
    weights: torch.Tensor
    columns: int

    @classmethod
    def of(cls, rows: torch.Tensor, members: torch.Tensor, weights: torch.Tensor, shape):
        """From coordinates sorted by row."""
        counts = torch.bincount(rows, minlength=shape[0])
        return cls(torch.cumsum(counts, 0) - counts, counts, members, weights, shape[1])

    def csr(self) -> torch.Tensor:
        crow = torch.cat([self.starts, (self.starts[-1:] + self.counts[-1:])])
        shape = (len(self.counts), self.columns)
        return torch.sparse_csr_tensor(
            crow, self.members, self.weights, shape, check_invariants=False
        )

    def dense(self) -> torch.Tensor:
        return self.csr().to_dense()

    def buffers(self, module: nn.Module, prefix: str) -> None:
        """Held by ``module`` as buffers ``<prefix>_starts``... (rebuilt from the data, never
        saved), so they follow it to its device."""
        for name in ("starts", "counts", "members", "weights"):
            module.register_buffer(f"{prefix}_{name}", getattr(self, name), persistent=False)


def bags(rows: tuple[torch.Tensor, ...], ids: torch.Tensor, bag) -> torch.Tensor:
    """Rows ``ids`` of a sparse matrix (``rows``: its starts, counts, members and weights)
    times a table: each id's weighted sum of the table's rows at its members, one bag per
    id (``bag``: an :class:`torch.nn.EmbeddingBag` over the table). Shape ``(*ids.shape,
    columns)``; the bags' sizes depend on the data, and the compiled step traces them as
    such."""
    starts, counts, members, weights = rows
    flat = ids.reshape(-1)
    sizes = counts[flat]
    offsets = torch.cumsum(sizes, 0) - sizes
    owner = torch.repeat_interleave(sizes)  # each entry's position among the ids
    entry = starts[flat][owner] + torch.arange(owner.shape[0], device=flat.device)
    entry = entry - offsets[owner]
    summed = bag(members[entry], offsets=offsets, per_sample_weights=weights[entry])
    return summed.reshape(*ids.shape, -1)


def histories(train: Interactions | None, num_users: int, num_items: int) -> SparseRows:
    """Each user's distinct training items, each weighted ``|N(u)|^(-1/2)`` (SVD++'s)."""
    if train is None:
        raise _without_training_data("history")
    users, items = _distinct_pairs(train)
    counts = torch.bincount(users, minlength=num_users)
    return SparseRows.of(users, items, counts[users].float().rsqrt(), (num_users, num_items))


class HistoryEncoder(nn.Module):
    """Adds SVD++'s history term to a user table's rows: ``rows + sum_j w_uj y_j`` over the
    user's training items (:func:`histories`), one bag per user (``items``, an
    :class:`torch.nn.EmbeddingBag` of ``width`` columns started at zero, so training starts
    from the plain rows; under sparse rows only the rows a batch's histories read get a
    gradient and move). Rows wider than ``width`` (a mixture's rows, whose last columns are
    its gates' logits) get the term on their first ``width`` columns only."""

    def __init__(self, found: SparseRows, width: int):
        super().__init__()
        found.buffers(self, "history")
        self.items = nn.EmbeddingBag(
            found.columns, width, mode="sum", _weight=torch.zeros(found.columns, width)
        )
        # where it fits, the same weights as a dense users x items matrix (rebuilt from data)
        fits = len(found.counts) * found.columns <= DENSE_CELLS
        self.register_buffer("dense", found.dense() if fits else None, persistent=False)

    def _load_from_state_dict(self, state, prefix, *args, **kwargs):
        """Checkpoints from before the bags name the item factors ``items``."""
        if prefix + "items" in state:
            state[prefix + "items.weight"] = state.pop(prefix + "items")
        super()._load_from_state_dict(state, prefix, *args, **kwargs)

    def term(self, users: torch.Tensor) -> torch.Tensor:
        """The history term of each of ``users`` (any shape): ``(*users.shape, width)``. A
        dense row and a matrix product where the matrix fits and the item rows move whole;
        bags otherwise (under sparse rows: only the bags' rows get a gradient)."""
        if self.dense is not None and not self.items.sparse:
            return self.dense[users] @ self.items.weight
        found = (
            self.history_starts,
            self.history_counts,
            self.history_members,
            self.history_weights,
        )
        return bags(found, users, self.items)

    def forward(self, rows: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        term = self.term(users)
        width = term.shape[-1]
        if rows.shape[-1] == width:
            return rows + term
        return torch.cat([rows[..., :width] + term, rows[..., width:]], -1)


def normalised_adjacency(train: Interactions | None, num_users: int, num_items: int) -> SparseRows:
    """LightGCN's ``A = D^(-1/2) [[0, R], [R^T, 0]] D^(-1/2)``: the training graph's
    normalised adjacency over users then items (``R`` the user-item matrix of ``train``, a
    pair rated twice counted once), by rows. Symmetric."""
    if train is None:
        raise _without_training_data("graph")
    users, items = _distinct_pairs(train)
    items = items + num_users
    nodes = num_users + num_items
    rows, columns = torch.cat([users, items]), torch.cat([items, users])
    scale = torch.bincount(rows, minlength=nodes).float().clamp(min=1).rsqrt()
    order = torch.argsort(rows * nodes + columns)  # by row, then column
    rows, columns = rows[order], columns[order]
    return SparseRows.of(rows, columns, scale[rows] * scale[columns], (nodes, nodes))


class _Propagate(torch.autograd.Function):
    """``P x = (1 / (K + 1)) sum_{k=0..K} A^k x`` for a symmetric sparse ``A`` (its CSR
    arrays): K sparse products forward, and K backward (``P^T g = P g``). Written out because
    autograd's own backward of a sparse product builds ``A``'s transpose at every call (about
    8 x slower on the ML-1M graph). It keeps no tensor that a backward pass frees: a
    propagation read by several backward passes, as per-task gradients do, stays valid."""

    @staticmethod
    def forward(crow, columns, values, x, layers):
        adjacency = torch.sparse_csr_tensor(
            crow, columns, values, (len(x), len(x)), check_invariants=False
        )
        total = power = x
        for _ in range(layers):
            power = adjacency @ power
            total = total + power
        return total / (layers + 1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.adjacency, ctx.layers = inputs[:3], inputs[4]  # constants of the data

    @staticmethod
    def backward(ctx, grad):
        return (
            None,
            None,
            None,
            _Propagate.apply(*ctx.adjacency, grad.contiguous(), ctx.layers),
            None,
        )


class GraphEncoder(nn.Module):
    """LightGCN's vectors of a task's (user table, item table) pair ``E``: every node's
    final vector ``(1 / (K + 1)) sum_{k=0..K} A^k E`` by K sparse products of the tables
    (:func:`propagate`; as many backward), then the ids' rows gathered. No parameters of its
    own.

    The propagation of a pair of tables is kept and read by every lookup until either table
    changes (its version counter) or a backward pass goes through it: the six or so lookups
    of one step (positives, negatives, every task reading those tables) and the chunks of one
    evaluation share one propagation. Only the net's own tables are kept, never another
    call's tensors."""

    def __init__(self, adjacency: SparseRows, num_users: int, layers: int):
        super().__init__()
        adjacency.buffers(self, "graph")
        self.num_users, self.layers = num_users, layers
        # per pair of tables (by identity): the tables, their versions, grad mode, the output
        self._kept: dict[tuple[int, int], tuple] = {}
        # where it fits, the propagation as one dense matrix P (rebuilt from the data): a
        # lookup is a gather of P's rows and one product, compiled with the step
        nodes = adjacency.columns
        dense = None
        if nodes * nodes <= DENSE_CELLS:
            dense = propagate(adjacency, torch.eye(nodes), layers)
        self.register_buffer("dense", dense, persistent=False)

    @property
    def sparse(self) -> bool:
        """Whether lookups propagate by sparse products (which do not compile)."""
        return self.dense is None

    def adjacency(self) -> SparseRows:
        return SparseRows(
            self.graph_starts, self.graph_counts, self.graph_members, self.graph_weights,
            len(self.graph_counts),
        )  # fmt: skip

    def propagated(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Every node's final vector (users, then items) from the tables' weights."""
        tables = torch.cat([users, items])
        if not isinstance(users, nn.Parameter):  # e.g. a functional call's: never kept
            return propagate(self.adjacency(), tables, self.layers)
        pair = (id(users), id(items))
        state = (users._version, items._version, torch.is_grad_enabled())
        kept = self._kept.get(pair)
        if kept is not None and kept[0] is users and kept[1] is items and kept[2] == state:
            return kept[3]
        out = propagate(self.adjacency(), tables, self.layers)
        self._kept[pair] = (users, items, state, out)
        if out.requires_grad:  # a later step's forward must not read this step's graph
            out.register_hook(lambda grad: self._forget(pair))
        return out

    def _forget(self, pair: tuple[int, int]) -> None:
        self._kept.pop(pair, None)

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, side: str, ids: torch.Tensor
    ) -> torch.Tensor:
        """The vectors of ``ids`` (users or items, by ``side``) from the tables' weights."""
        nodes = ids if side == "user" else ids + self.num_users
        if self.dense is not None:
            tables = torch.cat([users, items])
            if nodes.numel() >= len(self.dense):  # e.g. the catalogue: every vector once
                return (self.dense @ tables)[nodes]
            return self.dense[nodes] @ tables
        return self.propagated(users, items)[nodes]


def propagate(adjacency: SparseRows, x: torch.Tensor, layers: int) -> torch.Tensor:
    """LightGCN's final vectors of every node from their layer-0 rows ``x``."""
    csr = adjacency.csr()
    arrays = csr.crow_indices(), csr.col_indices(), csr.values()
    return _Propagate.apply(*arrays, x.contiguous(), layers)
