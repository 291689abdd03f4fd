"""The whole training step as one compiled function: forward, gradients, the weighting's
combination and Adam's update.

A step of the reference model on ML-100K is a few microseconds of arithmetic inside about a
millisecond of calls: the compiled loss, autograd's engine, the weighting, the optimizer. Here
the step is one function of the parameters, Adam's moments and the batch, its gradients taken
by ``torch.func`` and its update written out, and ``torch.compile`` makes one graph of it
(0.37 -> 0.22 s per ML-100K training epoch, one thread; docs/performance.md).

The optimizer stays the real one: its state (``step``, ``exp_avg``, ``exp_avg_sq`` per
parameter) is what the compiled step reads and updates in place, so checkpoints, resuming and
learning-rate schedules see an ordinary ``torch.optim.Adam``. What this step cannot serve
(:func:`unsupported`) runs the separate path (:class:`~mtrec.mtl.step.StepEngine` and
``optimizer.step()``), with one log line.

Under sparse rows (:class:`~mtrec.training.optim.RowSparseAdam`) the step sees only the rows
its batch reads (:mod:`mtrec.training.batch_rows`), or a table whole where a loss reads every
id of its kind (the full softmax): no sparse tensor enters the graph.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call, grad, vjp
from torch.nn import functional as F

from mtrec.compile import compile_or_eager
from mtrec.models.encoders import GraphEncoder
from mtrec.models.protocol import TableRows
from mtrec.mtl.step import LOSS, StepEngine
from mtrec.training.batch_rows import BatchRows, table_reads
from mtrec.training.optim import RowSparseAdam

ADAMS = (torch.optim.Adam, torch.optim.AdamW, RowSparseAdam)  # what the step's update computes


def unsupported(optimizer: torch.optim.Optimizer, engine: StepEngine) -> str | None:
    """Why the compiled step cannot run this optimizer and engine, or ``None`` if it can."""
    if type(optimizer) not in ADAMS:
        return f"{type(optimizer).__name__} is not Adam or AdamW"
    if len(optimizer.param_groups) != 1 and isinstance(optimizer, RowSparseAdam):
        return "sparse rows with several parameter groups"
    for group in optimizer.param_groups:
        for option in ("amsgrad", "maximize", "capturable", "differentiable"):
            if group.get(option):
                return f"{option}=True"
        if isinstance(group["lr"], torch.Tensor):
            return "the learning rate is a tensor"
    if any(isinstance(m, GraphEncoder) and m.sparse for m in engine.net.modules()):
        return "the graph encoder's sparse products do not compile"
    why = table_reads(engine)[1]
    if why is not None:
        return why
    name = type(engine.weighting).__name__
    if engine.weighting.sets_own_gradients:
        return f"{name} sets its weights' gradients after the backward pass"
    return None


class _Step(nn.Module):
    """The step's net, objective and weighting as one module, so ``functional_call`` can run
    them with the parameters the step is differentiated by. ``forward(what, batch, rows)``:
    ``"losses"``, the engine's weighted losses (``rows``: each task's copy of what the tasks
    share); ``"shared"``, what they share (``net.shared``); ``"shared_values"``, the same as
    tensors with autograd from the parameters."""

    def __init__(self, engine: StepEngine):
        super().__init__()
        self.net, self.objective, self.weighting = engine.net, engine.objective, engine.weighting
        self.engine = [engine]  # not a submodule: a plain object

    def forward(self, what: str, batch, rows=None):
        if what == "losses":
            return self.engine[0].weighted_losses(batch, rows)
        shared = self.net.shared(batch["users"], batch["items"])
        if what == "shared":
            return shared
        return {  # a table's rows by lookup, so their backward is the table's own
            key: part.table(part.ids) if isinstance(part, TableRows) else part
            for key, part in shared.items()
        }


class CompiledStep:
    """One optimizer step per :meth:`step`, compiled whole.

    Built with the engine and the run's optimizer once the run's first step has been taken on
    the separate path (which builds Adam's state). The step differentiates by the parameters
    that received a gradient then; the rest keep no gradient, as there. Each parameter group
    (``model.parts``) is updated with its own settings.

    Where the weighting takes each task's gradient on what the tasks share, each task reads its
    own copy of the shared values (``net.shared``), the strategy combines their gradients from
    their Gram matrix in the same graph, and the combination goes back through the shared
    values' own backward (``torch.func.vjp``).
    """

    def __init__(self, engine: StepEngine, optimizer: torch.optim.Optimizer):
        self.engine = engine
        self.module = _Step(engine)
        self.groups = optimizer.param_groups
        self.group = self.groups[0]  # sparse rows' (one group only: unsupported())
        found = [(p, g) for g, group in enumerate(self.groups) for p in group["params"]]
        self.params = [p for p, _ in found if p.grad is not None]
        group_of = [g for p, g in found if p.grad is not None]
        index = {id(p): i for i, p in enumerate(self.params)}
        # one name per place a parameter is held: a module reached by several names (a table
        # both tasks read) is swapped once, a parameter tied into two modules in both
        self.places: list[tuple[str, int]] = []
        seen = set()
        for name, p in self.module.named_parameters(remove_duplicate=False):
            owner, _, attribute = name.rpartition(".")
            place = (id(self.module.get_submodule(owner)), attribute)
            if id(p) in index and place not in seen:
                seen.add(place)
                self.places.append((name, index[id(p)]))
        self.tables = {
            id(m): index[id(m.weight)]
            for m in engine.net.modules()
            if isinstance(m, nn.Embedding) and id(m.weight) in index
        }
        state = [optimizer.state[p] for p in self.params]
        self.rows = BatchRows(engine, self.params, state)  # sparse tables, by their rows
        self.dense = [i for i in range(len(self.params)) if i not in self.rows.indices]
        # each group's dense parameters, as positions in self.dense
        self.dense_of = [
            [k for k, i in enumerate(self.dense) if group_of[i] == g]
            for g in range(len(self.groups))
        ]
        self.exp_avgs = [s["exp_avg"] for s in state]
        self.exp_avg_sqs = [s["exp_avg_sq"] for s in state]
        self.step_counts = [state[i]["step"] for i in self.dense]
        # Adam's bias corrections, kept on the host (and each sparse table's: BatchRows)
        self.steps = int(self.step_counts[0]) if self.dense else 0
        self.per_task = engine.task_gradients
        optimizer.zero_grad()  # the compiled step keeps its gradients inside the graph
        self.compiled = compile_or_eager(self._step)

    def step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One step on ``batch``: the parameters and Adam's state updated; the losses."""
        self.steps += 1
        scalars = []
        for group in self.groups:  # three per group, then the sparse rows'
            beta1, beta2 = group["betas"]
            lr = float(group["lr"])
            scalars += [
                lr / (1 - beta1**self.steps),  # Adam's step size
                math.sqrt(1 - beta2**self.steps),  # the second moment's correction
                1 - lr * group["weight_decay"],  # decoupled weight decay's factor
            ]
        scalars += self.rows.step_sizes(float(self.group["lr"]), self.group["betas"])
        scalars = torch.tensor(scalars, dtype=torch.float64)
        # torch.func takes the gradients inside: nothing outside needs them
        with torch.no_grad(), self.rows.dense_lookups():
            losses, received, gram, weights, in_combination = self.compiled(
                self.params,
                self.exp_avgs,
                self.exp_avg_sqs,
                self.step_counts,
                scalars,
                dict(batch),
            )
        self.engine.after_backward(losses, received, gram, weights, in_combination)
        return losses

    def _call(self, params, *args):
        """The step module's forward under ``params`` (one name per place they are held)."""
        named = {name: params[i] for name, i in self.places}
        return functional_call(self.module, named, args, tie_weights=False)

    def _step(self, params, exp_avgs, exp_avg_sqs, step_counts, scalars, batch):
        tables, ids, by_field = params, {}, {}
        if self.rows:  # the step sees the batch's rows: ids become their positions
            batch, ids, by_field = self.rows.positions(batch)
            params = self.rows.gather(params, ids)
        received = gram = in_combination = None
        # sparse rows: the rows the tasks share are read once, as on the separate path, so
        # their gradient is a sum, not added by index (atomic adds on the CPU) per lookup
        read_once = bool(self.rows) and not self.per_task
        values, send = (
            self._shared_values(params, batch, tables_only=read_once)
            if self.per_task or read_once
            else ({}, None)
        )
        tasks = self.engine.tasks
        if not values:  # one gradient of the weighted total
            by_id = {}

            def total(ps):
                out, weights = self._call(ps, "losses", batch)
                return out[LOSS], (out, _tensors(weights))

            grads, (out, weights) = grad(total, has_aux=True)(params)
        elif read_once:  # one copy of the shared rows, read by every task

            def total(ps, rows):
                out, weights = self._call(ps, "losses", batch, dict.fromkeys(tasks, rows))
                return out[LOSS], (out, _tensors(weights))

            rows = {key: value.detach() for key, value in values.items()}
            (grads, got), (out, weights) = grad(total, argnums=(0, 1), has_aux=True)(params, rows)
            grads, by_id = send(list(grads), list(got.values()))
        else:  # each task's gradient on its own copy of the shared values, then combined
            copies = {task: {k: v.detach() for k, v in values.items()} for task in tasks}

            def total(ps, rows):
                out, weights = self._call(ps, "losses", batch, rows)
                return out[LOSS], (out, _tensors(weights))

            (grads, got), (out, weights) = grad(total, argnums=(0, 1), has_aux=True)(params, copies)
            received = torch.stack(
                [torch.cat([got[task][key].reshape(-1) for key in values]) for task in tasks]
            )
            gram = received @ received.T
            parts = [v.numel() for v in values.values()]
            combined, in_combination = self.engine.weighting.shared_gradient(
                received, gram, tuple(parts)
            )
            pieces = [
                p.view_as(v) for p, v in zip(combined.split(parts), values.values(), strict=True)
            ]
            grads, by_id = send(list(grads), pieces)
        for g, positions in enumerate(self.dense_of):  # under no_grad
            dense = [self.dense[k] for k in positions]
            self._adam(
                self.groups[g],
                [tables[i] for i in dense],
                [grads[i] for i in dense],
                [exp_avgs[i] for i in dense],
                [exp_avg_sqs[i] for i in dense],
                [step_counts[k] for k in positions],
                scalars[3 * g : 3 * g + 3],
            )
        if self.rows:
            self.rows.update(
                tables,
                params,
                grads,
                by_id,
                exp_avgs,
                exp_avg_sqs,
                ids,
                by_field,
                scalars[3 * len(self.groups) :],
                self.group,
            )
        out = {name: value.detach() for name, value in out.items()}
        weights = weights[0].detach() if weights else None
        return out, received, gram, weights, in_combination

    def _shared_values(self, params, batch, tables_only=False):
        """What the tasks share for the batch as tensors, and ``send(grads, pieces)``: the
        parameters' gradients plus what ``pieces`` (a gradient per value) gives them, and the
        rows of sparse tables that get them (``{index: [(positions, rows), ...]}``).
        ``tables_only``: nothing unless the tasks share table rows only."""
        shared = self._call(params, "shared", batch)
        if all(isinstance(part, TableRows) for part in shared.values()):
            # a table's rows: gathered, their gradient added to the table's by row
            tables = [self.tables[id(part.table)] for part in shared.values()]
            values = {
                key: F.embedding(part.ids, params[i])
                for (key, part), i in zip(shared.items(), tables, strict=True)
            }

            def send(grads, pieces):
                by_id = {}
                for part, piece, i in zip(shared.values(), pieces, tables, strict=True):
                    if i in self.rows.indices:  # summed by id with the rest, in the update
                        by_id.setdefault(i, []).append(part.rows(piece))
                    else:
                        grads[i] = grads[i].index_add(0, *part.rows(piece))
                return grads, by_id

            return values, send
        if tables_only:
            return {}, None
        values, pullback = vjp(lambda ps: self._call(ps, "shared_values", batch), params)

        def send(grads, pieces):
            (extra,) = pullback(dict(zip(values, pieces, strict=True)))
            return [g + e for g, e in zip(grads, extra, strict=True)], {}

        return values, send

    def _adam(self, group, params, grads, exp_avgs, exp_avg_sqs, step_counts, scalars):
        """Adam's update (Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR
        2015) as ``torch.optim.Adam`` and ``AdamW`` compute it for each parameter of
        ``group`` (its settings)."""
        if not params:
            return
        beta1, beta2 = group["betas"]
        decay, eps = group["weight_decay"], group["eps"]
        step_size, correction, shrink = scalars.to(params[0].dtype).unbind()
        torch._foreach_add_(step_counts, 1)
        if decay and group["decoupled_weight_decay"]:  # AdamW's, or Adam's with it set
            torch._foreach_mul_(params, shrink)
        elif decay:
            grads = torch._foreach_add(grads, params, alpha=decay)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denominators, correction)
        torch._foreach_add_(denominators, eps)
        updates = torch._foreach_div(exp_avgs, denominators)
        torch._foreach_mul_(updates, step_size)
        torch._foreach_sub_(params, updates)


def _tensors(weights: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The loss weights as ``torch.func`` passes auxiliary outputs: tensors only."""
    return () if weights is None else (weights,)
