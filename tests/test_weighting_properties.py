"""Properties of the loss weighting strategies, one shared set applied to every strategy shipped.

Each strategy of ``conf/weighting/*.yaml`` (a new file is picked up by itself) is built from its
config file, as a run builds it, bound to two and to three tasks, and driven through a few steps
of small random problems: the task losses, each task's gradient on the shared rows (the rows of
``received``) and their Gram matrix, with the hooks a training step calls in between. As TorchJD
applies its property checks to each of its aggregators (``tests/unit/aggregation``), the same
checks run here on every strategy that can take them:

- permutation: binding the tasks in another order, and handing their losses and gradient rows in
  that order, permutes the loss weights and the gradient weights and leaves the combined gradient
  as it is, step after step (the state a strategy keeps belongs to tasks, not to positions);
- scaling: what a strategy claims when the gradients, or the losses, are scaled (the tables
  GRADIENT_SCALING and LOSS_SCALING, each entry with where the claim comes from);
- non-conflicting: where a strategy claims it, the combined gradient never points against a
  task's gradient, on conflicting problems too;
- no mutation: nothing a strategy is handed changes (:mod:`mtrec.mtl.weighting.base` promises
  it), even steps later.

The strategies' values against hand computations and TorchJD, and the shape and finiteness of
every strategy's output, are checked in test_weighting.py, test_gram_weightings.py and
test_recent_weightings.py.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

CONFIGS = Path(__file__).parents[1] / "conf" / "weighting"
# Every file is a strategy: config.yaml is ConFIG (not a group default), single.yaml one task
# alone (a run's single-task twin).
STRATEGIES = sorted(path.stem for path in CONFIGS.glob("*.yaml"))
TASK_NAMES = {2: ("interaction", "rating"), 3: ("interaction", "rating", "like")}
PARTS = (8, 4)  # each row: two shared parts (say the user rows, then the item rows)
STEPS = 4  # enough for the epoch-based strategies (DWA, STCH) and FAMO to move

# -- which strategy takes which property -----------------------------------------------------

# Left out of the permutation test: the task counts concerned, and why. Strategies with per-task
# settings (fixed and single's weights, metabalance's main task, uncertainty's regression
# factor) are in it: those settings follow the task's name, so they permute with the tasks.
NOT_PERMUTATION_EQUIVARIANT = {
    # weights drawn afresh every step, one per position: with the same seed the draws land on
    # the same positions, whichever task is there, so they are exchangeable only in distribution
    "rlw": ((2, 3), "random weights, equal only in distribution"),
    "random": ((2, 3), "random weights, equal only in distribution"),
    # the projection orders are drawn per position from three tasks on (two: no order)
    "pcgrad": ((3,), "projection orders drawn at random per position"),
    "gradvac": ((3,), "projection orders drawn at random per position"),
    # by design: the first task bound is the primary one ("follow the first task's gradient")
    "pcd": ((2, 3), "the first task is the primary one"),
}

HOMOGENEOUS = "homogeneous"  # every row times c > 0: the same weights, the gradient times c
DIRECTION = "direction"  # row t times c_t > 0: the combined gradient keeps its direction
INVARIANT = "invariant"  # row t times c_t > 0: the same combined gradient

# What each strategy claims when the gradient rows are scaled (the Gram matrix with them), and
# where the claim comes from; strategies without such a claim are not in the table.
GRADIENT_SCALING = {
    # the least-norm point of the simplex, argmin w'Gw, does not move when G is scaled
    # (Sener and Koltun 2018; MGDA's docstring)
    "mgda": (HOMOGENEOUS,),
    # solved on the Gram matrix divided by its trace (DualConeProjection's docstring); TorchJD
    # tests UPGrad as linear under scaling
    "upgrad": (HOMOGENEOUS,),
    "dualproj": (HOMOGENEOUS,),
    # the best direction within a ball of radius c |g0| around the mean gradient g0: the
    # problem grows with the gradients (Liu et al. 2021; CAGrad's docstring)
    "cagrad": (HOMOGENEOUS,),
    # weights summing to 1, of equal projections on the unit gradients (Liu et al. 2021; IMTLG's
    # docstring)
    "imtl_g": (HOMOGENEOUS,),
    # the gradients made orthogonal and of the smallest singular value's norm (Senushkin et al.
    # 2023; AlignedMTL's docstring)
    "aligned_mtl": (HOMOGENEOUS,),
    # projections onto normal planes (Yu et al. 2020), which no common scale changes
    "pcgrad": (HOMOGENEOUS,),
    # every gradient scaled by its own moving norm, the direction then rescaled to the first
    # gradient's norm (PCD's docstring)
    "pcd": (HOMOGENEOUS, DIRECTION),
    # each task's factor reads only ratios of moving average norms (the docstrings' formula)
    "metabalance": (HOMOGENEOUS,),
    "multibalance": (HOMOGENEOUS,),
    # weights that do not read the gradients: fixed (TorchJD tests Mean and Sum as linear under
    # scaling) or drawn (Random: softmax of normal draws)
    "mean": (HOMOGENEOUS,),
    "sum": (HOMOGENEOUS,),
    "random": (HOMOGENEOUS,),
    # the direction of equal cosines to the unit gradients, as long as the gradients' projections
    # on it add up to (Liu et al. 2025; ConFIG's docstring); TorchJD tests it as linear under
    # scaling
    "config": (HOMOGENEOUS, DIRECTION),
    # every task's gradient scaled to the largest moving norm (Lin et al. 2023; DBMTL's docstring)
    "db_mtl": (HOMOGENEOUS, DIRECTION),
    # the Nash bargaining solution does not change when a task's utility is scaled (Navon et al.
    # 2022): G a = 1 / a gives a_t / c_t for row t times c_t, and the same update; the bound on
    # its norm then acts on the same update
    "nash_mtl": (INVARIANT,),
    # its config's alpha = 1 is proportional fairness, Nash-MTL's solution (FairGrad's docstring)
    "fairgrad": (INVARIANT,),
}

LOG_LOSSES = "log losses"  # loss t times c_t: weight t over c_t, the same weighted gradient
LOG_LOSSES_NORMALISED = "log losses, normalised"  # the same, up to one positive factor
LOSS_RATIOS = "loss ratios"  # loss t times c_t: the same weights

# What each strategy claims when each task's loss is scaled (at every step, so the histories the
# strategies keep are scaled as well); strategies without such a claim are not in the table.
LOSS_SCALING = {
    # trains on log L_t: loss weights 1 / L_t (DBMTL's docstring: "the loss scales balanced")
    "db_mtl": LOG_LOSSES,
    # log losses during the warm-up, then log(L_t / n_t) with n_t the task's mean loss (STCH's
    # docstring, Lin et al. 2024)
    "stch": LOG_LOSSES,
    # the gradient of sum_t z_t log L_t / c, z from log loss decreases (FAMO's docstring, Liu et al.
    # 2023)
    "famo": LOG_LOSSES_NORMALISED,
    # weights from the ratios of each task's last two epoch losses (DWA's docstring)
    "dwa": LOSS_RATIOS,
}

# The strategies whose combined gradient claims to conflict with no task's gradient.
NON_CONFLICTING = {
    # the least-norm point d of the gradients' convex hull has g_t . d >= |d|^2 (Sener and
    # Koltun 2018); TorchJD tests MGDA as non-conflicting
    "mgda",
    # projections onto the dual cone of the gradients (Quinton and Rey 2024; TorchJD tests both)
    "upgrad",
    "dualproj",
    # G a = 1 / a > 0: every task's inner product with the update is positive (Navon et al. 2022)
    "nash_mtl",
    # G x = x^(-1/alpha) > 0, likewise (Ban and Ji 2024; FairGrad's docstring)
    "fairgrad",
    # a conflict-free direction, of an equal positive cosine to every gradient (Liu et al. 2025)
    "config",
}


def cases(names=STRATEGIES, excluded=None):
    """(strategy, task count) pairs, less those ``excluded`` lists (name: (counts, reason))."""
    excluded = excluded or {}
    return [
        pytest.param(name, count, id=f"{name}-{count}")
        for name in names
        for count in (2, 3)
        if not (name in excluded and count in excluded[name][0])
    ]


# -- problems and steps ----------------------------------------------------------------------


@dataclass
class Step:
    """One step's task losses (one per task) and gradient rows (one per task), in task order."""

    losses: torch.Tensor
    received: torch.Tensor

    @property
    def gram(self) -> torch.Tensor:
        return self.received @ self.received.T

    def permuted(self, order: list[int]) -> Step:
        return Step(self.losses[order], self.received[order])


def problems(count: int, seed: int, conflicting=True, dtype=torch.float32) -> list[Step]:
    """Steps of random losses and gradients around a common direction (every other task's
    reversed when ``conflicting``), of norms growing with the task; in a run's float32 unless
    asked (a learned strategy's parameters are float32)."""
    generator = torch.Generator().manual_seed(seed)
    width = sum(PARTS)
    steps = []
    for _ in range(STEPS):
        common = torch.randn(width, generator=generator, dtype=torch.float64)
        rows = [
            (-1) ** (i * conflicting) * 0.8 * common
            + (0.5 + i) * torch.randn(width, generator=generator, dtype=torch.float64)
            for i in range(count)
        ]
        losses = 0.2 + 2 * torch.rand(count, generator=generator, dtype=torch.float64)
        steps.append(Step(losses.to(dtype), torch.stack(rows).to(dtype)))
    return steps


@functools.cache
def composed(name: str, count: int):
    """The ``weighting`` and the tasks of a run with ``weighting=<name>`` and ``count`` tasks,
    composed as ``mtrec-train`` composes them (the resolvers the configs read are registered
    by conftest's import of :mod:`mtrec.train`)."""
    with initialize_config_module("mtrec.conf", version_base="1.3"):
        tasks = f"tasks=[{','.join(TASK_NAMES[count])}]"
        cfg = compose("train", overrides=[f"weighting={name}", tasks])
    tasks = instantiate(cfg.tasks, _convert_="object")  # Task objects, as the objective gets
    return cfg.weighting, tuple(tasks.values())


def build(name: str, count: int, order=None):
    """The strategy of ``conf/weighting/<name>.yaml``, bound to ``count`` tasks, in the order
    ``order`` (indices into the run's order) if given."""
    config, tasks = composed(name, count)
    strategy = instantiate(config)
    strategy.bind(tuple(tasks) if order is None else tuple(tasks[i] for i in order))
    return strategy


@dataclass
class Outputs:
    """What a strategy gave at one step (copies: some strategies hand out their own state)."""

    loss_weights: torch.Tensor
    extra_loss: float
    gradient: torch.Tensor
    gradient_weights: torch.Tensor | None


def drive(strategy, steps: list[Step]) -> list[Outputs]:
    """The strategy's outputs over ``steps``, called as a training step calls it: the loss
    weights and the strategy's own term, their backward pass, the combined gradient, the hook
    after the backward pass, a plain gradient step on the strategy's own parameters, the hook
    after it, and the epoch's end (each step an epoch, so the epoch-based ones move). Each step
    starts from its own seed, so two drives draw the same random numbers."""
    outputs = []
    with torch.random.fork_rng():
        for number, step in enumerate(steps):
            torch.manual_seed(number)
            strategy.zero_grad(set_to_none=True)
            weights = torch.as_tensor(strategy.loss_weights(step.losses))
            extra = strategy.extra_loss()
            total = (weights * step.losses).sum() + extra
            if total.requires_grad:  # learned weights (uncertainty's log-variances)
                total.backward()
            gradient, gradient_weights = strategy.shared_gradient(step.received, step.gram, PARTS)
            strategy.after_backward(
                step.received, dict(zip(strategy.names, step.losses, strict=True))
            )
            with torch.no_grad():
                for parameter in strategy.parameters():
                    if parameter.grad is not None:
                        parameter -= 0.1 * parameter.grad
            strategy.after_step()
            strategy.on_train_epoch_end(
                dict(zip(strategy.names, step.losses.tolist(), strict=True))
            )
            outputs.append(
                Outputs(
                    weights.detach().clone(),
                    float(torch.as_tensor(extra).detach()),
                    gradient.detach().clone(),
                    None if gradient_weights is None else gradient_weights.detach().clone(),
                )
            )
    return outputs


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Equal up to float32 rounding, relative to the largest entry."""
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual, expected, rtol=1e-5, atol=1e-6 * max(scale, 1e-12), msg=lambda m: f"{what}: {m}"
    )


# -- the properties --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "count"), cases(excluded=NOT_PERMUTATION_EQUIVARIANT))
def test_permuting_the_tasks_permutes_the_weights(name, count):
    steps = problems(count, seed=10 + count)
    reference = drive(build(name, count), steps)
    for order in itertools.permutations(range(count)):
        if order == tuple(range(count)):
            continue
        order = list(order)
        permuted = drive(build(name, count, order), [s.permuted(order) for s in steps])
        for number, (ours, theirs) in enumerate(zip(reference, permuted, strict=True)):
            where = f"{name}, order {order}, step {number}"
            assert_close(theirs.loss_weights, ours.loss_weights[order], f"{where}: loss weights")
            assert theirs.extra_loss == pytest.approx(ours.extra_loss, rel=1e-5, abs=1e-6), where
            assert_close(theirs.gradient, ours.gradient, f"{where}: combined gradient")
            if ours.gradient_weights is None:
                assert theirs.gradient_weights is None, where
            else:
                assert_close(
                    theirs.gradient_weights,
                    ours.gradient_weights[order],
                    f"{where}: gradient weights",
                )


@pytest.mark.parametrize(
    ("name", "claim", "count"),
    [
        pytest.param(name, claim, count, id=f"{name}-{claim}-{count}")
        for name, claims in GRADIENT_SCALING.items()
        for claim in claims
        for count in (2, 3)
    ],
)
def test_scaled_gradients_give_what_the_strategy_claims(name, claim, count):
    steps = problems(count, seed=20 + count)
    reference = drive(build(name, count), steps)
    if claim == HOMOGENEOUS:
        scalings = [torch.full((count,), c) for c in (0.05, 20.0)]
    else:  # task by task
        scalings = [torch.tensor([0.2, 5.0, 30.0])[:count], torch.tensor([8.0, 0.1, 1.0])[:count]]
    for scales in scalings:
        scaled_steps = [Step(s.losses, s.received * scales[:, None]) for s in steps]
        scaled = drive(build(name, count), scaled_steps)
        for number, (ours, theirs) in enumerate(zip(reference, scaled, strict=True)):
            where = f"{name}, rows times {scales.tolist()}, step {number}"
            if claim == HOMOGENEOUS:
                c = float(scales[0])
                assert_close(theirs.gradient, c * ours.gradient, f"{where}: combined gradient")
                if ours.gradient_weights is not None:
                    assert_close(theirs.gradient_weights, ours.gradient_weights, where)
            elif claim == INVARIANT:
                assert_close(theirs.gradient, ours.gradient, f"{where}: combined gradient")
            else:
                assert float(ours.gradient.norm()) > 0, where
                cosine = torch.nn.functional.cosine_similarity(theirs.gradient, ours.gradient, 0)
                assert float(cosine) == pytest.approx(1.0, abs=1e-5), where


@pytest.mark.parametrize(("name", "count"), cases(LOSS_SCALING))
def test_scaled_losses_give_what_the_strategy_claims(name, count):
    """Each task's loss times its own factor at every step; the gradient rows stay as they are
    (only the loss weights are compared)."""
    claim = LOSS_SCALING[name]
    steps = problems(count, seed=30 + count)
    reference = drive(build(name, count), steps)
    for scales in (torch.tensor([0.1, 4.0, 25.0])[:count], torch.tensor([3.0, 0.2, 1.0])[:count]):
        scaled = drive(build(name, count), [Step(s.losses * scales, s.received) for s in steps])
        for number, (ours, theirs) in enumerate(zip(reference, scaled, strict=True)):
            where = f"{name}, losses times {scales.tolist()}, step {number}"
            if claim == LOSS_RATIOS:
                assert_close(theirs.loss_weights, ours.loss_weights, where)
            elif claim == LOG_LOSSES:
                assert_close(theirs.loss_weights * scales, ours.loss_weights, where)
            else:
                effective = theirs.loss_weights * scales
                assert_close(
                    effective / effective.sum(), ours.loss_weights / ours.loss_weights.sum(), where
                )
    # the weights do move from step to step: these are no constant weights passing by default
    assert any(not torch.allclose(o.loss_weights, reference[0].loss_weights) for o in reference)


def opposed(count: int) -> Step:
    """A problem of gradients nearly opposed to the first one and longer than it: their mean
    conflicts with the first."""
    generator = torch.Generator().manual_seed(50)
    first = torch.randn(sum(PARTS), generator=generator, dtype=torch.float64)
    noise = torch.randn(count - 1, sum(PARTS), generator=generator, dtype=torch.float64)
    rest = -(3 + torch.arange(count - 1, dtype=torch.float64))[:, None] * first + 0.3 * noise
    return Step(torch.ones(count, dtype=torch.float64), torch.cat([first[None], rest]))


@pytest.mark.parametrize(("name", "count"), cases(sorted(NON_CONFLICTING)))
def test_the_combined_gradient_conflicts_with_no_task(name, count):
    """``g_t . d >= 0`` for every task's row ``g_t`` and the combined gradient ``d``, up to
    1e-6 of ``|g_t| |d|``; the dual-cone projections solve on ``G / trace(G) + reg_eps I``
    (as TorchJD), which allows ``(G w)_t`` down to ``-reg_eps trace(G) w_t``."""
    strategy = build(name, count)
    problems_seen = [
        step
        for seed in range(4)
        for conflicting in (True, False)
        for step in problems(count, seed=40 + seed, conflicting=conflicting, dtype=torch.float64)
    ]
    problems_seen.append(opposed(count))
    conflicts = 0
    for number, step in enumerate(problems_seen):
        gram = step.gram
        conflicts += bool((gram < 0).any())
        gradient, weights = strategy.shared_gradient(step.received, gram, PARTS)
        inner = step.received @ gradient
        allowed = 1e-6 * step.received.norm(dim=1) * gradient.norm()
        if weights is not None and hasattr(strategy, "reg_eps"):
            allowed = allowed + strategy.reg_eps * gram.trace() * weights.clamp_min(0)
        assert (inner >= -allowed).all(), f"{name}, problem {number}: g . d = {inner.tolist()}"
    assert conflicts >= len(problems_seen) // 2  # the problems do conflict


@pytest.mark.parametrize(("name", "count"), cases())
def test_nothing_handed_to_a_strategy_changes(name, count):
    strategy = build(name, count)
    handed = []
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for step in problems(count, seed=60 + count):
            losses, received, gram = step.losses, step.received, step.gram
            by_name = dict(zip(strategy.names, losses.unbind(), strict=True))
            kept = [t.clone() for t in (losses, received, gram, *by_name.values())]
            handed.append(((losses, received, gram, *by_name.values()), kept))

            def unchanged(after: str, given=handed[-1]) -> None:
                for now, before in zip(*given, strict=True):
                    assert torch.equal(now, before), f"{name}: {after} changed what it was handed"

            strategy.loss_weights(losses)
            unchanged("loss_weights")
            strategy.gradient_weights(received, gram)
            unchanged("gradient_weights")
            strategy.shared_gradient(received, gram, PARTS)
            unchanged("shared_gradient")
            strategy.after_backward(received, by_name)
            unchanged("after_backward")
            strategy.after_step()
            strategy.on_train_epoch_end({task: float(v) for task, v in by_name.items()})
    for now, before in handed:  # nor later: no state kept aliases a step's inputs
        for tensor, copy in zip(now, before, strict=True):
            assert torch.equal(tensor, copy), f"{name}: a later step changed an earlier input"


def test_the_tables_name_shipped_strategies():
    named = set(NOT_PERMUTATION_EQUIVARIANT) | set(GRADIENT_SCALING) | set(LOSS_SCALING)
    assert named | NON_CONFLICTING <= set(STRATEGIES)
