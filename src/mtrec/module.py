"""The LightningModule: the losses of the net's heads, their weighted total, held-out metrics,
the optimizer and its schedule."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import lightning as L
import torch
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import nn

from mtrec import losses
from mtrec.compile import compile_or_eager
from mtrec.data.interactions import HeldOut
from mtrec.errors import ConfigError, TrainingDiverged
from mtrec.metrics import evaluate


class RecommenderModule(L.LightningModule):
    """Trains any net of :mod:`mtrec.models` on the heads it declares.

    Loss: ``factorization_weight * F + regression_weight * R + penalties``, where a head the
    net lacks contributes nothing (``regression_weight=None`` means ``1 - factorization_weight``).
    ``negative_rating_ratio > 0`` adds that many sampled negatives per observed rating to the
    regression, with rating 0 (pointwise training on implicit feedback). ``l1`` and ``l2``
    penalise all parameters at every step; ``embedding_l2`` penalises the mean squared norm of
    the embedding rows each batch uses (nets with ``embedding_norms``), the SVD regulariser.
    ``optimizer`` builds the optimizer from the parameters (default: Adam, learning rate 1e-3);
    ``scheduler``, if given, builds a learning-rate scheduler stepped once per epoch.

    Each ``training_step`` receives a chunk of mini-batches
    (:class:`~mtrec.data.datamodule.Chunks`) and takes one optimizer step per mini-batch: the
    arithmetic of one step per batch, without the Trainer's per-call overhead. On one device
    in full precision a step is plain ``loss.backward()`` and ``optimizer.step()``, which is
    what Lightning's wrappers would run, minus their per-step callback hooks. ``step_hooks``
    sends every step through Lightning (``manual_backward``, ``LightningOptimizer.step``) so
    that ``on_before_backward``, ``on_after_backward`` and ``on_before_optimizer_step`` run;
    multi-device strategies and mixed precision always go that way. ``compile`` runs the
    losses (model and loss, forward and backward) through ``torch.compile``, falling back to
    eager execution where compiling fails.
    """

    automatic_optimization = False

    def __init__(
        self,
        net: nn.Module,
        factorization_loss: str = "bounded_bpr",
        factorization_weight: float = 0.99,
        regression_weight: float | None = None,
        negative_rating_ratio: int = 0,
        l1: float = 0.0,
        l2: float = 0.0,
        embedding_l2: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        top_k: int = 10,
        compile: bool = False,
        step_hooks: bool = False,
    ):
        super().__init__()
        # Only plain values go into checkpoints, so they load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        if embedding_l2 and not hasattr(net, "embedding_norms"):
            raise ConfigError(
                f"model.embedding_l2={embedding_l2}: {type(net).__name__} does not say which "
                "embedding rows a batch uses. Use model.l2 (all parameters) instead."
            )
        self.net = net
        self.heads = tuple(net.heads)
        self.factorization_loss = losses.factorization_loss(factorization_loss)
        self.factorization_weight = factorization_weight
        self.regression_weight = (
            1.0 - factorization_weight if regression_weight is None else regression_weight
        )
        self.make_optimizer = optimizer or partial(torch.optim.Adam, lr=1e-3)
        self.make_scheduler = scheduler
        self.step_losses = compile_or_eager(self.losses) if compile else self.losses
        # Sums of the loss terms over the epoch, on the device: no host synchronisation per step.
        self.loss_sums: dict[str, torch.Tensor] = {}
        self.steps_in_epoch = 0

    def on_fit_start(self) -> None:
        # The plain step (loss.backward(), optimizer.step()) is what Lightning's wrappers run
        # on one device in full precision, minus the per-step callback hooks and their cost.
        self.plain_steps = (
            not self.hparams.step_hooks
            and isinstance(self.trainer.strategy, SingleDeviceStrategy)
            and type(self.trainer.precision_plugin) is Precision
        )

    @property
    def trainable(self) -> bool:
        """False for nets fitted in closed form when built (popularity, EASE)."""
        return any(p.requires_grad for p in self.parameters())

    def training_step(self, chunk: list[dict[str, torch.Tensor]], chunk_idx: int) -> None:
        if not self.trainable:
            return
        optimizer = self.optimizers()
        step_terms = []
        for batch in chunk:
            optimizer.optimizer.zero_grad()
            terms = self.step_losses(batch)
            if self.plain_steps:
                terms["loss"].backward()
                optimizer.optimizer.step()
            else:
                self.manual_backward(terms["loss"])
                optimizer.step()
            step_terms.append({name: value.detach() for name, value in terms.items()})
        for name in step_terms[0]:  # summed once per chunk: a few operations, not a few per step
            per_step = torch.stack([terms[name] for terms in step_terms])
            if name == "loss" and not torch.isfinite(per_step.sum()):  # one check per chunk
                self._diverged(per_step)
            self.loss_sums[name] = self.loss_sums.get(name, 0.0) + per_step.sum()
        self.steps_in_epoch += len(chunk)
        self._count_optimizer_steps(len(chunk))

    def _diverged(self, step_losses: torch.Tensor) -> None:
        """Stop with the first non-finite step. The checkpoint of the last finished epoch and
        metrics.json stay as they were: nothing diverged is saved over them."""
        first = int((~torch.isfinite(step_losses)).nonzero()[0])
        optimizer = self.optimizers().optimizer
        lr = optimizer.param_groups[0]["lr"]
        checkpoint = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or None
        raise TrainingDiverged(
            f"The training loss became {float(step_losses[first])} at epoch "
            f"{self.current_epoch} (counted from 0, as the progress bar), optimizer step "
            f"{self.trainer.global_step + first + 1}, batch {self.steps_in_epoch + first + 1} "
            f"of the epoch. Likely cause: a learning rate too high for this model "
            f"(optimizer.lr={lr:g}), or very large l1/l2 penalties. Fix: lower it, e.g. "
            f"optimizer.lr={lr / 10:g}. "
            + (
                f"The last finished epoch's checkpoint is kept: {checkpoint}."
                if checkpoint
                else "No epoch had finished, so there is no checkpoint."
            )
        )

    def _count_optimizer_steps(self, steps: int) -> None:
        """Make Lightning count optimizer steps, not chunks: ``global_step`` (checkpoints,
        ``max_steps``) and the step axis of logged metrics stay those of one step per batch."""
        loop = self.trainer.fit_loop.epoch_loop
        if self.plain_steps:  # the bare optimizer did not tell Lightning
            progress = loop.manual_optimization.optim_step_progress
            for _ in range(steps):
                progress.increment_ready()
                progress.increment_completed()
        loop._batches_that_stepped += steps - 1  # Lightning adds one per training_step

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        users, items = batch["users"], batch["items"]
        terms, total = {}, 0.0
        if "interaction" in self.heads:
            positive = self.net.interaction_logits(users, items)
            negative = self.net.interaction_logits(users.unsqueeze(-1), batch["negatives"])
            terms["factorization_loss"] = self.factorization_loss(positive, negative)
            total = total + self.factorization_weight * terms["factorization_loss"]
        if "rating" in self.heads:
            context = {"history": batch["history"]} if "history" in batch else {}
            predicted, observed = self.net.ratings(users, items, **context), batch["ratings"]
            if self.hparams.negative_rating_ratio:
                negatives = batch["negatives"][:, : self.hparams.negative_rating_ratio]
                negative = self.net.ratings(users.unsqueeze(-1), negatives)
                predicted = torch.cat([predicted, negative.reshape(-1)])
                observed = torch.cat([observed, observed.new_zeros(negative.numel())])
            terms["regression_loss"] = losses.regression_loss(predicted, observed)
            total = total + self.regression_weight * terms["regression_loss"]
        if self.hparams.embedding_l2:  # only the rows this batch uses, as in SVD
            norms = self.net.embedding_norms(users, items)
            total = total + self.hparams.embedding_l2 * norms.mean()
        if self.hparams.l1 or self.hparams.l2:
            total = total + losses.penalty(self.parameters(), self.hparams.l1, self.hparams.l2)
        terms["loss"] = total
        return terms

    def on_train_epoch_end(self) -> None:
        if not self.trainable:  # later epochs would only repeat the same evaluation
            self.trainer.should_stop = True
        for name, total in self.loss_sums.items():
            self.log(f"train/{name}", total / self.steps_in_epoch, sync_dist=True)
        self.loss_sums, self.steps_in_epoch = {}, 0
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def validation_step(self, held: HeldOut, batch_idx: int) -> None:
        self._evaluate(held)

    def test_step(self, held: HeldOut, batch_idx: int) -> None:
        self._evaluate(held)

    def _evaluate(self, held: HeldOut) -> None:
        metrics = evaluate(self.net, held, self.hparams.top_k)
        self.log_dict(
            {f"{held.name}/{name}": value for name, value in metrics.items()},
            batch_size=len(held.users),
        )

    def configure_optimizers(self):
        if not self.trainable:
            return None
        optimizer = self.make_optimizer(self.parameters())
        if self.make_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.make_scheduler(optimizer)}
