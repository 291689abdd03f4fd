"""Mixtures whose experts are embedding tables (``model.net.sharing=mmoe``, ``cgc``, ``ple``
and ``stem``).

A dense expert shared by every id gets the gradient of every training triple; under a dot
product with uniform negatives that points along the popularity direction, and the ranking
head collapses with it. Here an expert is a table: each id has its own row in it, and a
task's gate mixes the id's rows, so a task's vector is a convex mix of free per-id rows and
the interaction score stays one dot product (Multi-Embedding, Guo et al., "On the Embedding
Collapse When Scaling up Recommendation Models", ICML 2024; STEM, Su et al., "STEM:
Unleashing the Power of Embeddings for Multi-task Recommendation", AAAI 2024).

All of a side's expert tables are one embedding table, each row the experts' rows side by
side, ``[shared_0 … shared_{S-1}, own_{t,0} …]`` of ``dim`` columns each, then every gate's
logits: one gather per batch, and sparse row updates work as for any table. What the tasks
share (where per-task gradients are taken) is the shared experts' part of the rows. Like the
dense mixers this reads one side alone: ``shared(rows)``, ``vector(task, rows, shared)``,
``gates(rows)``.

A gate is a table of per-id logits. MMoE's gate is ``softmax(W_g x)`` of the model's input;
here the input is the id, a one-hot ``x``, so ``W_g x`` is the id's column of ``W_g``: a
learned logit per id and expert, started at zero (an even mix). Kept in the same row it
costs no lookup and no matrix product of its own.

A gate's mix is a sum written out over the experts' slices of the row, not a reduction over
a concatenated copy of them: a gate mixes a few experts, and both the compiled training step
and eager evaluation take less time so (no copy of every row, no reduction over a dimension
that short).
"""

from __future__ import annotations

import torch
from torch import nn


def _shares(logits: torch.Tensor) -> torch.Tensor:
    """A gate's softmax over the last dimension, written out (PyTorch's CPU kernel is several
    times slower on rows as short as a gate's), the row's maximum subtracted apart from
    autograd: the shift cancels in the softmax, and its gradient (through each row's
    maximum) took up to a fifth of the compiled training step (STEM on ML-100K)."""
    exp = (logits - logits.amax(-1, keepdim=True).detach()).exp()
    return exp / exp.sum(-1, keepdim=True)


def _sum(weights: torch.Tensor, items: list[torch.Tensor]) -> torch.Tensor:
    """``sum_e weights[..., e] * items[e]``, written out over the few experts."""
    total = weights[..., :1] * items[0]
    for expert in range(1, len(items)):
        total = total + weights[..., expert : expert + 1] * items[expert]
    return total


class EmbeddingExperts(nn.Module):
    """Expert tables mixed by a softmax gate per task.

    - ``shared`` tables every task's gate sees, ``own`` tables per task that its gate alone
      sees: ``mmoe`` (own 0) and ``cgc``;
    - ``stop_gradient`` (STEM): every task's gate sees every table, but a task's loss reaches
      only the shared tables and its own (the others enter its vector with their gradient
      stopped); one level of gates;
    - ``levels`` > 1 (``ple``): PLE's progressive routing above the tables. Level 0 is the
      gates over the tables, plus a shared gate over all of them; each level above mixes,
      per task, the level below's output of that task and the shared output (a new shared
      gate mixing all of them), the experts of those levels being identities: a learned map
      there would be a dense map shared by every id again.
    """

    def __init__(
        self,
        dim: int,
        shared: int,
        own: int,
        tasks,
        levels: int = 1,
        stop_gradient: bool = False,
    ):
        super().__init__()
        if stop_gradient and levels > 1:
            raise ValueError("STEM's stopped gradients are defined for one level of gates")
        self.dim, self.shared_count, self.own_count = dim, shared, own
        self.tasks = tuple(tasks)
        self.stop_gradient = stop_gradient
        self.levels = levels
        self.experts = shared + own * len(self.tasks)
        self.gate_columns: dict[str, slice] = {}
        start = self.experts * dim
        for name, size in self._gate_sizes().items():
            self.gate_columns[name] = slice(start, start + size)
            start += size
        self.columns = start

    def _gate_sizes(self) -> dict[str, int]:
        """Each gate's name and how many experts it mixes, in the row's order."""
        seen = self.shared_count + self.own_count * (len(self.tasks) if self.stop_gradient else 1)
        if self.levels == 1:
            return dict.fromkeys(self.tasks, seen)
        sizes = {f"level0/{task}": seen for task in self.tasks}
        sizes["level0/shared"] = self.experts  # PLE's shared gate: over every table
        for level in range(1, self.levels):
            sizes |= {f"level{level}/{task}": 2 for task in self.tasks}
            if level < self.levels - 1:  # over the tasks' and the shared outputs
                sizes[f"level{level}/shared"] = len(self.tasks) + 1
        return sizes

    def reset_rows(self, weight: torch.Tensor) -> None:
        """Start a table of these rows: each expert's row as a table of its own would start
        (N(0, 1/dim)), every gate even (zero logits)."""
        with torch.no_grad():
            nn.init.normal_(weight[:, : self.experts * self.dim], 0.0, 1.0 / self.dim)
            weight[:, self.experts * self.dim :].zero_()

    def shared(self, rows: torch.Tensor) -> torch.Tensor:
        """The shared tables' rows: (..., shared * dim)."""
        return rows[..., : self.shared_count * self.dim]

    def _tables(self, rows: torch.Tensor, shared: torch.Tensor | None) -> list[torch.Tensor]:
        """Each expert table's rows of these ids, (..., dim) each, in the row's order;
        ``shared``: a task's own copy of :meth:`shared`, read instead of the rows."""
        tables = list(rows[..., : self.experts * self.dim].split(self.dim, -1))
        if shared is not None:
            tables[: self.shared_count] = shared.split(self.dim, -1)
        return tables

    def _own(self, task: str, tables: list[torch.Tensor]) -> list[torch.Tensor]:
        start = self.shared_count + self.tasks.index(task) * self.own_count
        return tables[start : start + self.own_count]

    def _seen(self, task: str, tables: list[torch.Tensor]) -> list[torch.Tensor]:
        """The tables ``task``'s first gate mixes: the shared ones and its own (STEM: every
        task's, the others' with their gradient stopped)."""
        seen = tables[: self.shared_count]
        if not self.stop_gradient:
            return seen + self._own(task, tables)
        for other in self.tasks:
            own = self._own(other, tables)
            seen = seen + (own if other == task else [table.detach() for table in own])
        return seen

    def _mixed(
        self, gate: str, rows: torch.Tensor, seen: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate ``gate``'s shares over the experts ``seen`` and its mix of them."""
        weights = _shares(rows[..., self.gate_columns[gate]])
        return weights, _sum(weights, seen)

    def vector(
        self, task: str, rows: torch.Tensor, shared: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``task``'s vector of these ids; ``shared``: a task's own copy of :meth:`shared`."""
        tables = self._tables(rows, shared)
        if self.levels == 1:
            return self._mixed(task, rows, self._seen(task, tables))[1]
        return _sum(self._levels(rows, task)[1][task], tables)

    def _levels(self, rows: torch.Tensor, task: str | None = None):
        """Every gate's shares and each task's weight of each table after the last level
        (PLE). The levels above the tables mix linearly, so a task's vector is one mix of the
        tables, its weights mixed level by level from level 0's shares. With ``task``, only
        what its weights read: every task's below the last two levels (a shared gate above
        mixes them all), then ``task``'s alone."""
        gates, outputs, common = {}, {}, None
        for number in range(self.levels):
            below = dict(outputs)
            every = task is None or number < self.levels - 2
            for name in self.tasks if every else (task,):
                gate = f"level{number}/{name}"
                if number == 0:
                    gates[gate] = _shares(rows[..., self.gate_columns[gate]])
                    outputs[name] = self._placed(name, gates[gate])
                else:
                    gates[gate], outputs[name] = self._mixed(gate, rows, [below[name], common])
            if number == 0:
                gates["level0/shared"] = common = _shares(
                    rows[..., self.gate_columns["level0/shared"]]
                )
            elif number < self.levels - 1:
                gate = f"level{number}/shared"
                gates[gate], common = self._mixed(gate, rows, [*below.values(), common])
        return gates, outputs

    def _placed(self, task: str, weights: torch.Tensor) -> torch.Tensor:
        """``task``'s level-0 shares (the shared tables', then its own) among every table's
        weights: zero at the other tasks' own."""
        before = self.tasks.index(task) * self.own_count
        after = self.experts - self.shared_count - self.own_count - before
        zeros = weights.new_zeros(*weights.shape[:-1], max(before, after))
        shared, own = weights.split([self.shared_count, self.own_count], -1)
        return torch.cat([shared, zeros[..., :before], own, zeros[..., :after]], -1)

    def gates(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each gate's shares over its experts, for rows of every id."""
        if self.levels > 1:
            return self._levels(rows)[0]
        tables = self._tables(rows, None)
        return {task: self._mixed(task, rows, self._seen(task, tables))[0] for task in self.tasks}
