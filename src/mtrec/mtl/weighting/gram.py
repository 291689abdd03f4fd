"""The classic gradient-level strategies at the cost of a step: each one's weights from the
K x K Gram matrix of the tasks' gradients, solved in torch (:mod:`.solvers`: closed forms for
two tasks, every face or a few Newton steps for more), compiled with the step when the step
is (``model.compile``). GradDrop, which masks coordinates, and ExcessMTL, which keeps a sum
per coordinate, read the gradient rows instead.

Each equals its TorchJD aggregator (tests compare them within 1e-5, two and three tasks; MGDA
with three tasks against its optimality conditions, which TorchJD's iterations approach),
where TorchJD calls cvxpy, scipy or a Python loop every step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from mtrec.compile import compile_or_eager
from mtrec.errors import ConfigError
from mtrec.mtl.tasks import Task
from mtrec.mtl.weighting import solvers
from mtrec.mtl.weighting.base import fraction
from mtrec.mtl.weighting.gradient import GradientLevel


class GramWeighting(GradientLevel, ABC):
    """Weights of the tasks' gradients from their Gram matrix, by :meth:`weights` (called
    as :attr:`solve`: compiled or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.solve = self.weights

    @abstractmethod
    def weights(self, gram: torch.Tensor, *state: torch.Tensor) -> torch.Tensor:
        """Each task's weight from the Gram matrix (and the strategy's state, if any)."""

    def use_compiler(self) -> None:
        self.solve = compile_or_eager(self.weights)

    def gradient_weights(self, received: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
        return self.solve(gram)


class MGDA(GramWeighting):
    """MGDA (Sener and Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS
    2018): the least-norm combination of the gradients over the simplex, solved exactly
    (TorchJD's Frank-Wolfe iterations reach it for two tasks, approach it for more)."""

    def weights(self, gram: torch.Tensor) -> torch.Tensor:
        return solvers.min_norm_weights(gram)


class CAGrad(GramWeighting):
    """CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning",
    NeurIPS 2021): the direction that most improves the worst task within a ball of radius
    ``c |g0|`` around the average gradient ``g0``."""

    def __init__(self, c: float = 0.4, norm_eps: float = 1e-4):
        super().__init__()
        if c < 0:
            raise ConfigError(f"weighting.c={c} is negative: use c >= 0 (0: the mean gradient).")
        self.c, self.norm_eps = float(c), float(norm_eps)

    def weights(self, gram: torch.Tensor) -> torch.Tensor:
        return solvers.cagrad_weights(gram, self.c, self.norm_eps)


class FairGrad(GramWeighting):
    """FairGrad (Ban and Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024):
    alpha-fair utility over the tasks (``alpha`` 0: the mean, 1: proportional fairness, the
    Nash bargaining solution; larger: toward max-min fairness)."""

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        if alpha < 0:
            raise ConfigError(f"weighting.alpha={alpha} is negative: use alpha >= 0.")
        self.alpha = float(alpha)

    def weights(self, gram: torch.Tensor) -> torch.Tensor:
        return solvers.fair_weights(gram, self.alpha)


class NashMTL(GramWeighting):
    """Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022), solved
    every step: the Nash bargaining solution, its norm at most ``max_norm`` (0: unbounded)."""

    def __init__(self, max_norm: float = 1.0):
        super().__init__()
        if max_norm < 0:
            raise ConfigError(
                f"weighting.max_norm={max_norm} is negative: use max_norm >= 0 (0: no bound)."
            )
        self.max_norm = float(max_norm)

    def weights(self, gram: torch.Tensor) -> torch.Tensor:
        return solvers.nash_weights(gram, self.max_norm)


class ConFIG(GramWeighting):
    """ConFIG (Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed Neural
    Networks", ICLR 2025): the direction with an equal cosine to every task's gradient."""

    def weights(self, gram: torch.Tensor) -> torch.Tensor:
        return solvers.config_weights(gram)


class PCGrad(GramWeighting):
    """PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020): each
    gradient projected onto the normal plane of those it conflicts with, in an order drawn
    at random per task each step (three or more tasks; with two the order does not matter)."""

    def gradient_weights(self, received: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
        tasks = gram.shape[0]
        if tasks == 2:
            return self.solve(gram)
        # drawn here, eagerly, as TorchJD draws them: the same seed gives the same orders
        orders = torch.stack([torch.randperm(tasks) for _ in range(tasks)])
        return self.solve(gram, orders)

    def weights(self, gram: torch.Tensor, orders: torch.Tensor | None = None) -> torch.Tensor:
        return solvers.pcgrad_weights(gram, orders)


class IMTLG(GramWeighting):
    """IMTL-G (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021): the combination
    whose projection on every task's unit gradient is the same, by the pseudo-inverse of the
    Gram matrix (TorchJD's generalisation to dependent gradients)."""

    def weights(self, gram: torch.Tensor) -> torch.Tensor:
        return solvers.imtl_g_weights(gram)


class GradVac(GramWeighting):
    """GradVac (Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", ICLR 2021): each gradient pulled toward
    a moving target cosine (``beta``) with each other task's, in an order drawn at random per
    task each step (three or more tasks). The targets are a buffer: they travel in
    checkpoints."""

    def __init__(self, beta: float = 0.5, eps: float = 1e-8):
        super().__init__()
        self.beta = fraction("beta", beta, "0.5", closed=True)
        if eps < 0:
            raise ConfigError(f"weighting.eps={eps} is negative: use eps >= 0, e.g. 1e-8.")
        self.eps = float(eps)

    def bind(self, tasks: tuple[Task, ...]) -> None:
        super().bind(tasks)
        count = len(tasks)
        self.register_buffer("targets", torch.zeros(count, count, dtype=torch.float64))
        # each task's others, in order: [[1, 2], [0, 2], [0, 1]] for three
        self.others = torch.tensor([[j for j in range(count) if j != i] for i in range(count)])

    def gradient_weights(self, received: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
        orders = self.others
        if len(orders) > 2:  # drawn here, eagerly, as TorchJD draws them: the same seed, the same
            orders = torch.stack([row[torch.randperm(len(row))] for row in orders])
        return self.solve(gram, self.targets, orders.to(gram.device))

    def weights(
        self, gram: torch.Tensor, targets: torch.Tensor, orders: torch.Tensor
    ) -> torch.Tensor:
        return solvers.gradvac_weights(gram, targets, orders, self.beta, self.eps)


class DualConeProjection(GramWeighting, ABC):
    """A projection onto the dual cone of the tasks' gradients (the directions along which no
    task's loss rises, to first order); ``reg_eps`` on the diagonal of the trace-normalised
    Gram matrix keeps it well posed, as in TorchJD."""

    def __init__(self, reg_eps: float = 1e-4):
        super().__init__()
        if reg_eps < 0:
            raise ConfigError(f"weighting.reg_eps={reg_eps} is negative: use reg_eps >= 0.")
        self.reg_eps = float(reg_eps)


class UPGrad(DualConeProjection):
    """UPGrad (Quinton and Rey, "Jacobian Descent for Multi-Objective Optimization", 2024):
    each task's gradient projected onto the dual cone, the projections averaged."""

    def weights(self, gram: torch.Tensor) -> torch.Tensor:
        return solvers.upgrad_weights(gram, self.reg_eps)


class DualProj(DualConeProjection):
    """DualProj (Lopez-Paz and Ranzato, "Gradient Episodic Memory for Continual Learning",
    NeurIPS 2017, Eq. 11): the mean gradient projected onto the dual cone."""

    def weights(self, gram: torch.Tensor) -> torch.Tensor:
        return solvers.dualproj_weights(gram, self.reg_eps)


class AlignedMTL(GramWeighting):
    """Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task
    Learning", CVPR 2023): the gradients made orthogonal and of one norm (the smallest
    singular value's) by a transformation of their Gram matrix, then averaged."""

    def weights(self, gram: torch.Tensor) -> torch.Tensor:
        return solvers.aligned_weights(gram)


class PCD(GramWeighting):
    """Priority-Constrained Descent ("Not All Objectives Are Born Equal: Priority-Constrained
    Descent for Hierarchical Multi-Objective Optimization", TMLR 2026): follow the first
    task's gradient, with at least a fraction ``tau`` of progress for each other task, every
    gradient scaled by the root of its moving squared norm (``beta``; ``eps`` under the
    root). The moving averages are buffers, so they travel in checkpoints."""

    def __init__(self, tau: float = 0.02, beta: float = 0.999, eps: float = 1e-8):
        super().__init__()
        self.tau = fraction("tau", tau, "0.02", closed=True)
        self.beta = fraction("beta", beta, "0.999")
        self.eps = float(eps)

    def bind(self, tasks: tuple[Task, ...]) -> None:
        super().bind(tasks)
        self.register_buffer("square_norms", torch.zeros(len(tasks), dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def gradient_weights(self, received: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        square_norms = gram.diagonal().to(torch.float64)
        self.square_norms.mul_(self.beta).add_(square_norms, alpha=1 - self.beta)
        return self.solve(gram, self.square_norms, self.steps)

    def weights(
        self, gram: torch.Tensor, square_norms: torch.Tensor, steps: torch.Tensor
    ) -> torch.Tensor:
        average = square_norms / (1 - self.beta**steps)  # the moving average, debiased
        roots = (average + self.eps).sqrt()
        scales = torch.where(roots > 0, 1 / roots, 0.0)
        taus = torch.full((gram.shape[0] - 1,), self.tau, dtype=torch.float64, device=gram.device)
        return solvers.pcd_weights(gram, scales, taus)


class GradDrop(GradientLevel):
    """GradDrop (Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with
    Gradient Sign Dropout", NeurIPS 2020): per coordinate, keep the gradients of one sign,
    drawn with the probability of that sign's share. Not a weighting of the rows."""

    def __init__(self) -> None:
        super().__init__()
        self.combine = solvers.graddrop

    def use_compiler(self) -> None:
        self.combine = compile_or_eager(solvers.graddrop)

    def shared_gradient(self, received: torch.Tensor, gram: torch.Tensor, parts=()):
        # drawn here, eagerly, as TorchJD draws them: the same seed gives the same draws
        draws = torch.rand(received.shape[1], dtype=received.dtype, device=received.device)
        return self.combine(received, draws), None


class ExcessMTL(GradientLevel):
    """ExcessMTL (He et al., "Robust Multi-Task Learning with Excess Risks", ICML 2024): task
    weights moved by an exponentiated-gradient step toward the tasks of larger excess risk,
    estimated from each coordinate's running sum of squared gradients; ``step_size`` (the
    paper's eta_alpha, 1). Reads the rows, as its estimate is per coordinate. As TorchJD's,
    the state restarts when the rows' width changes (an epoch's last, smaller batch). The
    running sums keep the room of the widest rows seen, a narrower step using a prefix, and
    ``width`` is the last step's: the state's shapes stay fixed from step to step, so a
    compiled step is not traced again at each change."""

    def __init__(self, step_size: float = 1.0):
        super().__init__()
        if not step_size > 0:
            raise ConfigError(
                f"weighting.step_size={step_size} is not valid: use a number > 0, e.g. 1.0."
            )
        self.step_size = float(step_size)
        self.update = solvers.excess_mtl_weights

    def use_compiler(self) -> None:
        self.update = compile_or_eager(solvers.excess_mtl_weights)

    def bind(self, tasks: tuple[Task, ...]) -> None:
        super().bind(tasks)
        count = len(tasks)
        # (tasks, room) once the first step shows the width; the weights start uniform
        self.register_buffer("squares", torch.zeros(count, 0))
        self.register_buffer("task_weights", torch.full((count,), 1.0 / count))
        self.register_buffer("baseline", torch.zeros(count))
        self.register_buffer("width", torch.tensor(0))  # the last step's (0: none yet)

    def gradient_weights(self, received: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
        if self.squares.shape[1] < received.shape[1]:  # wider than ever (the first step)
            self.squares = received.new_zeros(received.shape)
            self.task_weights = self.task_weights.to(received)
            self.baseline = self.baseline.to(received)
        return self.update(
            received, self.squares, self.width, self.task_weights, self.baseline, self.step_size
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "squares")
        if saved is not None:  # sized as the saved run's rows
            self.squares = torch.zeros_like(saved, device=self.squares.device)
            # saved before the last width was kept: the sums' own
            state_dict.setdefault(prefix + "width", torch.tensor(saved.shape[1]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
