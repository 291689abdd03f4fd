"""Dense experts: how the tasks share one side (the users, or the items) under the dense
mixtures of :mod:`mtrec.models.mixers` (``model.net.sharing=shared_bottom``, ``mmoe_mlp``,
``cgc_mlp``, ``ple_mlp``), and cross-stitch units.

A mixer turns a side's embedding rows into one vector per task, of the embedding's size, and
reads nothing but that side (the user side's gates read the user): so the interaction score
stays a dot product of a user-side and an item-side vector, and ranking the whole catalogue
stays one matrix product. ``shared(rows)`` is what both tasks read (where the tasks'
gradients meet: the gradient-level weightings and the diagnostics take them there);
``vector(task, rows, shared)`` is a task's vector from the rows and that shared part (a task's
own copy of it; ``None``: computed in the same pass, which for PLE saves a second pass through
its lower levels). ``gates(rows)`` gives each softmax gate's expert shares, for the
``mtl/gate/...`` diagnostics.
"""

from __future__ import annotations

import torch
from torch import nn


class Experts(nn.Module):
    """``count`` experts (Linear + ReLU each) computed as one layer, initialised as separate
    ones would be: output (..., count, dim).

    ``normalised``: each expert's output normalised, then Swish instead of ReLU (expert
    normalisation, HoME, Wang et al., "HoME: Hierarchy of Multi-Gate Experts for Multi-Task
    Learning at Kuaishou", 2024; a layer norm here, where HoME uses batch statistics, so
    training and scoring every id agree): no expert's scale can starve the others."""

    def __init__(self, dim: int, count: int, normalised: bool = False):
        super().__init__()
        self.count = count
        self.layer = nn.Linear(dim, count * dim)
        self.norm = nn.LayerNorm(dim) if normalised else None

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        out = self.layer(rows).unflatten(-1, (self.count, -1))
        if self.norm is None:
            return torch.relu(out)
        return nn.functional.silu(self.norm(out))


class GatedResidual(nn.Module):
    """``2 sigmoid(W e) * e``, added to a task's mixed vector (the gate neural unit of PEPNet,
    Chang et al., "PEPNet: Parameter and Embedding Personalized Network for Infusing with
    Personalized Prior Information", KDD 2023): the id's own row reaches the head scaled per
    dimension, so the free per-id rows keep a path past the shared maps."""

    def __init__(self, dim: int, tasks):
        super().__init__()
        self.gates = nn.ModuleDict({task: nn.Linear(dim, dim) for task in tasks})

    def forward(self, task: str, rows: torch.Tensor) -> torch.Tensor:
        return 2 * torch.sigmoid(self.gates[task](rows)) * rows


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, written out: PyTorch's CPU kernel is several times
    slower on rows as short as a gate's (a few experts)."""
    exp = (logits - logits.amax(-1, keepdim=True)).exp()
    return exp / exp.sum(-1, keepdim=True)


def _towers(dim: int, tasks) -> nn.ModuleDict:
    """A linear tower per task over the mixed representation."""
    return nn.ModuleDict({task: nn.Linear(dim, dim) for task in tasks})


def _mix(gate_logits: torch.Tensor, *groups: torch.Tensor) -> torch.Tensor:
    """The gate's softmax-weighted sum of the experts' outputs, given as groups (..., E_g, d)
    in the gate's order. Each group is weighted by its slice of the gate rather than
    concatenated first: with the ``cat``, the compiled PLE step took twice as long."""
    weights = softmax(gate_logits).unsqueeze(-1)
    mixed, start = 0, 0
    for group in groups:
        count = group.shape[-2]
        mixed = mixed + (weights[..., start : start + count, :] * group).sum(-2)
        start += count
    return mixed


class TowerMixer(nn.Module):
    """A shared part, then a mix of it per task (``mix``), then the task's linear tower
    (``residual``: plus a :class:`GatedResidual` of the row)."""

    def __init__(self, dim: int, tasks, residual: bool = False):
        super().__init__()
        self.tasks = tuple(tasks)
        self.towers = _towers(dim, self.tasks)
        self.residual = GatedResidual(dim, self.tasks) if residual else None

    def vector(
        self, task: str, rows: torch.Tensor, shared: torch.Tensor | None = None
    ) -> torch.Tensor:
        shared = self.shared(rows) if shared is None else shared
        vector = self.towers[task](self.mix(task, rows, shared))
        return vector if self.residual is None else vector + self.residual(task, rows)

    def gates(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}


class SharedBottom(TowerMixer):
    """A shared layer under a linear tower per task (Caruana, "Multitask Learning", 1997)."""

    def __init__(self, dim: int, tasks, normalised: bool = False, residual=False):
        super().__init__(dim, tasks, residual)
        self.bottom = Experts(dim, 1, normalised)

    def shared(self, rows: torch.Tensor) -> torch.Tensor:
        return self.bottom(rows).squeeze(-2)

    def mix(self, task: str, rows: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        return shared


class MMoE(TowerMixer):
    """Multi-gate mixture of experts (Ma et al., "Modeling Task Relationships in Multi-task
    Learning with Multi-gate Mixture-of-Experts", KDD 2018): ``experts`` shared experts, a
    softmax gate per task reading the row, a linear tower per task. One expert is a shared
    bottom."""

    def __init__(
        self,
        dim: int,
        experts: int,
        tasks,
        normalised: bool = False,
        residual: bool = False,
    ):
        super().__init__(dim, tasks, residual)
        self.experts = Experts(dim, experts, normalised)
        self.gate_layers = nn.ModuleDict({task: nn.Linear(dim, experts) for task in self.tasks})

    def shared(self, rows: torch.Tensor) -> torch.Tensor:
        return self.experts(rows)

    def mix(self, task: str, rows: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        return _mix(self.gate_layers[task](rows), shared)

    def gates(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {task: softmax(self.gate_layers[task](rows)) for task in self.tasks}


class ExtractionLevel(nn.Module):
    """One level of PLE, a CGC: shared experts and each task's own; a task's gate mixes its
    own and the shared experts, and (below the last level) a shared gate mixes all of them
    into the next level's shared input."""

    def __init__(
        self,
        dim: int,
        shared_experts: int,
        task_experts: int,
        last: bool,
        tasks,
        normalised: bool = False,
    ):
        super().__init__()
        self.tasks = tuple(tasks)
        self.shared_experts = Experts(dim, shared_experts, normalised)
        self.task_experts = nn.ModuleDict(
            {t: Experts(dim, task_experts, normalised) for t in self.tasks}
        )
        width = task_experts + shared_experts
        self.task_gates = nn.ModuleDict({t: nn.Linear(dim, width) for t in self.tasks})
        every = len(self.tasks) * task_experts + shared_experts
        self.shared_gate = None if last else nn.Linear(dim, every)

    def shared(self, shared_input: torch.Tensor) -> torch.Tensor:
        return self.shared_experts(shared_input)

    def own(self, task: str, task_input: torch.Tensor) -> torch.Tensor:
        return self.task_experts[task](task_input)

    def task_output(
        self, task: str, task_input: torch.Tensor, shared: torch.Tensor, own=None
    ) -> torch.Tensor:
        """The task's gate over its own experts (``own``: their output, if computed) and the
        shared ones."""
        own = self.own(task, task_input) if own is None else own
        return _mix(self.task_gates[task](task_input), own, shared)

    def forward(self, inputs: dict[str, torch.Tensor], shared_input: torch.Tensor):
        """The next level's inputs: one per task, and the shared one."""
        shared = self.shared(shared_input)
        own = {t: self.own(t, inputs[t]) for t in self.tasks}
        outputs = {t: self.task_output(t, inputs[t], shared, own[t]) for t in self.tasks}
        return outputs, _mix(self.shared_gate(shared_input), *own.values(), shared)


class PLE(nn.Module):
    """Progressive layered extraction (Tang et al., "Progressive Layered Extraction (PLE): A
    Novel Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020):
    ``levels`` stacked CGC levels, then a linear tower per task. One level is CGC. What the
    tasks share is the last level's shared experts' output; the levels below reach both tasks
    through it and their own gates."""

    def __init__(
        self,
        dim: int,
        shared_experts: int,
        task_experts: int,
        levels: int,
        tasks,
        normalised: bool = False,
        residual: bool = False,
    ):
        super().__init__()
        self.tasks = tuple(tasks)
        self.levels = nn.ModuleList(
            ExtractionLevel(
                dim, shared_experts, task_experts, i == levels - 1, self.tasks, normalised
            )
            for i in range(levels)
        )
        self.towers = _towers(dim, self.tasks)
        self.residual = GatedResidual(dim, self.tasks) if residual else None

    def _last_inputs(self, rows: torch.Tensor):
        inputs, shared_input = dict.fromkeys(self.tasks, rows), rows
        for level in self.levels[:-1]:
            inputs, shared_input = level(inputs, shared_input)
        return inputs, shared_input

    def shared(self, rows: torch.Tensor) -> torch.Tensor:
        return self.levels[-1].shared(self._last_inputs(rows)[1])

    def vector(
        self, task: str, rows: torch.Tensor, shared: torch.Tensor | None = None
    ) -> torch.Tensor:
        inputs, shared_input = self._last_inputs(rows)
        if shared is None:
            shared = self.levels[-1].shared(shared_input)
        vector = self.towers[task](self.levels[-1].task_output(task, inputs[task], shared))
        return vector if self.residual is None else vector + self.residual(task, rows)

    def gates(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each level's task gates (own experts first, then the shared ones) and shared gate."""
        found = {}
        inputs, shared_input = dict.fromkeys(self.tasks, rows), rows
        for number, level in enumerate(self.levels):
            prefix = f"level{number}/" if len(self.levels) > 1 else ""
            for task in self.tasks:
                found[prefix + task] = softmax(level.task_gates[task](inputs[task]))
            if level.shared_gate is not None:
                found[prefix + "shared"] = softmax(level.shared_gate(shared_input))
                inputs, shared_input = level(inputs, shared_input)
        return found


class CrossStitch(nn.Module):
    """Cross-stitch units (Misra et al., "Cross-stitch Networks for Multi-task Learning",
    CVPR 2016) on the embeddings: each task has its own table, and its vector is a learned
    linear mix of every task's rows, ``v_t = sum_s a_ts e_s``, from the identity (separate
    embeddings) on. Every table's rows are what the tasks share."""

    def __init__(self, dim: int, tasks):
        super().__init__()
        self.tasks = tuple(tasks)
        self.units = nn.Parameter(torch.eye(len(self.tasks)))

    def vector(self, task: str, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = self.units[self.tasks.index(task)]
        return sum(weights[i] * rows[name] for i, name in enumerate(self.tasks))
