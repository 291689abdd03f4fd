"""Sparse tables in the compiled step: the step sees only the rows its batch reads.

Under sparse rows (:class:`~mtrec.training.optim.RowSparseAdam`) a table is updated where the
batch read it, never whole. Inside one compiled graph that cannot go through sparse
gradients, so :class:`BatchRows` turns the batch's ids into positions (the ``k``-th user id
of the batch reads row ``k`` of the user rows gathered for it), the step is differentiated
by those gathered rows instead of the tables, and :meth:`BatchRows.update` writes the lazy
Adam update of ``torch.optim.SparseAdam`` back with static shapes: each id's gradients summed
at its first position, its moments and row computed once per position, every repeat of an
id writing the same values.

Which ids index which table is declared by the net
(:class:`~mtrec.models.protocol.IndexedTables`) and which batch fields reach which head by
the tasks (:attr:`~mtrec.mtl.tasks.Task.id_fields`): a table only some heads read (the
rating head's own item table, never read at the negatives) leaves the rows it did not read
as they are, as the separate path does, even where an id's gradient sums to zero.

A task whose loss reads every id of a kind (:attr:`~mtrec.mtl.tasks.Task.reads_every`: the
full softmax over the catalogue) makes that kind's ids those of the whole table: each id is
its own position, the batch's ids of that kind stay as they are, the step reads those tables
whole, and every row a task read at every id is updated (its gradient dense), as the
separate path's sparse gradient over the catalogue updates every row.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from mtrec.models.protocol import ID_FIELDS, IndexedTables
from mtrec.mtl.step import StepEngine


@dataclass
class TableReads:
    """Where the tasks read one sparse table: the kind of id indexing it, the batch fields
    it is read at, and whether some task reads it at every id
    (:attr:`~mtrec.mtl.tasks.Task.reads_every`)."""

    kind: str
    fields: set[str] = field(default_factory=set)
    every: bool = False


def table_reads(engine: StepEngine) -> tuple[dict[int, TableReads], str | None]:
    """Each sparse table the objective's tasks read (by ``id`` of the module): where they
    read it; or why that is not known."""
    sparse = [m for m in engine.net.modules() if isinstance(m, nn.EmbeddingBag | nn.Embedding)]
    sparse = [m for m in sparse if m.sparse]
    if not sparse:
        return {}, None
    by_head = engine.net.tables_read() if isinstance(engine.net, IndexedTables) else {}
    if not by_head:
        return {}, f"{type(engine.net).__name__} does not say which ids index its tables"
    if any(m.padding_idx is not None or m.max_norm is not None for m in sparse):
        return {}, "a sparse table has a padding row or a maximum norm"
    reads: dict[int, TableReads] = {}
    for task in engine.objective.tasks:
        if task.id_fields is None:
            return {}, f"the {task.name} loss reads ids beyond the batch's rows, or part of some"
        for kind, tables in by_head.get(task.name, {}).items():
            for table in tables:
                read = reads.setdefault(id(table), TableReads(kind))
                read.fields.update(name for name in task.id_fields if name in ID_FIELDS[kind])
                read.every = read.every or kind in task.reads_every
    return reads, None


@dataclass(frozen=True)
class RowTable:
    """A sparse table among the step's parameters: its index there, the kind of id indexing
    it, the fields it is read at where they are only some of what its kind's ids are read at
    (else ``None``), and its optimizer state (RowSparseAdam's: the step count a plain
    number)."""

    index: int
    kind: str
    fields: tuple[str, ...] | None
    state: dict


class BatchRows:
    """The sparse tables among a compiled step's ``params``, with ``state`` the optimizer's
    state of each parameter. False when there are none (dense tables)."""

    def __init__(self, engine: StepEngine, params: list[nn.Parameter], state: list[dict]):
        reads, _ = table_reads(engine)
        index = {id(p): i for i, p in enumerate(params)}
        self.modules = [m for m in engine.net.modules() if isinstance(m, nn.Embedding) and m.sparse]
        found = []
        for table in self.modules:
            if id(table.weight) not in index:  # no gradient on the first step: not trained
                continue
            if id(table) not in reads:
                raise TypeError(
                    f"{type(engine.net).__name__}.tables_read() leaves out a sparse table its "
                    f"heads read ({table}): the step would read it by position."
                )
            found.append((index[id(table.weight)], reads[id(table)]))
        # the kinds some table is read at every id of: their ids are the whole table's
        self.whole = frozenset(read.kind for _, read in found if read.every)
        # each kind's fields some table is read at, in ID_FIELDS order; its number of ids
        self.fields = {
            kind: tuple(f for f in names if any(r.kind == kind and f in r.fields for _, r in found))
            for kind, names in ID_FIELDS.items()
        }
        self.fields = {
            kind: names for kind, names in self.fields.items() if names or kind in self.whole
        }
        self.id_count = {read.kind: params[i].shape[0] for i, read in found}
        self.tables = [RowTable(i, read.kind, self._read_at(read), state[i]) for i, read in found]
        self.indices = {table.index for table in self.tables}

    def _read_at(self, read: TableReads) -> tuple[str, ...] | None:
        """The fields a table is read at, where its kind's ids are read at more (other
        fields, or every id), in :data:`ID_FIELDS` order; ``None`` where it reads them all."""
        everything = set(self.fields[read.kind]) if read.kind not in self.whole else None
        if read.every or read.fields == everything:
            return None
        return tuple(name for name in self.fields[read.kind] if name in read.fields)

    def __bool__(self) -> bool:
        return bool(self.tables)

    def step_sizes(self, lr: float, betas: tuple[float, float]) -> list[float]:
        """Each table's step counted, and its step size (SparseAdam's: the bias corrections
        folded in), computed on the host."""
        beta1, beta2 = betas
        sizes = []
        for table in self.tables:
            steps = table.state["step"] = table.state["step"] + 1
            sizes.append(lr * math.sqrt(1 - beta2**steps) / (1 - beta1**steps))
        return sizes

    @contextmanager
    def dense_lookups(self) -> Iterator[None]:
        """In the graph a table's rows are a dense tensor: its lookups give dense gradients."""
        for table in self.modules:
            table.sparse = False
        try:
            yield
        finally:
            for table in self.modules:
                table.sparse = True

    def positions(self, batch: Mapping[str, torch.Tensor]):
        """The batch with its ids replaced by positions, each kind's ids in position order,
        and each id field's ids, flattened: the ``k``-th id of a kind (its fields flattened
        one after another) is read from row ``k`` of the rows gathered for the batch. A kind
        read whole has the table's ids, ``0 .. n - 1``, its fields' ids their own positions."""
        batch = dict(batch)
        ids, by_field = {}, {}
        for kind, names in self.fields.items():
            by_field |= {name: batch[name].reshape(-1) for name in names}
            if kind in self.whole:
                ids[kind] = torch.arange(self.id_count[kind], device=batch["users"].device)
                continue
            ids[kind] = torch.cat([by_field[name] for name in names])
            positions = torch.arange(len(ids[kind]), device=ids[kind].device)
            start = 0
            for name in names:
                size = batch[name].numel()
                batch[name] = positions[start : start + size].view(batch[name].shape)
                start += size
        return batch, ids, by_field

    def gather(self, params: list[torch.Tensor], ids: dict[str, torch.Tensor]):
        """``params`` with each table replaced by its rows at its kind's ``ids`` (a table of
        a kind read whole: itself)."""
        params = list(params)
        for table in self.tables:
            if table.kind not in self.whole:
                params[table.index] = F.embedding(ids[table.kind], params[table.index])
        return params

    def update(
        self, tables, rows, grads, by_id, exp_avgs, exp_avg_sqs, ids, by_field, step_sizes, group
    ):
        """The lazy update of ``torch.optim.SparseAdam`` (Kingma & Ba's Adam, ICLR 2015, on
        the rows a batch read; as :class:`~mtrec.training.optim.RowSparseAdam` computes it)
        of every table: each id a table read gets its gradients summed, its moments decayed
        and its row moved, once; no other row changes.

        ``tables``: the parameters, ``rows``: the gathered rows (one per position),
        ``grads``: their gradients by position; ``by_id``: more ``(positions, gradient
        rows)`` per table (the shared rows' gradient); ``ids`` and ``by_field``: as
        :meth:`positions` gives them. Each id's gradients are summed at its
        first position with ``scatter_reduce``, which the compiler leaves to PyTorch's
        kernel (adding by index, compiled, adds atomically: four times slower here)."""
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        first = {kind: _first_positions(flat, self.id_count[kind]) for kind, flat in ids.items()}
        for table, step_size in zip(self.tables, step_sizes.to(rows[0].dtype), strict=True):
            i, kind, at_ids = table.index, table.kind, ids[table.kind]
            positions = torch.arange(len(at_ids), device=at_ids.device)
            parts = [(positions, grads[i]), *by_id.get(i, [])]
            at = first[kind][torch.cat([where for where, _ in parts])]
            gradient = torch.cat([part for _, part in parts])
            index = at.unsqueeze(1).expand_as(gradient)
            summed = torch.zeros_like(rows[i]).scatter_reduce_(0, index, gradient, "sum")
            summed = summed[first[kind]]
            old_avg, old_avg_sq = exp_avgs[i][at_ids], exp_avg_sqs[i][at_ids]
            new_avg = old_avg.lerp(summed, 1 - beta1)
            new_avg_sq = old_avg_sq * beta2 + (1 - beta2) * summed * summed
            moved = rows[i] - step_size * new_avg / (new_avg_sq.sqrt() + eps)
            if table.fields is not None:  # rows read at other fields only stay as they are
                read = self._read(table, by_field, at_ids)
                new_avg = torch.where(read, new_avg, old_avg)
                new_avg_sq = torch.where(read, new_avg_sq, old_avg_sq)
                moved = torch.where(read, moved, rows[i])
            # every repeat of an id writes the same values; the compiled kernel reads all
            # positions before it writes any
            exp_avgs[i][at_ids] = new_avg
            exp_avg_sqs[i][at_ids] = new_avg_sq
            tables[i][at_ids] = moved

    def _read(self, table: RowTable, by_field: dict[str, torch.Tensor], ids: torch.Tensor):
        """For each position (of id ``ids``), whether the table read that id at any of its
        fields (``by_field``: each field's ids)."""
        read = torch.zeros(self.id_count[table.kind], dtype=torch.bool, device=ids.device)
        read.index_fill_(0, torch.cat([by_field[name] for name in table.fields]), True)
        return read[ids].unsqueeze(1)


def _first_positions(ids: torch.Tensor, id_count: int) -> torch.Tensor:
    """For each position of ``ids`` (ids below ``id_count``), the first position of its id."""
    positions = torch.arange(len(ids), device=ids.device)
    first = ids.new_full((id_count,), len(ids)).scatter_reduce_(0, ids, positions, "amin")
    return first[ids]
