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
from mtrec.mtl.weighting.base import EPSILON, Weighting, check_several_tasks

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
    sets_own_gradients = True

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
        check_several_tasks(tasks, "weighting=gradnorm balances")


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


class FAMO(Weighting):
    """FAMO (Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023): task
    logits ``xi`` (``z = softmax(xi)``) and the step's gradient that of
    ``sum_t z_t log L_t / c``, i.e. loss weights ``w_t = (z_t / L_t) / sum_s (z_s / L_s)``.
    After each step the logits follow ``J_z^T delta`` with ``delta_t = log L_t(before) -
    log L_t(now)`` (the previous step's losses against this one's: no extra forward pass), by
    Adam with ``step_size`` and weight decay ``decay``, the paper's 0.025 and 0.001: a task
    whose log loss fell faster gets less weight, so every log loss falls at an equal rate.
    Its state (logits, Adam's moments, the last losses) lives in buffers, so it travels in
    checkpoints; ``mtl/logit/<task>`` logs the logits.
    """

    def __init__(self, step_size: float = 0.025, decay: float = 0.001):
        super().__init__()
        for name, value, rule in (("step_size", step_size, "> 0, e.g. 0.025"),
                                  ("decay", decay, ">= 0, e.g. 0.001")):  # fmt: skip
            if not (value > 0 if name == "step_size" else value >= 0):
                raise ConfigError(
                    f"weighting.{name}={value} is not valid: use a number {rule} (the paper's)."
                )
        self.step_size, self.decay = float(step_size), float(decay)

    def bind(self, tasks: Sequence[Task]) -> None:
        super().bind(tasks)
        count = len(self.tasks)
        for name in ("logits", "first_moment", "second_moment", "previous_losses"):
            self.register_buffer(name, torch.zeros(count))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def loss_weights(self, losses: torch.Tensor) -> torch.Tensor:
        share = torch.softmax(self.logits, 0) / (losses.detach() + EPSILON)
        return share / share.sum()

    def after_backward(
        self, received: torch.Tensor | None, losses: Mapping[str, torch.Tensor]
    ) -> None:
        now = torch.stack([losses[name].detach() for name in self.names]).to(self.logits)
        if int(self.steps) > 0:
            self._follow((self.previous_losses + EPSILON).log() - (now + EPSILON).log())
        self.previous_losses.copy_(now)
        self.steps += 1

    def _follow(self, delta: torch.Tensor) -> None:
        """One Adam step of the logits along ``J_z^T delta`` (plus the decay), as torch's Adam
        with ``weight_decay`` takes it."""
        z = torch.softmax(self.logits, 0)
        gradient = z * (delta - (z * delta).sum()) + self.decay * self.logits
        step = int(self.steps)  # the logits' step count: one behind the step's
        self.first_moment.mul_(0.9).add_(gradient, alpha=0.1)
        self.second_moment.mul_(0.999).addcmul_(gradient, gradient, value=0.001)
        first = self.first_moment / (1 - 0.9**step)
        second = self.second_moment / (1 - 0.999**step)
        self.logits.sub_(self.step_size * first / (second.sqrt() + EPSILON))

    def logged(self) -> dict[str, torch.Tensor]:
        return {f"logit/{name}": self.logits[i].clone() for i, name in enumerate(self.names)}


class STCH(Weighting):
    """Smooth Tchebycheff scalarisation (Lin et al., "Smooth Tchebycheff Scalarization for
    Multi-Objective Optimization", ICML 2024), in the form its authors use for multi-task
    learning: ``K mu log sum_t exp(log(L_t / n_t) / mu)``, a smooth maximum over the tasks'
    log losses relative to ``n_t``, each task's mean loss over the last of ``warmup_epochs``
    epochs (trained on ``sum_t log L_t`` until then). Its gradient gives loss weights
    ``K softmax_t(log(L_t / n_t) / mu) / L_t``: the task furthest above its mark leads, more
    sharply as ``mu`` falls. ``n_t`` and the switch live in buffers (checkpoints);
    ``mtl/mark/<task>`` logs ``n_t`` (1 until set)."""

    def __init__(self, mu: float = 1.0, warmup_epochs: int = 1):
        super().__init__()
        if not mu > 0:
            raise ConfigError(
                f"weighting.mu={mu} is not valid: use a number > 0, e.g. 1 (the smoothing)."
            )
        if type(warmup_epochs) is not int or warmup_epochs < 1:
            raise ConfigError(
                f"weighting.warmup_epochs={warmup_epochs} is not valid: use a positive integer, "
                "e.g. 1 (the epochs whose mean losses become the marks n_t)."
            )
        self.mu, self.warmup_epochs = float(mu), warmup_epochs

    def bind(self, tasks: Sequence[Task]) -> None:
        super().bind(tasks)
        self.register_buffer("marks", torch.ones(len(self.tasks)))
        self.register_buffer("active", torch.zeros(()))  # 1 once the marks are set
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))

    def loss_weights(self, losses: torch.Tensor) -> torch.Tensor:
        losses = losses.detach() + EPSILON
        smooth_max = len(losses) * torch.softmax((losses / self.marks).log() / self.mu, 0)
        # no branch on the switch's value: the compiled step stays one graph
        return torch.lerp(torch.ones_like(losses), smooth_max, self.active) / losses

    def on_train_epoch_end(self, epoch_losses: Mapping[str, float]) -> None:
        self.epochs_seen += 1
        if int(self.epochs_seen) == self.warmup_epochs:
            means = [float(epoch_losses.get(name, 1.0)) for name in self.names]
            self.marks.copy_(torch.tensor(means, device=self.marks.device) + EPSILON)
            self.active.fill_(1.0)

    def logged(self) -> dict[str, torch.Tensor]:
        return {f"mark/{name}": self.marks[i].clone() for i, name in enumerate(self.names)}
