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
"""

from __future__ import annotations

import torch
from torch import nn

from mtrec.models.sharing import softmax


class EmbeddingExperts(nn.Module):
    """Expert tables mixed by a softmax gate per task.

    - ``shared`` tables every task's gate sees, ``own`` tables per task that its gate alone
      sees: ``mmoe`` (own 0) and ``cgc``;
    - ``stop_gradient`` (STEM): every task's gate sees every table, but a task's loss reaches
      only the shared tables and its own (the others enter its vector with their gradient
      stopped);
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

    def _own(self, task: str, rows: torch.Tensor) -> torch.Tensor:
        start = (self.shared_count + self.tasks.index(task) * self.own_count) * self.dim
        return rows[..., start : start + self.own_count * self.dim]

    def _seen(self, task: str, rows: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """The rows ``task``'s first gate mixes, side by side: the shared ones and its own
        (STEM: every task's, the others' with their gradient stopped)."""
        if not self.stop_gradient:
            return torch.cat([shared, self._own(task, rows)], -1)
        others = [
            self._own(t, rows) if t == task else self._own(t, rows).detach() for t in self.tasks
        ]
        return torch.cat([shared, *others], -1)

    def _mixed(
        self, gate: str, rows: torch.Tensor, seen: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate ``gate``'s shares over the experts in ``seen`` and its mix of them."""
        shares = softmax(rows[..., self.gate_columns[gate]])
        experts = seen.unflatten(-1, (shares.shape[-1], self.dim))
        return shares, (shares.unsqueeze(-1) * experts).sum(-2)

    def vector(
        self, task: str, rows: torch.Tensor, shared: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``task``'s vector of these ids; ``shared``: a task's own copy of :meth:`shared`."""
        shared = self.shared(rows) if shared is None else shared
        if self.levels == 1:
            return self._mixed(task, rows, self._seen(task, rows, shared))[1]
        return self._levels(rows, shared)[1][task]

    def _levels(self, rows: torch.Tensor, shared: torch.Tensor):
        """Every gate's shares and each task's vector after the last level (PLE)."""
        gates, outputs = {}, {}
        for task in self.tasks:
            name = f"level0/{task}"
            gates[name], outputs[task] = self._mixed(name, rows, self._seen(task, rows, shared))
        tables = rows[..., self.shared_count * self.dim : self.experts * self.dim]
        every = torch.cat([shared, tables], -1)
        gates["level0/shared"], common = self._mixed("level0/shared", rows, every)
        for number in range(1, self.levels):
            below = dict(outputs)
            for task in self.tasks:
                name = f"level{number}/{task}"
                seen = torch.cat([below[task], common], -1)
                gates[name], outputs[task] = self._mixed(name, rows, seen)
            if number < self.levels - 1:
                name = f"level{number}/shared"
                stacked = torch.cat([*below.values(), common], -1)
                gates[name], common = self._mixed(name, rows, stacked)
        return gates, outputs

    def gates(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each gate's shares over its experts, for rows of every id."""
        shared = self.shared(rows)
        if self.levels > 1:
            return self._levels(rows, shared)[0]
        return {
            task: self._mixed(task, rows, self._seen(task, rows, shared))[0] for task in self.tasks
        }
