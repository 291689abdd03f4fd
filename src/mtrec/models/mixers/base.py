"""The mixer: what a multi-task net's tasks share, and each task's vector of a side.

A :class:`~mtrec.models.multitask.MultiTaskNet` is composed of a mixer and one head per
task. The mixer owns the embedding tables of both sides (users, items) and turns ids into
each task's vector of a side; the heads read those vectors. A mixer reads one side alone
(the user side's gates read the user), so a ranking head's score stays a dot product of a
user-side and an item-side vector, and ranking the whole catalogue stays one matrix product.

:class:`Mixer` is the interface (a researcher's own architecture subclasses it, or
:class:`Tables`); :class:`Tables` is the plainest one: shared tables, one pair per task, or
a shared item table (``model.net.sharing=shared``, ``separate``, ``items``). Every mixer
reads ids through an encoder (:mod:`mtrec.models.encoders`): a table's row, plus SVD++'s
history term, or LightGCN's propagation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from mtrec.data.info import DataInfo
from mtrec.models.embeddings import ScaledEmbedding
from mtrec.models.encoders import GraphEncoder, HistoryEncoder, histories, normalised_adjacency
from mtrec.models.protocol import Rows, TableRows

SIDES = ("user", "item")


class Mixer(nn.Module, ABC):
    """What the tasks share, on both sides, and each task's vector of a side.

    Built with the data (counts and training rows), the task names in order and the vector
    size ``dim`` the heads read; the net also hands it the encoder's settings
    (``encoder=``, ``graph_layers=``), which a mixer that reads ids through
    :class:`Tables` passes on. ``vector(side, task, ids, rows)`` is
    a task's vector of ``ids`` (``rows``: the task's own copy of :meth:`shared`, read instead
    of computing it); ``shared(users, items)`` what the tasks share for a batch, where
    per-task gradients are taken (:class:`~mtrec.models.protocol.SharesRows`).
    """

    def __init__(self, data: DataInfo, tasks: Sequence[str], dim: int):
        super().__init__()
        self.tasks = tuple(tasks)
        self.dim = dim
        self.counts = {"user": data.num_users, "item": data.num_items}

    @abstractmethod
    def vector(
        self, side: str, task: str, ids: torch.Tensor, rows: Rows | None = None
    ) -> torch.Tensor:
        """``task``'s vectors of ``ids`` on ``side``: shape ``(*ids.shape, dim)``."""

    @abstractmethod
    def shared(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> dict:
        """What the tasks share for a batch (:class:`~mtrec.models.protocol.TableRows` or
        tensors), keyed as :meth:`vector`'s ``rows`` reads them; empty: nothing shared."""

    def tables(self, side: str) -> list[nn.Embedding]:
        """The side's embedding tables, each once (the first is the ranking task's)."""
        return []

    def task_tables(self, side: str, task: str) -> list[nn.Embedding]:
        """The side's tables ``task`` reads (every table of the side, unless a mixer says)."""
        return self.tables(side)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The encoders' own parameters (SVD++'s item factors), apart from the tables."""
        return []

    def own_parameters(self, task: str) -> list[nn.Parameter]:
        """The parameters only ``task`` reads (its own tables), none by default."""
        return []

    def tables_read(self) -> dict[str, dict[str, tuple[nn.Embedding, ...]]]:
        """Each task's tables of a side read at that side's ids in training
        (:class:`~mtrec.models.protocol.IndexedTables`); empty where a task reads more rows
        than its batch's (an encoder over whole tables) or the mixer does not say."""
        return {}

    def gate_use(self) -> dict[str, torch.Tensor]:
        """Each gate's mean share per expert and its entropy (mixtures of experts)."""
        return {}


def distinct(tables: dict[str, nn.Embedding]) -> list[nn.Embedding]:
    """Each table once, in task order."""
    return list({id(table): table for table in tables.values()}.values())


class Tables(Mixer):
    """Embedding tables as they are: one per side shared by every task (``shared``), one per
    task and side (``own_users`` and ``own_items``: ``separate``), or a shared item table
    and a user table per task (``own_users``: ``items``).

    ``width``: the columns of a table's row (wider than ``dim`` where a subclass keeps more
    per id, as a mixture of tables does); ``encoded``: how many of them an encoder's term
    adds to (the experts' rows, never a gate's logits)."""

    def __init__(
        self,
        data: DataInfo,
        tasks: Sequence[str],
        dim: int,
        encoder: str = "id",
        graph_layers: int = 3,
        own_users: bool = False,
        own_items: bool = False,
        width: int | None = None,
        encoded: int | None = None,
    ):
        super().__init__(data, tasks, dim)
        width = dim if width is None else width
        # each task's table of a side (one object where they share it); a task's own tables
        # are made in task order, users before items, as the reference net made them
        self.user_of: dict[str, str] = {}
        self.item_of: dict[str, str] = {}
        users, items = nn.ModuleDict(), nn.ModuleDict()
        for task in self.tasks:
            first = task == self.tasks[0]
            for own, of, made, count in (
                (own_users, self.user_of, users, data.num_users),
                (own_items, self.item_of, items, data.num_items),
            ):
                if first or own:
                    made[task] = ScaledEmbedding(count, width)
                of[task] = task if (first or own) else self.tasks[0]
        self.users, self.items = users, items
        self.histories = None  # SVD++: one encoder per distinct user table
        if encoder == "history":
            found = histories(data.train, data.num_users, data.num_items)
            width = width if encoded is None else encoded
            self.histories = nn.ModuleDict(
                {name: HistoryEncoder(found, width) for name in self.users}
            )
        self.graph = None
        if encoder == "graph":
            adjacency = normalised_adjacency(data.train, data.num_users, data.num_items)
            self.graph = GraphEncoder(adjacency, data.num_users, graph_layers)

    def table(self, side: str, task: str) -> nn.Embedding:
        """The table ``task`` reads on ``side``."""
        if side == "user":
            return self.users[self.user_of[task]]
        return self.items[self.item_of[task]]

    def tables(self, side: str) -> list[nn.Embedding]:
        return list((self.users if side == "user" else self.items).values())

    def task_tables(self, side: str, task: str) -> list[nn.Embedding]:
        return [self.table(side, task)]

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.histories.parameters()) if self.histories is not None else []

    def own_parameters(self, task: str) -> list[nn.Parameter]:
        """The tables ``task`` reads and no other task does (with their history encoders)."""
        found = []
        for side in SIDES:
            others = {id(t) for o in self.tasks if o != task for t in self.task_tables(side, o)}
            for table in self.task_tables(side, task):
                if id(table) in others:
                    continue
                found.append(table.weight)
                if side == "user" and self.histories is not None:
                    name = next(n for n, t in self.users.items() if t is table)
                    found += list(self.histories[name].parameters())
        return found

    def encoded(self, side: str) -> bool:
        """Whether an encoder makes a side's rows (else they are the table's own)."""
        return self.graph is not None or (side == "user" and self.histories is not None)

    def lookup(self, side: str, task: str, ids: torch.Tensor) -> torch.Tensor:
        """The encoded rows of ``ids`` in the table ``task`` reads on ``side``."""
        if self.graph is not None:
            users, items = self.table("user", task).weight, self.table("item", task).weight
            return self.graph(users, items, side, ids)
        rows = self.table(side, task)(ids)
        if side == "user" and self.histories is not None:
            rows = self.histories[self.user_of[task]](rows, ids)
        return rows

    def row(self, rows: Rows | None, key: str, task: str, ids: torch.Tensor) -> torch.Tensor:
        """The given shared rows under ``key``, else the encoded rows ``task`` reads."""
        if rows is not None and key in rows:
            return rows[key]
        return self.lookup(key.split("/")[0], task, ids)

    def shared_rows(self, side: str, task: str, ids: torch.Tensor):
        """The rows of the table ``task`` reads, as what the tasks share: gathered apart from
        autograd where they are the table's own rows, with autograd where an encoder makes
        them (they depend on more than these rows)."""
        if self.encoded(side):
            return self.lookup(side, task, ids)
        return TableRows(self.table(side, task), ids)

    def vector(self, side, task, ids, rows=None):
        return self.row(rows, side, task, ids)

    def shared(self, user_ids, item_ids):
        """The user and the item rows where every task reads one table of the side."""
        found = {}
        for side, ids in (("user", user_ids), ("item", item_ids)):
            if len(self.tables(side)) == 1:
                found[side] = self.shared_rows(side, self.tasks[0], ids)
        return found

    def tables_read(self):
        if self.encoded("user") or self.encoded("item"):
            return {}
        return {t: {side: tuple(self.task_tables(side, t)) for side in SIDES} for t in self.tasks}
