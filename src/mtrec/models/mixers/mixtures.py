"""Mixtures of experts over each side's rows, and cross-stitch units over the tasks' tables.

``mmoe``, ``cgc``, ``ple`` and ``stem`` mix embedding tables per id
(:class:`~mtrec.models.embedding_experts.EmbeddingExperts`: a side's table holds every
expert's row side by side, then the gates' logits); ``shared_bottom``, ``mmoe_mlp``,
``cgc_mlp`` and ``ple_mlp`` map a side's shared row through dense experts
(:mod:`mtrec.models.sharing`); ``cross_stitch`` mixes the tasks' own tables. What the tasks
share is the shared experts' part (the mixtures) or every task's rows (cross-stitch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mtrec.data.info import DataInfo
from mtrec.models.embedding_experts import EmbeddingExperts
from mtrec.models.mixers.base import Tables
from mtrec.models.sharing import PLE, CrossStitch, MMoE, SharedBottom


class Mixture(Tables):
    """One table per side, read by every task through the side's mixer (``mixers``: a
    module per side with ``shared(rows)``, ``vector(task, rows, shared)``, ``gates(rows)``)."""

    def __init__(self, data: DataInfo, tasks: Sequence[str], dim: int, **tables):
        super().__init__(data, tasks, dim, **tables)
        self.register_buffer("user_rows", _counts(data.train, "users", data.num_users), False)
        self.register_buffer("item_rows", _counts(data.train, "items", data.num_items), False)

    def side_mixer(self, side: str) -> nn.Module:
        return self.user_mixer if side == "user" else self.item_mixer

    def vector(self, side, task, ids, rows=None):
        copy = rows[side] if rows is not None and side in rows else None  # a task's own copy
        return self.side_mixer(side).vector(task, self.lookup(side, task, ids), copy)

    def shared(self, user_ids, item_ids):
        """Each side's shared experts' output (or rows)."""
        first = self.tasks[0]
        return {
            side: self.side_mixer(side).shared(self.lookup(side, first, ids))
            for side, ids in (("user", user_ids), ("item", item_ids))
        }

    def gate_use(self):
        """Each gate's mean share per expert and its mean entropy (nats), over every user (or
        item) weighted by its training rows: ``gate/<side>/<gate>/<expert>``, ``.../entropy``."""
        found = {}
        for side, weights in (("user", self.user_rows), ("item", self.item_rows)):
            share = weights / weights.sum()
            every = torch.arange(len(share), device=share.device)
            with torch.no_grad():
                rows = self.lookup(side, self.tasks[0], every)
                for gate, probabilities in self.side_mixer(side).gates(rows).items():
                    for expert, value in enumerate(share @ probabilities):
                        found[f"gate/{side}/{gate}/{expert}"] = value
                    entropy = -(probabilities * probabilities.clamp(min=1e-12).log()).sum(-1)
                    found[f"gate/{side}/{gate}/entropy"] = share @ entropy
        return found


class TableMixture(Mixture):
    """Experts that are embedding tables, mixed per id by a softmax gate per task
    (:mod:`mtrec.models.embedding_experts`): ``mmoe`` (``experts`` shared tables), ``cgc``
    (plus ``task_experts`` per task), ``ple`` (``levels`` levels of gates), ``stem`` (as
    ``cgc``, every gate seeing every table, a task's gradient reaching the shared tables and
    its own). An encoder's term reaches the experts' rows only, never the gates' logits."""

    def __init__(
        self,
        data: DataInfo,
        tasks: Sequence[str],
        dim: int,
        kind: str = "mmoe",
        experts: int = 2,
        task_experts: int = 1,
        levels: int = 2,
        **encoder,
    ):
        own = 0 if kind == "mmoe" else task_experts
        levels = levels if kind == "ple" else 1
        rows = EmbeddingExperts(dim, experts, own, tasks, levels, stop_gradient=kind == "stem")
        columns = rows.experts * dim
        super().__init__(data, tasks, dim, width=rows.columns, encoded=columns, **encoder)
        for table in (*self.users.values(), *self.items.values()):
            rows.reset_rows(table.weight)
        self.user_mixer = self.item_mixer = rows  # no parameters: one serves both sides


class DenseMixture(Mixture):
    """A side's shared row through dense experts into each task's vector:
    ``shared_bottom``, ``mmoe_mlp`` (``experts`` shared experts), ``cgc_mlp`` (plus
    ``task_experts`` per task), ``ple_mlp`` (``levels`` stacked CGC levels); ``expert_norm``:
    normalised experts with Swish (HoME), ``residual``: a gated residual to the row (PEPNet)."""

    def __init__(
        self,
        data: DataInfo,
        tasks: Sequence[str],
        dim: int,
        kind: str = "mmoe_mlp",
        experts: int = 4,
        task_experts: int = 1,
        levels: int = 2,
        expert_norm: bool = False,
        residual: bool = False,
        **encoder,
    ):
        super().__init__(data, tasks, dim, **encoder)
        dense = {"normalised": expert_norm, "residual": residual}

        def side() -> nn.Module:
            if kind == "shared_bottom":
                return SharedBottom(dim, self.tasks, **dense)
            if kind == "mmoe_mlp":
                return MMoE(dim, experts, self.tasks, **dense)
            return PLE(
                dim, experts, task_experts, levels if kind == "ple_mlp" else 1, self.tasks, **dense
            )

        self.user_mixer, self.item_mixer = side(), side()

    def vector(self, side, task, ids, rows=None):
        """In evaluation each id's vector once: held-out rows repeat ids, and the dense
        experts' products cost more per id than finding the repeats (a mix of table rows
        costs less: :class:`TableMixture` mixes rows as they come)."""
        if self.training or rows is not None:
            return super().vector(side, task, ids, rows)
        ids, position = ids.unique(return_inverse=True)
        return super().vector(side, task, ids)[position]


class CrossStitchTables(Tables):
    """Cross-stitch units (Misra et al., "Cross-stitch Networks for Multi-task Learning",
    CVPR 2016) over a table per task and side: a task's vector is a learned linear mix of
    every task's rows, from the identity (separate tables) on. Every table's rows are what
    the tasks share."""

    def __init__(self, data: DataInfo, tasks: Sequence[str], dim: int, **encoder):
        super().__init__(data, tasks, dim, own_users=True, own_items=True, **encoder)
        self.user_mixer, self.item_mixer = (
            CrossStitch(dim, self.tasks),
            CrossStitch(dim, self.tasks),
        )

    def vector(self, side, task, ids, rows=None):
        every = {t: self.row(rows, f"{side}/{t}", t, ids) for t in self.tasks}
        return (self.user_mixer if side == "user" else self.item_mixer).vector(task, every)

    def shared(self, user_ids, item_ids):
        return {
            f"{side}/{task}": self.shared_rows(side, task, ids)
            for side, ids in (("user", user_ids), ("item", item_ids))
            for task in self.tasks
        }

    def task_tables(self, side, task):
        return self.tables(side)  # every task mixes every table's rows


def _counts(train, field: str, size: int) -> torch.Tensor:
    """Training rows per id (ones without training data)."""
    if train is None:
        return torch.ones(size)
    return torch.bincount(getattr(train, field).long(), minlength=size).float()
