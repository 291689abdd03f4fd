"""Loss-level strategies: each task's loss gets a weight, learned, scheduled or drawn, for
any number of tasks (state sized in :meth:`~mtrec.mtl.weighting.base.Weighting.bind`).

The step engine logs the weights they return as ``mtl/weight/<task>``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mtrec.errors import ConfigError
from mtrec.mtl.tasks import Task
from mtrec.mtl.weighting.base import Weighting

log = logging.getLogger(__name__)


class Uncertainty(Weighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, "Multi-Task Learning
    Using Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018).

    Learned ``s_t = log sigma_t^2`` per task: a regression task's term (rating) is
    ``1/2 e^{-s} L + 1/2 s``, a classification-style one's (interaction, like)
    ``e^{-s} L + 1/2 s``. ``mtl/log_variance/<task>`` logs ``s_t``.
    """

    def __init__(self, initial_log_variance: float = 0.0):
        super().__init__()
        self.initial = float(initial_log_variance)

    def bind(self, tasks: Sequence[Task]) -> None:
        super().bind(tasks)
        self.log_variance = nn.Parameter(torch.full((len(self.tasks),), self.initial))
        scale = [0.5 if task.regression else 1.0 for task in self.tasks]
        self.register_buffer("scale", torch.tensor(scale))

    def loss_weights(self, losses: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.exp(-self.log_variance)

    def extra_loss(self) -> torch.Tensor:
        return 0.5 * self.log_variance.sum()

    def logged(self) -> dict[str, torch.Tensor]:
        return {
            f"log_variance/{name}": self.log_variance[i].detach()
            for i, name in enumerate(self.names)
        }


class DWA(Weighting):
    """Dynamic Weight Average (Liu, Johns and Davison, "End-to-End Multi-Task Learning with
    Attention", CVPR 2019): ``w_t(e) = K softmax_t(r_t(e-1) / T)`` with
    ``r_t(e-1) = L_t(e-1) / L_t(e-2)`` of epoch-mean losses; weights 1 for the first two epochs.
    The loss history lives in buffers, so it travels in checkpoints."""

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        if not temperature > 0:
            raise ConfigError(
                f"weighting.temperature={temperature} is not valid: use a number > 0, e.g. 2 "
                "(the paper's value)."
            )
        self.temperature = float(temperature)

    def bind(self, tasks: Sequence[Task]) -> None:
        super().bind(tasks)
        count = len(self.tasks)
        self.register_buffer("history", torch.zeros(2, count))  # epochs e-2, e-1
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("weights", torch.ones(count))

    def loss_weights(self, losses: torch.Tensor) -> torch.Tensor:
        return self.weights

    def on_train_epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        means = [float(epoch_losses.get(name, 1.0)) for name in self.names]
        self.history[0] = self.history[1].clone()
        self.history[1] = torch.tensor(means, device=self.history.device)
        self.epochs_seen += 1
        if int(self.epochs_seen) >= 2:
            self.weights.copy_(dwa_weights(self.history[1], self.history[0], self.temperature))


def dwa_weights(last: torch.Tensor, before: torch.Tensor, temperature: float) -> torch.Tensor:
    """``K softmax(r / T)`` with ``r = last / before`` (epoch-mean losses)."""
    return len(last) * torch.softmax((last / before) / temperature, dim=0)


class RLW(Weighting):
    """Random loss weighting (Lin et al., "Reasonable Effectiveness of Random Weighting: A
    Litmus Test for Multi-Task Learning", TMLR 2022): every step the weights are
    ``softmax`` of standard normal draws, from the run's seeded generator."""

    def loss_weights(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.randn(len(losses), device=losses.device), dim=0)


class GradNorm(Weighting):
    """GradNorm (Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in
    Deep Multitask Networks", ICML 2018), on the rows the tasks share.

    Learned weights ``w_t`` (sum K). Each step, with ``G_t = w_t ||g_t||`` the norm of the
    weighted task gradient on the shared rows, ``r_t`` the task's loss ratio ``L_t / L_t(0)``
    over its mean across tasks and ``alpha`` the asymmetry, the weights follow the gradient of
    ``sum_t |G_t - mean(G) r_t^alpha|`` (targets held constant), then are renormalised.
    """

    task_gradients = True

    def __init__(self, alpha: float = 1.5):
        super().__init__()
        if not alpha >= 0:
            raise ConfigError(
                f"weighting.alpha={alpha} is not valid: use a number >= 0, e.g. 1.5 "
                "(0: equal gradient norms)."
            )
        self.alpha = float(alpha)
        self.warned = False

    def bind(self, tasks: Sequence[Task]) -> None:
        super().bind(tasks)
        self.weights = nn.Parameter(torch.ones(len(self.tasks)))
        self.register_buffer("initial_losses", torch.zeros(len(self.tasks)))

    def loss_weights(self, losses: torch.Tensor) -> torch.Tensor:
        return self.weights.detach()

    def after_backward(
        self, received: torch.Tensor | None, losses: Mapping[str, torch.Tensor]
    ) -> None:
        if received is None:
            if not self.warned:
                log.warning("weighting=gradnorm: the tasks share nothing; the weights stay 1")
                self.warned = True
            return
        self.weights.grad = gradnorm_gradient(
            self.weights.detach(),
            received,
            torch.stack([losses[name].detach() for name in self.names]),
            self.initial_losses,
            self.alpha,
        )

    def after_step(self) -> None:
        with torch.no_grad():
            self.weights.clamp_(min=1e-3).mul_(len(self.weights) / self.weights.sum())

    def check(self, tasks: tuple[str, ...], shares: bool) -> None:
        if len(tasks) < 2:
            raise ConfigError("weighting=gradnorm balances tasks: this run trains one.")


def gradnorm_gradient(
    weights: torch.Tensor,
    received: torch.Tensor,
    losses: torch.Tensor,
    initial: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """The gradient of GradNorm's loss with respect to the weights. ``received`` holds each
    task's weighted gradient (one row per task); ``initial`` the first losses, filled on the
    first call."""
    if not bool(initial.any()):
        initial.copy_(losses)
    norms = received.norm(dim=1)  # G_t = w_t ||g_t||
    ratios = losses / initial
    targets = norms.mean() * (ratios / ratios.mean()) ** alpha
    return torch.sign(norms - targets) * norms / weights.clamp(min=1e-12)
