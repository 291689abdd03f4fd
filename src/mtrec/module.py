"""The LightningModule: two losses, one weighted total, held-out metrics, the optimizer."""

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


class MultiTaskModule(L.LightningModule):
    """Trains a two-headed net with ``factorization_weight * F + regression_weight * R``.

    ``regression_weight=None`` means ``1 - factorization_weight``. The net is any module with
    ``forward(users, items) -> (logits, ratings)``, ``interaction_logits``, ``ratings`` and
    ``score_all_items``. ``optimizer`` builds the optimizer from the parameters (default: Adam,
    learning rate 1e-3).
    """

    def __init__(
        self,
        net: nn.Module,
        factorization_loss: str = "bounded_bpr",
        factorization_weight: float = 0.99,
        regression_weight: float | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        top_k: int = 10,
    ):
        super().__init__()
        # Only plain values go into checkpoints, so they load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["net", "optimizer"], logger=False)
        self.make_optimizer = optimizer or partial(torch.optim.Adam, lr=1e-3)
        self.net = net
        self.factorization_loss = losses.factorization_loss(factorization_loss)
        self.factorization_weight = factorization_weight
        self.regression_weight = (
            1.0 - factorization_weight if regression_weight is None else regression_weight
        )
        # Epoch means accumulate on the device: no host synchronisation per step.
        self.train_means = nn.ModuleDict(
            {name: MeanMetric() for name in ("loss", "factorization_loss", "regression_loss")}
        )

    def forward(self, users: torch.Tensor, items: torch.Tensor):
        return self.net(users, items)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        users = batch["users"]
        positive, predicted = self.net(users, batch["items"])
        negative = self.net.interaction_logits(users.unsqueeze(-1), batch["negatives"])
        terms = {
            "factorization_loss": self.factorization_loss(positive, negative),
            "regression_loss": losses.regression_loss(predicted, batch["ratings"]),
        }
        terms["loss"] = (
            self.factorization_weight * terms["factorization_loss"]
            + self.regression_weight * terms["regression_loss"]
        )
        for name, value in terms.items():
            self.train_means[name].update(value.detach())
        return terms["loss"]

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

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.parameters())
