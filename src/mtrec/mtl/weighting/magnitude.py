"""Strategies that balance the magnitudes of the tasks' gradients on what the tasks share.

Each keeps a moving average of each task's gradient norm there, across steps. The shared part
of a step is the batch's rows, different every step, so the averages are of norms (how strong
a task's gradient is), never of the gradient vectors themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtrec.errors import ConfigError
from mtrec.mtl.tasks import Task
from mtrec.mtl.weighting import solvers
from mtrec.mtl.weighting.base import EPSILON, Weighting, check_several_tasks, fraction


class MagnitudeBalance(Weighting):
    """What these strategies share: per-task gradients, two or more tasks."""

    task_gradients = True

    def check(self, tasks: Sequence[str], shares: bool) -> None:
        check_several_tasks(tasks, f"weighting={type(self).__name__} balances the gradients of")


class DBMTL(MagnitudeBalance):
    """DB-MTL (Lin et al., "Dual-Balancing for Multi-Task Learning", 2023): the loss scales
    balanced by training on ``log L_t`` (loss weights ``1 / L_t``), then the gradient
    magnitudes: each task's gradient on the shared rows is scaled to the largest,
    ``g = sum_t (max_s m_s / m_t) g_t``, with ``m_t`` the moving average of ``||g_t||``
    (``m_t <- n_t + beta / k^sigma (m_t - n_t)`` at step k, the paper's 0.9 and 0.5)."""

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.5):
        super().__init__()
        self.beta = fraction("beta", beta, "0.9")
        if not beta_sigma >= 0:
            raise ConfigError(
                f"weighting.beta_sigma={beta_sigma} is not valid: use a number >= 0, e.g. 0.5."
            )
        self.beta_sigma = float(beta_sigma)

    def bind(self, tasks: Sequence[Task]) -> None:
        super().bind(tasks)
        self.register_buffer("norms", torch.zeros(len(self.tasks)))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def loss_weights(self, losses: torch.Tensor) -> torch.Tensor:
        return 1.0 / (losses.detach() + EPSILON)  # the gradient of log L_t

    def gradient_weights(self, received: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        now = solvers.gradient_norms(gram)
        keep = self.beta / int(self.steps) ** self.beta_sigma
        self.norms.copy_(now + keep * (self.norms - now))
        return self.norms.max() / (self.norms + EPSILON)


class MetaBalance(MagnitudeBalance):
    """MetaBalance (He et al., "MetaBalance: Improving Multi-Task Recommendations via
    Adapting Gradient Magnitudes of Auxiliary Tasks", WWW 2022): each auxiliary task's gradient
    moved toward the ``main`` task's magnitude, ``g_t <- g_t (r m_main / m_t + 1 - r)``, with
    ``m_t`` the moving average (``beta``, 0.9) of ``||g_t||`` and the relax factor ``r`` (0.7;
    1: equal magnitudes, 0: unchanged), separately for each shared parameter: here each shared
    part (the user rows, the item rows, a shared layer's output). The main task's gradient is
    kept as it is. ``mtl/norm/<task>`` logs the averages (of the first part)."""

    def __init__(self, main: str = "interaction", relax: float = 0.7, beta: float = 0.9):
        super().__init__()
        self.main = main
        self.relax = fraction("relax", relax, "0.7", closed=True)
        self.beta = fraction("beta", beta, "0.9")

    def bind(self, tasks: Sequence[Task]) -> None:
        super().bind(tasks)
        # (parts, tasks), sized on the first step: the net decides how many parts it shares
        self.register_buffer("norms", torch.zeros(0, len(self.tasks)))

    def check(self, tasks: Sequence[str], shares: bool) -> None:
        super().check(tasks, shares)
        if self.main not in tasks:
            raise ConfigError(
                f"weighting.main={self.main}: this run trains {', '.join(tasks)}. Fix: "
                "weighting.main=<one of them>."
            )

    def shared_gradient(self, received: torch.Tensor, gram: torch.Tensor, parts=()):
        pieces = received.split(tuple(parts) or (received.shape[1],), dim=1)
        scale = self.scales(torch.stack([piece.norm(dim=1) for piece in pieces]))
        combined = [(s.unsqueeze(1) * piece).sum(0) for s, piece in zip(scale, pieces, strict=True)]
        return torch.cat(combined), None

    def scales(self, norms: torch.Tensor) -> torch.Tensor:
        """Each task's factor in each part, from this step's gradient norms (parts, tasks),
        after the moving averages take them in."""
        if self.norms.shape != norms.shape:  # the first step
            self.norms = torch.zeros_like(norms)
        self.norms.mul_(self.beta).add_(norms, alpha=1 - self.beta)
        main = self.names.index(self.main)
        scale = self.relax * self.norms[:, main : main + 1] / (self.norms + EPSILON)
        scale = scale + 1 - self.relax
        scale[:, main] = 1.0
        return scale

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "norms")
        if saved is not None:  # sized as the saved run's parts
            self.norms = torch.zeros_like(saved, device=self.norms.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def logged(self) -> dict[str, torch.Tensor]:
        if not len(self.norms):
            return {}
        return {f"norm/{name}": self.norms[0, i].clone() for i, name in enumerate(self.names)}


class MultiBalance(MetaBalance):
    """MultiBalance (He et al., "MultiBalance: Multi-Objective Gradient Balancing in
    Industrial-Scale Multi-Task Recommendation System", 2024): MetaBalance's balancing taken
    on the gradients with respect to the shared representation as a whole (every shared
    part together, one magnitude per task) instead of per shared parameter: a weighting of
    the rows, from the norms on the Gram matrix's diagonal."""

    def shared_gradient(self, received: torch.Tensor, gram: torch.Tensor, parts=()):
        weights = self.scales(solvers.gradient_norms(gram).unsqueeze(0))[0]
        return weights @ received, weights
