"""What the tasks share in a batch: one copy per task, and the combined gradient sent back.

A net of several heads says what its tasks share for a batch (``net.shared``): gathered
embedding rows (:class:`TableRows`) or any tensor computed from shared parameters (a shared
layer's output). Each task's head reads its own copy, so each copy receives that task's
gradient alone; a weighting combines them into the one gradient the shared part gets.
The cost grows with the batch, never with the catalogue.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property

import torch

from mtrec.models.protocol import TableRows

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

    @property
    def parts(self) -> tuple[int, ...]:
        """The length of each shared part within a row of :attr:`received`, in order."""
        return tuple(shape.numel() for shape in self.sizes.values())

    @cached_property
    def gram(self) -> torch.Tensor:
        """The Gram matrix of :attr:`received`, computed once for the strategy and the
        diagnostics."""
        return self.received @ self.received.T

    def send(self, combined: torch.Tensor) -> None:
        """Give the shared part its gradient ``combined`` (flattened, as :meth:`received`)."""
        tensors, gradients = [], []
        for part, gradient, shape in zip(
            self.shared.values(), combined.split(self.parts), self.sizes.values(), strict=True
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
