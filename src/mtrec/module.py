"""The LightningModule: the losses of the net's heads, their weighted total, held-out metrics,
the optimizer and its schedule."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from mtrec import losses
from mtrec.data.interactions import HeldOut
from mtrec.metrics import evaluate


class RecommenderModule(L.LightningModule):
    """Trains any net of :mod:`mtrec.models` on the heads it declares.

    Loss: ``factorization_weight * F + regression_weight * R + penalties``, where a head the
    net lacks contributes nothing (``regression_weight=None`` means ``1 - factorization_weight``).
    ``negative_rating_ratio > 0`` adds that many sampled negatives per observed rating to the
    regression, with rating 0 (pointwise training on implicit feedback). ``optimizer`` builds
    the optimizer from the parameters (default: Adam, learning rate 1e-3); ``scheduler``, if
    given, builds a learning-rate scheduler stepped once per epoch.
    """

    def __init__(
        self,
        net: nn.Module,
        factorization_loss: str = "bounded_bpr",
        factorization_weight: float = 0.99,
        regression_weight: float | None = None,
        negative_rating_ratio: int = 0,
        l1: float = 0.0,
        l2: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        top_k: int = 10,
    ):
        super().__init__()
        # Only plain values go into checkpoints, so they load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.heads = tuple(net.heads)
        self.factorization_loss = losses.factorization_loss(factorization_loss)
        self.factorization_weight = factorization_weight
        self.regression_weight = (
            1.0 - factorization_weight if regression_weight is None else regression_weight
        )
        self.make_optimizer = optimizer or partial(torch.optim.Adam, lr=1e-3)
        self.make_scheduler = scheduler
        terms = ["loss"]
        terms += ["factorization_loss"] if "interaction" in self.heads else []
        terms += ["regression_loss"] if "rating" in self.heads else []
        # Epoch means accumulate on the device: no host synchronisation per step.
        self.train_means = nn.ModuleDict({name: MeanMetric() for name in terms})

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        terms = self.losses(batch)
        for name, value in terms.items():
            self.train_means[name].update(value.detach())
        return terms["loss"]

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
        if self.hparams.l1 or self.hparams.l2:
            total = total + losses.penalty(self.parameters(), self.hparams.l1, self.hparams.l2)
        terms["loss"] = total
        return terms

    def on_train_epoch_end(self) -> None:
        for name, mean in self.train_means.items():
            self.log(f"train/{name}", mean.compute())
            mean.reset()

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
        optimizer = self.make_optimizer(self.parameters())
        if self.make_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.make_scheduler(optimizer)}
