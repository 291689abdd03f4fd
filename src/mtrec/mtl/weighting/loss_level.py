"""Loss-level strategies: each task's loss gets a weight, learned, scheduled or drawn.

Every one records the weights it used under ``losses["weights"]`` (TASKS order), which the
gradient diagnostics read as ``mtl/weight/<task>``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch
from torch import nn

from mtrec.errors import ConfigError
from mtrec.mtl.objective import PENALTY
from mtrec.mtl.tasks import RATING, TASKS
from mtrec.mtl.weighting.base import WEIGHTS, Weighting

log = logging.getLogger(__name__)
NUM_TASKS = len(TASKS)


def _stacked(losses: Mapping[str, torch.Tensor]) -> tuple[list[str], torch.Tensor]:
    names = [task.name for task in TASKS if task.name in losses]
    return names, torch.stack([losses[name] for name in names])


def _with_penalty(total: torch.Tensor, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return total + losses[PENALTY] if PENALTY in losses else total


class Uncertainty(Weighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, "Multi-Task Learning
    Using Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018).

    Learned ``s_t = log sigma_t^2`` per task: the rating (regression) term is
    ``1/2 e^{-s} L + 1/2 s``, the interaction (classification-style) term ``e^{-s} L + 1/2 s``.
    ``mtl/log_variance/<task>`` logs ``s_t``.
    """

    def __init__(self, initial_log_variance: float = 0.0):
        super().__init__()
        self.log_variance = nn.Parameter(torch.full((NUM_TASKS,), float(initial_log_variance)))
        scale = [0.5 if task is RATING else 1.0 for task in TASKS]
        self.register_buffer("scale", torch.tensor(scale))

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        index = [i for i, task in enumerate(TASKS) if task.name in losses]
        _, stacked = _stacked(losses)
        s = self.log_variance[index]
        weights = self.scale[index] * torch.exp(-s)
        losses[WEIGHTS] = weights.detach()
        return _with_penalty((weights * stacked).sum() + 0.5 * s.sum(), losses)

    def logged(self) -> dict[str, torch.Tensor]:
        return {
            f"log_variance/{task.name}": self.log_variance[i].detach()
            for i, task in enumerate(TASKS)
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
        self.register_buffer("history", torch.zeros(2, NUM_TASKS))  # epochs e-2, e-1
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("weights", torch.ones(NUM_TASKS))

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        index = [i for i, task in enumerate(TASKS) if task.name in losses]
        _, stacked = _stacked(losses)
        weights = self.weights[index]
        losses[WEIGHTS] = weights
        return _with_penalty((weights * stacked).sum(), losses)

    def on_train_epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        means = [float(epoch_losses.get(task.name, 1.0)) for task in TASKS]
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

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        _, stacked = _stacked(losses)
        weights = torch.softmax(torch.randn(len(stacked), device=stacked.device), dim=0)
        losses[WEIGHTS] = weights
        return _with_penalty((weights * stacked).sum(), losses)


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
        self.weights = nn.Parameter(torch.ones(NUM_TASKS))
        self.register_buffer("initial_losses", torch.zeros(NUM_TASKS))
        self.warned = False

    def combine(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        index = [i for i, task in enumerate(TASKS) if task.name in losses]
        _, stacked = _stacked(losses)
        weights = self.weights[index].detach()
        losses[WEIGHTS] = weights
        return _with_penalty((weights * stacked).sum(), losses)

    def backward(self, losses, total, backward: Callable, copies=None):
        received = super().backward(losses, total, backward, copies)
        if received is None:
            if not self.warned:
                log.warning("weighting=gradnorm: the tasks share nothing; the weights stay 1")
                self.warned = True
            return None
        _, stacked = _stacked(losses)
        self.weights.grad = gradnorm_gradient(
            self.weights.detach(), received, stacked.detach(), self.initial_losses, self.alpha
        )
        return received

    def after_step(self) -> None:
        with torch.no_grad():
            self.weights.clamp_(min=1e-3).mul_(len(self.weights) / self.weights.sum())

    def check(self, tasks: tuple[str, ...], shares: bool) -> None:
        if len(tasks) < 2:
            raise ConfigError("weighting=gradnorm balances two tasks: this net has one head.")


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
