"""Evaluation of a net on a held-out set: each task's own metrics (its evaluator, see
:meth:`mtrec.mtl.tasks.Task.evaluator`), users taken in chunks so memory stays bounded, the
sums of several DDP ranks added up."""

from __future__ import annotations

import torch

from mtrec.data.interactions import HeldOut
from mtrec.mtl.metrics import MAX_SCORES, user_chunks
from mtrec.mtl.tasks import Task


@torch.no_grad()
def evaluate(
    net: torch.nn.Module,
    held: HeldOut,
    k: int = 10,
    *,
    tasks: tuple[Task, ...],
    max_scores: int = MAX_SCORES,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, torch.Tensor]:
    """The held-out metrics of ``tasks``, each task's own (its evaluator).

    Users are taken in chunks of at most ``max_scores`` scores (see :func:`user_chunks`).
    With ``world_size > 1`` (a ``torch.distributed`` process group of that many processes
    must be initialised, and every rank must call this with the same ``held`` and ``net``),
    this process scores only its ``rank``'s share of the chunks, and the metric sums of all
    ranks are added up before the division: every rank returns the metrics of the whole set,
    equal to a one-process evaluation up to float32 rounding (the sums add in another order).
    With ``world_size=1`` nothing is exchanged between processes, even inside a process
    group, so one rank may evaluate alone.
    """
    if world_size > 1 and not (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() == world_size
    ):
        raise ValueError(
            f"evaluate(world_size={world_size}) needs a torch.distributed group of that size."
        )
    device, sync = held.items.device, world_size > 1
    evaluators = [task.evaluator(k, device, sync) for task in tasks]
    for chunk in user_chunks(held, max_scores, rank, world_size):
        for evaluator in evaluators:
            evaluator.update(net, held, chunk)
    metrics = {}
    for evaluator in evaluators:
        metrics.update(evaluator.compute())
    return metrics
