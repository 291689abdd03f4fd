"""What the tasks share in a batch: one copy per task, and the combined gradient sent back.

A net with two heads says what its tasks share for a batch (``net.shared``): gathered
embedding rows (:class:`TableRows`) or any tensor computed from shared parameters (a shared
layer's output). Each task's head reads its own copy, so each copy receives that task's
gradient alone; a weighting combines them into the one gradient the shared part gets.
The cost grows with the batch, never with the catalogue.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn


@dataclass(frozen=True)
class TableRows:
    """The rows ``ids`` of embedding ``table`` a batch reads.

    Gathered without autograd; the gradient sent back is added to the table's gradient by
    index (a sparse gradient for a sparse table), which is what the embedding's backward
    would do, without a pass of the autograd engine (about a tenth of a step on ML-100K).
    """

    table: nn.Embedding
    ids: torch.Tensor

    def gather(self) -> torch.Tensor:
        with torch.no_grad():
            return self.table(self.ids)

    def send(self, gradient: torch.Tensor) -> None:
        weight = self.table.weight
        rows = gradient.reshape(-1, weight.shape[1])
        ids = self.ids.reshape(-1)
        if self.table.padding_idx is not None:  # the padding row never learns
            rows = rows * (ids != self.table.padding_idx).unsqueeze(1).to(rows)
        if self.table.sparse:  # as a sparse table's own backward: one row per id, unsummed
            gradient = torch.sparse_coo_tensor(
                ids.long().unsqueeze(0), rows, weight.shape, check_invariants=False
            )
            weight.grad = gradient if weight.grad is None else weight.grad + gradient
            return
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        weight.grad.index_add_(0, ids, rows)


Shared = Mapping[str, "TableRows | torch.Tensor"]


class TaskCopies:
    """Each task's own copy of what the tasks share (``copies[task][key]``, passed to the
    heads as ``rows=``); :attr:`received` is what each copy got, :meth:`send` passes the
    combined gradient on to the shared part."""

    def __init__(self, shared: Shared, tasks: tuple[str, ...]):
        self.shared = dict(shared)
        self.tasks = tuple(tasks)
        values = {
            key: part.gather() if isinstance(part, TableRows) else part
            for key, part in self.shared.items()
        }
        self.sizes = {key: value.shape for key, value in values.items()}
        self.copies = {
            task: {key: value.detach().requires_grad_() for key, value in values.items()}
            for task in self.tasks
        }

    @cached_property
    def received(self) -> torch.Tensor:
        """What each task's copy received in the backward pass (read it after), flattened:
        one row per task (zeros where a task's head did not read a part)."""
        return torch.stack(
            [
                torch.cat([_flat_grad(self.copies[task][key]) for key in self.shared])
                for task in self.tasks
            ]
        )

    @cached_property
    def gram(self) -> torch.Tensor:
        """The Gram matrix of :attr:`received`, computed once for the strategy and the
        diagnostics."""
        return self.received @ self.received.T

    def send(self, combined: torch.Tensor) -> None:
        """Give the shared part its gradient ``combined`` (flattened, as :meth:`received`)."""
        numels = [shape.numel() for shape in self.sizes.values()]
        tensors, gradients = [], []
        for part, gradient, shape in zip(
            self.shared.values(), combined.split(numels), self.sizes.values(), strict=True
        ):
            if isinstance(part, TableRows):
                part.send(gradient)
            else:
                tensors.append(part)
                gradients.append(gradient.view(shape))
        if tensors:
            torch.autograd.backward(tensors, gradients)


def _flat_grad(copy: torch.Tensor) -> torch.Tensor:
    return copy.grad.reshape(-1) if copy.grad is not None else copy.new_zeros(copy.numel())
