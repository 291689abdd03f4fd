"""The LightningModule, glue between Lightning and the step engine (:mod:`mtrec.mtl.step`):
chunks of steps, the optimizer and its schedule, DDP, logging, held-out metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial

import lightning as L
import torch
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mtrec.data.interactions import HeldOut
from mtrec.errors import ConfigError, TrainingDiverged
from mtrec.lightning_internals import check_internals, count_optimizer_steps
from mtrec.models import MultiTaskNet
from mtrec.models.protocol import Gated, Parts, Represents
from mtrec.mtl.collapse import collapse
from mtrec.mtl.evaluation import evaluate
from mtrec.mtl.objective import Objective
from mtrec.mtl.step import LOSS, StepEngine
from mtrec.mtl.weighting import FixedWeighting, Weighting
from mtrec.training import legacy
from mtrec.training.compiled_step import CompiledStep, unsupported
from mtrec.training.optim import check_sparse_ddp, check_sparse_rows, row_sparse

log = logging.getLogger(__name__)
COMPILE = ("step", "loss", False)  # model.compile: the whole step, the loss alone, nothing


class RecommenderModule(L.LightningModule):
    """Trains any net of :mod:`mtrec.models` on the ``objective``'s tasks (a head of the net
    per task, checked once here).

    Each step (:class:`~mtrec.mtl.step.StepEngine`) the ``objective`` gives every task's
    unweighted loss (and the penalties), and the ``weighting`` turns them into gradients
    (default: fixed weights, each task's declared one: the reference's 0.99 / 0.01).
    ``optimizer`` builds the optimizer from the parameters (default: Adam, learning rate 1e-3);
    ``scheduler``, if given, builds a learning-rate scheduler stepped once per epoch.

    Each ``training_step`` receives a chunk of mini-batches
    (:class:`~mtrec.data.datamodule.Chunks`) and takes one optimizer step per mini-batch: the
    arithmetic of one step per batch, without the Trainer's per-call overhead. On one device
    in full precision a step is plain ``backward()`` and ``optimizer.step()``, which is what
    Lightning's wrappers would run, minus their per-step callback hooks. ``step_hooks`` sends
    every step through Lightning (``manual_backward``, ``LightningOptimizer.step``) so that
    ``on_before_backward``, ``on_after_backward`` and ``on_before_optimizer_step`` run;
    multi-device strategies and mixed precision always go that way.

    ``compile="step"`` (or ``True``) compiles each plain step whole: forward, gradients, the
    weighting and Adam's update in one graph (:class:`~mtrec.training.compiled_step.CompiledStep`),
    the optimizer's state kept in the optimizer. Where it cannot (another optimizer, hooks,
    several devices) it says so once and runs ``compile="loss"``: the objective
    and a loss-level weighting (forward and backward) through ``torch.compile``, autograd and
    the optimizer apart, eager where compiling fails. ``False``: nothing compiled. Per-step
    losses are written to the loggers every ``trainer.log_every_n_steps`` optimizer steps
    (``train_step/...``).

    ``sparse_rows``: the net's embedding tables give sparse gradients and are updated row by
    row (:class:`~mtrec.training.optim.RowSparseAdam`, built from ``optimizer``'s Adam
    arguments), so a step costs what its batch reads, not the catalogue. ``compile="step"``
    keeps the tables out of sparse tensors: the step reads and updates the batch's rows
    inside its graph (:mod:`mtrec.training.batch_rows`); otherwise the row update is
    compiled apart and the objective runs eagerly, and on one device the rows the tasks
    share are gathered once per step and read by every lookup (one sparse gradient per
    table).

    Per-task gradients on what the tasks share (each task's own copy of the batch's shared
    rows) are taken when the weighting needs them (gradient-level strategies, GradNorm) or
    ``diagnostics=true``; the gradient diagnostics (``mtl/...``, epoch means) are logged
    whenever they are taken (``diagnostics="auto"``), never with ``diagnostics=false``.
    """

    automatic_optimization = False

    def __init__(
        self,
        net: nn.Module,
        objective: Objective | None = None,
        weighting: Weighting | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        top_k: int = 10,
        compile: bool | str = False,
        step_hooks: bool = False,
        diagnostics: bool | str = "auto",
        sparse_rows: bool = False,
        parts: Mapping[str, Mapping] | None = None,
    ):
        super().__init__()
        parts = {name: dict(settings) for name, settings in (parts or {}).items()}
        compile = "step" if compile is True else compile
        if compile not in COMPILE:
            raise ConfigError(
                f"model.compile={compile} is not valid: use step (the whole training step "
                "compiled), loss (the loss alone, the step's parts apart) or false."
            )
        # Only plain values go into checkpoints, so they load with torch.load(weights_only=True).
        ignored = ["net", "objective", "weighting", "optimizer", "scheduler"]
        self.save_hyperparameters(ignore=ignored, logger=False)
        self.net = net
        self.objective = objective or Objective()
        self.weighting = weighting or FixedWeighting()  # each task's declared weight
        # sparse gradients cannot be compiled: the tables' row updates are, in the optimizer;
        # sparse rows: the shared rows gathered once per step (one sparse gradient per table)
        self.engine = StepEngine(
            net,
            self.objective,
            self.weighting,
            compile=compile == "loss" and not sparse_rows,
            diagnostics=diagnostics,
            read_once=sparse_rows,
        )
        self.tasks = self.objective.tasks  # the Task objects, in order
        self.task_gradients = self.engine.task_gradients
        self.make_optimizer = optimizer or partial(torch.optim.Adam, lr=1e-3)
        if sparse_rows:
            self._sparse_tables(bool(compile))
        self.make_scheduler = scheduler
        # Sums of the loss terms over the epoch, on the device: no host synchronisation per step.
        self.loss_sums: dict[str, torch.Tensor] = {}
        self.steps_in_epoch = 0
        # the epoch's mtl/... values, ready when its training ends (before its evaluation)
        self.epoch_diagnostics: dict[str, torch.Tensor] = {}
        # the parameters whose gradients are averaged over DDP ranks by this module, if any
        self.synced_gradients: list[nn.Parameter] | None = None
        # the whole step compiled (model.compile=step), made after the run's first step
        self.compiled_step: CompiledStep | None = None
        self.compile_step = False

    def _sparse_tables(self, compile: bool) -> None:
        """Sparse row updates: every embedding table gives sparse gradients (the rows the
        batch read) and is updated row by row (:class:`~mtrec.training.optim.RowSparseAdam`)."""
        tables = [m for m in self.net.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
        if not tables:
            raise ConfigError(
                f"model.sparse_rows=true: {type(self.net).__name__} has no embedding tables to "
                "update row by row. Fix: model.sparse_rows=false."
            )
        check_sparse_rows(self.objective.l1, self.objective.l2)
        for table in tables:
            table.sparse = True
        self.make_optimizer = row_sparse(self.make_optimizer, compile)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint of the multi-task net from before its parts had names loads as it is
        (:mod:`mtrec.training.legacy`)."""
        saved = checkpoint["state_dict"]
        if isinstance(self.net, MultiTaskNet) and legacy.is_legacy(saved):
            checkpoint["state_dict"] = legacy.renamed(saved, self.net)
            for optimizer in checkpoint.get("optimizer_states", ()):
                legacy.reordered_optimizer(optimizer, saved, self)

    def on_fit_start(self) -> None:
        check_internals(self.trainer)
        # The plain step (backward(), optimizer.step()) is what Lightning's wrappers run
        # on one device in full precision, minus the per-step callback hooks and their cost.
        one_device = isinstance(self.trainer.strategy, SingleDeviceStrategy)
        full_precision = type(self.trainer.precision_plugin) is Precision
        self.plain_steps = not self.hparams.step_hooks and one_device and full_precision
        data_parallel = isinstance(self.trainer.strategy, DDPStrategy)
        if self.task_gradients and not ((one_device or data_parallel) and full_precision):
            raise ConfigError(
                f"{type(self.weighting).__name__} (or model.diagnostics=true) takes each task's "
                "gradient on the shared rows, which runs in full precision on one device or "
                f"under DDP only (not {type(self.trainer.strategy).__name__}, "
                f"precision {self.trainer.precision}). Fix: trainer=default, gpu or ddp "
                "without trainer.precision, or weighting=fixed."
            )
        if self.hparams.sparse_rows and self.task_gradients and data_parallel:
            check_sparse_ddp(type(self.weighting).__name__)
        if data_parallel:  # DDP's reducer takes the tables' gradients from the backward pass
            self.engine.read_once = False
        self.compiled_step = None  # made again after this fit's first step
        self.compile_step = self.hparams.compile == "step" and self.trainable
        if self.compile_step:
            why = self._why_not_compiled_whole()
            if why is not None:  # one line, then the step as under model.compile=loss
                log.info("model.compile=step: %s; the step runs as with model.compile=loss", why)
                self.compile_step = False
                if not self.hparams.sparse_rows:
                    self.engine.use_compiler()

    def _why_not_compiled_whole(self) -> str | None:
        """Why this run's steps cannot be compiled whole, or ``None``."""
        if self.hparams.step_hooks:
            return "model.step_hooks=true sends each step through Lightning"
        if not self.plain_steps:
            strategy = type(self.trainer.strategy).__name__
            return f"{strategy} with precision {self.trainer.precision} steps through Lightning"
        return unsupported(self.optimizers().optimizer, self.engine)

    def on_train_start(self) -> None:
        # Under DDP a step's gradients are averaged over the ranks once, after the tasks'
        # gradients are combined: DDP's own hooks would see the shared tables' gradient only
        # in part (it reaches them after the backward pass), so they are kept out (no_sync).
        if self.task_gradients and isinstance(self.trainer.strategy.model, DistributedDataParallel):
            self.synced_gradients = [p for p in self.parameters() if p.requires_grad]

    def _average_gradients(self) -> None:
        """One all-reduce per step: every rank's gradients (zeros where none), averaged."""
        parameters = self.synced_gradients
        flat = torch.cat(
            [
                p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel())
                for p in parameters
            ]
        )
        flat = self.trainer.strategy.reduce(flat, reduce_op="mean")
        for p, grad in zip(parameters, flat.split([p.numel() for p in parameters]), strict=True):
            p.grad = grad.view_as(p)

    @property
    def trainable(self) -> bool:
        """False for nets fitted in closed form when built (popularity, EASE)."""
        return any(p.requires_grad for p in self.parameters())

    def training_step(self, chunk: list[dict[str, torch.Tensor]], chunk_idx: int) -> None:
        if not self.trainable:
            return
        optimizer = self.optimizers()
        steps_before = self.trainer.global_step
        backward = torch.Tensor.backward if self.plain_steps else self.manual_backward
        step_losses = []
        for batch in chunk:
            if self.compiled_step is not None:
                losses = self.compiled_step.step(batch)
            else:
                losses = self._separate_step(batch, optimizer, backward)
                if self.compile_step:  # this step built Adam's state: the rest are compiled
                    self.compiled_step = CompiledStep(self.engine, optimizer.optimizer)
            self.weighting.after_step()
            step_losses.append({name: value.detach() for name, value in losses.items()})
        per_step = {name: torch.stack([s[name] for s in step_losses]) for name in step_losses[0]}
        if not torch.isfinite(per_step[LOSS].sum()):  # one check per chunk, not per step
            self._diverged(per_step[LOSS], steps_before)
        for name, values in per_step.items():  # summed once per chunk
            self.loss_sums[name] = self.loss_sums.get(name, 0.0) + values.sum()
        self.steps_in_epoch += len(chunk)
        count_optimizer_steps(self.trainer, len(chunk), counted_by_lightning=not self.plain_steps)
        self._log_steps(per_step, steps_before)
        if chunk_idx + 1 == self.trainer.num_training_batches:  # the epoch's training is done
            self.epoch_diagnostics = self._diagnostics()

    def stop_task(self, task: str) -> None:
        """Stop training ``task``: its loss weight 0, its own parameters frozen (the net's
        :meth:`~mtrec.models.protocol.Parts.task_parameters`); the other tasks train on."""
        self.engine.stop(task)
        for parameter in self.net.task_parameters(task):
            parameter.requires_grad_(False)
            parameter.grad = None  # Adam leaves a parameter without a gradient alone
        # its graph trained every task: a compiled step is made again after the next step,
        # without the frozen parameters
        self.compiled_step = None

    def _separate_step(self, batch, optimizer, backward) -> dict[str, torch.Tensor]:
        """One step with its parts apart: the engine's losses and gradients, then the
        optimizer (through Lightning's wrapper unless the steps are plain)."""
        optimizer.optimizer.zero_grad()
        if self.synced_gradients is None:
            losses = self.engine.step(batch, backward)
        else:
            with self.trainer.strategy.model.no_sync():
                losses = self.engine.step(batch, backward)
            self._average_gradients()
        if self.plain_steps:
            optimizer.optimizer.step()
        else:
            optimizer.step()
        return losses

    def _diagnostics(self) -> dict[str, torch.Tensor]:
        """This epoch's ``mtl/...`` values: the engine's, the gates' use of gated nets, and
        how collapsed the vectors each task reads are (:mod:`mtrec.mtl.collapse`)."""
        values = self.engine.epoch_diagnostics()
        if isinstance(self.net, Gated):
            values |= {f"mtl/{name}": value for name, value in self.net.gate_use().items()}
        if isinstance(self.net, Represents):
            values |= {f"mtl/{name}": v for name, v in collapse(self.net.vectors()).items()}
        return values

    def _log_steps(self, per_step: dict[str, torch.Tensor], steps_before: int) -> None:
        """Write the losses of every ``log_every_n_steps``-th optimizer step, at that step."""
        every = self.trainer.log_every_n_steps
        if not every or not self.loggers:
            return
        first = (-(steps_before + 1)) % every  # the chunk's first step i with (i + 1) % every == 0
        picked = list(range(first, len(per_step[LOSS]), every))
        if not picked:
            return
        values = {name: per_step[name][picked].tolist() for name in per_step}  # one sync
        for j, index in enumerate(picked):
            metrics = {f"train_step/{_logged(name)}": values[name][j] for name in values}
            for logger in self.loggers:
                logger.log_metrics(metrics, step=steps_before + index)

    def _diverged(self, step_losses: torch.Tensor, steps_before: int) -> None:
        """Stop with the first non-finite step. The checkpoint of the last finished epoch and
        metrics.json stay as they were: nothing diverged is saved over them."""
        first = int((~torch.isfinite(step_losses)).nonzero()[0])
        optimizer = self.optimizers().optimizer
        lr = optimizer.param_groups[0]["lr"]
        checkpoint = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or None
        raise TrainingDiverged(
            f"The training loss became {float(step_losses[first])} at epoch "
            f"{self.current_epoch} (counted from 0, as the progress bar), optimizer step "
            f"{steps_before + first + 1}, batch {self.steps_in_epoch + first + 1} "
            f"of the epoch. Likely cause: a learning rate too high for this model "
            f"(optimizer.lr={lr:g}), or very large l1/l2 penalties. Fix: lower it, e.g. "
            f"optimizer.lr={lr / 10:g}. "
            + (
                f"The last finished epoch's checkpoint is kept: {checkpoint}."
                if checkpoint
                else "No epoch had finished, so there is no checkpoint."
            )
        )

    def on_train_epoch_end(self) -> None:
        if not self.trainable:  # later epochs would only repeat the same evaluation
            self.trainer.should_stop = True
        means = {name: total / self.steps_in_epoch for name, total in self.loss_sums.items()}
        for name, mean in means.items():
            self.log(f"train/{_logged(name)}", mean, sync_dist=True)
        if means:
            self.weighting.on_train_epoch_end(
                {t.name: float(means[t.name]) for t in self.tasks if t.name in means}
            )
        self.log_dict(self.epoch_diagnostics)
        self.loss_sums, self.steps_in_epoch, self.epoch_diagnostics = {}, 0, {}
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def validation_step(self, held: HeldOut, batch_idx: int) -> None:
        self._evaluate(held)

    def test_step(self, held: HeldOut, batch_idx: int) -> None:
        self._evaluate(held)

    def _evaluate(self, held: HeldOut) -> None:
        metrics = evaluate(self.net, held, self.hparams.top_k, tasks=self.objective.tasks)
        self.log_dict(
            {f"{held.name}/{name}": value for name, value in metrics.items()},
            batch_size=len(held.users),
        )

    def configure_optimizers(self):
        if not self.trainable:
            return None
        optimizer = self.make_optimizer(self._parameter_groups())
        if self.make_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.make_scheduler(optimizer)}

    def _parameter_groups(self):
        """The parameters, or with ``parts`` (part of the net -> optimizer settings, e.g.
        ``{"encoders": {"lr": 1e-4}}``) one group per part so set, after the group of the
        rest, which takes the optimizer's own settings."""
        parts = self.hparams.parts
        if not parts:
            return self.parameters()
        check_parts(parts, type(self.net), self.objective.names)
        named, chosen, groups = self.net.parts(), set(), []
        for name, settings in parts.items():
            params = [p for p in named[name] if p.requires_grad]
            chosen.update(id(p) for p in params)
            groups += [{"params": params, **settings}] if params else []
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in chosen]
        return [{"params": rest}, *groups]


def check_parts(parts: Mapping[str, Mapping], net_class: type, tasks) -> None:
    """``model.parts`` names parts the net has (:class:`~mtrec.models.protocol.Parts`); checked
    when the optimizer is built, and by config validation before any work."""
    if not parts:
        return
    if not issubclass(net_class, Parts):
        raise ConfigError(
            f"model.parts: {net_class.__name__} does not name its parts, so no part can get "
            "optimizer settings of its own. Fix: leave model.parts out, or model=multitask."
        )
    known = net_class.part_names(tuple(tasks))
    for name, settings in parts.items():
        if name not in known:
            raise ConfigError(
                f"model.parts.{name}: {net_class.__name__} has no part {name}; its parts are "
                f"{', '.join(known)}. Fix: e.g. +model.parts.{known[0]}.lr=0.01."
            )
        if not isinstance(settings, Mapping):
            raise ConfigError(
                f"model.parts.{name}={settings} is not valid: give the part's optimizer "
                f"settings, e.g. +model.parts.{name}.lr=0.01."
            )


def _logged(name: str) -> str:
    """``train/loss`` for the total, ``train/<task>_loss`` for a task, ``train/penalty``."""
    return name if name in (LOSS, "penalty") else f"{name}_loss"
