"""The training objective: each task's unweighted loss on a batch, penalties apart.

Kept apart from the weighting (how task losses become gradients, :mod:`mtrec.mtl.weighting`)
and from the Lightning glue, so it can be called, tested and compiled on its own. It loops
over its tasks: each reads its own head of the net (:meth:`Recommender.head`) and computes its
own loss (:meth:`mtrec.mtl.tasks.Task.loss`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mtrec.errors import ConfigError
from mtrec.models.protocol import EmbeddingNorms, Penalised
from mtrec.mtl import losses
from mtrec.mtl.tasks import Task, reference_tasks

PENALTY = "penalty"  # the key of the penalties in the objective's output


class Objective(nn.Module):
    """``objective(net, batch)`` returns ``{task name: loss}`` for its ``tasks`` (in their
    order), plus ``"penalty"`` when a penalty is set: ``l1`` and ``l2`` on all parameters, and
    ``embedding_l2`` on the mean squared norm of the embedding rows the batch uses (a mapping:
    each task's own strength, on the rows its head reads; nets that
    are :class:`~mtrec.models.protocol.EmbeddingNorms`: the SVD regulariser), plus the net's
    own (:class:`~mtrec.models.protocol.Penalised`).

    ``tasks``: :class:`~mtrec.mtl.tasks.Task` objects, or a mapping of them by name (the
    ``tasks`` config group, instantiated); default the reference's interaction and rating.
    """

    def __init__(
        self,
        tasks: Sequence[Task] | Mapping[str, Task] | None = None,
        l1: float = 0.0,
        l2: float = 0.0,
        embedding_l2: float | Mapping[str, float] = 0.0,
    ):
        super().__init__()
        if tasks is None:
            tasks = reference_tasks()
        self.tasks: tuple[Task, ...] = tuple(
            tasks.values() if isinstance(tasks, Mapping) else tasks
        )
        if not self.tasks:
            raise ConfigError("tasks=[] trains nothing: give at least one, e.g. tasks=[rating].")
        if isinstance(embedding_l2, Mapping):
            embedding_l2 = dict(embedding_l2)
            unknown = sorted(set(embedding_l2) - {task.name for task in self.tasks})
            if unknown:
                raise ConfigError(
                    f"model.embedding_l2 names {', '.join(unknown)}, which this run does not "
                    f"train (its tasks: {', '.join(t.name for t in self.tasks)}): give one "
                    "number, or one per trained task."
                )
        self.l1, self.l2, self.embedding_l2 = l1, l2, embedding_l2

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(task.name for task in self.tasks)

    def check_net(self, net: nn.Module) -> None:
        """What the net must offer these tasks and settings, checked once when a run is
        built: a head per task, the rows each batch uses for ``embedding_l2``."""
        type(net).check_tasks(self.tasks)
        for task in self.tasks:
            task.check_net(type(net))
        check_settings(self.embedding_l2, type(net))

    def forward(
        self,
        net: nn.Module,
        batch: Mapping[str, torch.Tensor],
        shared: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``shared``: for each task, its own copy of what the tasks share (``net.shared``),
        read by that task's head instead of the tables, so each copy receives that task's
        gradient alone."""
        out: dict[str, torch.Tensor] = {}
        for task in self.tasks:
            rows = (shared or {}).get(task.name)
            out[task.name] = task.loss(net, batch, rows, _user_side(rows))
        penalty = 0.0
        if self.embedding_l2:  # only the rows this batch uses, as in SVD
            users, items = batch["users"], batch["items"]
            if isinstance(self.embedding_l2, Mapping):  # each task's on the rows it reads
                for task, l2 in self.embedding_l2.items():
                    if l2:
                        norms = net.embedding_norms(users, items, task)
                        penalty = penalty + l2 * norms.mean()
            else:
                penalty = penalty + self.embedding_l2 * net.embedding_norms(users, items).mean()
        if self.l1 or self.l2:
            penalty = penalty + losses.penalty(net.parameters(), self.l1, self.l2)
        if isinstance(net, Penalised):  # the net's own, e.g. toward a closed form
            penalty = penalty + net.penalty()
        if isinstance(penalty, torch.Tensor):
            out[PENALTY] = penalty
        return out


def check_settings(embedding_l2: float, net_class: type) -> None:
    """``model.embedding_l2`` needs a net that says which rows a batch uses; checked when
    the module is built, and by config validation before any work."""
    if embedding_l2 and not issubclass(net_class, EmbeddingNorms):
        raise ConfigError(
            f"model.embedding_l2={embedding_l2}: {net_class.__name__} does not say "
            "which embedding rows a batch uses. Use model.l2 (all parameters) instead."
        )


def _user_side(rows: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """The user side of a task's copy (keys ``user`` or ``user/...``), one per pair, shaped
    to broadcast over the batch's sampled items."""
    if not rows:
        return None
    side = {key: value.unsqueeze(1) for key, value in rows.items() if key.split("/")[0] == "user"}
    return side or None
