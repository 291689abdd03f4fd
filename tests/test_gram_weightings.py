"""The strategies solved on the Gram matrix (mtrec.mtl.weighting.gram): hand computations on
problems small enough to solve on paper, and equality with TorchJD's aggregators on random
gradients (two and three tasks, conflicting and not)."""

import math

import numpy as np
import pytest
import torch
import torchjd.aggregation as tjd

from mtrec.errors import ConfigError
from mtrec.mtl.tasks import Interaction, Like, Rating
from mtrec.mtl.weighting import (
    IMTLG,
    MGDA,
    PCD,
    AlignedMTL,
    CAGrad,
    ConFIG,
    DualProj,
    ExcessMTL,
    FairGrad,
    GradDrop,
    GradVac,
    NashMTL,
    PCGrad,
    UPGrad,
    solvers,
)

TWO = (Interaction(), Rating())
THREE = (*TWO, Like())


def bound(strategy, tasks):
    strategy.bind(tasks)
    return strategy


def combine(strategy, rows: torch.Tensor) -> torch.Tensor:
    tasks = TWO if len(rows) == 2 else THREE
    gradient, _ = bound(strategy, tasks[: len(rows)]).shared_gradient(rows, rows @ rows.T)
    return gradient


def random_rows(tasks: int, conflicting: bool, seed: int) -> torch.Tensor:
    """Gradients around a common direction (every other one reversed when conflicting), of
    norms growing with the task, in float64."""
    generator = torch.Generator().manual_seed(seed)
    common = torch.randn(30, generator=generator, dtype=torch.float64)
    rows = [
        (-1) ** (i * conflicting) * 0.8 * common
        + (0.5 + i) * torch.randn(30, generator=generator, dtype=torch.float64)
        for i in range(tasks)
    ]
    return torch.stack(rows)


CASES = [
    (tasks, conflicting, seed)
    for tasks in (2, 3)
    for conflicting in (True, False)
    for seed in range(5)
]


def assert_equal(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs.to(ours.dtype), atol=1e-5, rtol=0)


# -- hand computations ------------------------------------------------------------------


def test_mgda_two_tasks_by_hand():
    # g1 = (1, 2, 0), g2 = (-1, 1, 3): the segment's point nearest 0 has
    # alpha = (g2 - g1).g2 / |g1 - g2|^2 = (2 - 1 + 9) / (4 + 1 + 9) = 10 / 14
    g1, g2 = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([-1.0, 1.0, 3.0])
    alpha = 10 / 14
    torch.testing.assert_close(
        combine(MGDA(), torch.stack([g1, g2])), alpha * g1 + (1 - alpha) * g2
    )


def test_cagrad_by_hand_on_orthogonal_unit_gradients():
    # G = I, normalised by its trace to I / 2. By symmetry w* = (1/2, 1/2); then
    # |G_w*| = sqrt(w' G w) = 1/2 and sqrt(phi) = c |g0| = c sqrt(1' G 1) / 2 = c / 2, so
    # each weight is 1/2 + sqrt(phi) / |G_w*| * 1/2 = 1/2 + c / 2
    rows = torch.eye(2)
    for c in (0.0, 0.4, 1.0):
        expected = torch.full((2,), 0.5 + c / 2)
        torch.testing.assert_close(combine(CAGrad(c=c), rows), expected)


def test_fair_and_nash_by_hand():
    # G x = 1 / x: orthogonal gradients of norms 2 and 1 give x = (1/2, 1);
    # G = [[1, 1/2], [1/2, 1]] gives x_0 = x_1 = 1 / sqrt(1.5)
    rows = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(combine(FairGrad(alpha=1.0), rows), torch.tensor([1.0, 1.0]))
    unit = 1 / math.sqrt(1.5)
    rows = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(0.75)]])
    torch.testing.assert_close(combine(FairGrad(alpha=1.0), rows), unit * rows.sum(0))
    # Nash-MTL: the same point, shrunk to norm 1 when longer
    combined = unit * rows.sum(0)
    torch.testing.assert_close(combine(NashMTL(max_norm=0.0), rows), combined)
    torch.testing.assert_close(combine(NashMTL(max_norm=1.0), rows), combined / combined.norm())
    # alpha = 2: G x = x^(-1/2) for G = diag(4, 1): x_i = G_ii^(-2/3)
    rows = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    expected = torch.tensor([2 * 4 ** (-2 / 3), 1.0])
    torch.testing.assert_close(combine(FairGrad(alpha=2.0), rows), expected)


def test_config_by_hand():
    # unit vectors (1, 0), (0, 1): the bisector (1, 1)/sqrt 2; the gradients' projections on
    # it sum to (1 + 2) / sqrt 2, so the update is 3 / 2 (1, 1)
    rows = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(combine(ConFIG(), rows), torch.tensor([1.5, 1.5]))


def test_pcgrad_by_hand():
    conflicting = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    # g1 - (g1.g2 / |g2|^2) g2 = (1/2, 1/2); g2 - (g2.g1 / |g1|^2) g1 = (0, 1)
    torch.testing.assert_close(combine(PCGrad(), conflicting), torch.tensor([0.5, 1.5]))
    agreeing = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(combine(PCGrad(), agreeing), torch.tensor([2.0, 1.0]))


def test_dual_cone_projections_by_hand():
    # g1 = (1, 0), g2 = (-2, 1), g1.g2 = -2: each gradient leaves the dual cone's half-plane
    # of the other. UPGrad: g1 + (2/5) g2 = (1/5, 2/5) and g2 + 2 g1 = (0, 1), averaged:
    # (1/10, 7/10). DualProj: the mean (-1/2, 1/2) has g1.mean = -1/2 < 0, so it is
    # projected onto g1.x = 0: (0, 1/2), which g2 keeps (g2.(0, 1/2) = 1/2)
    rows = torch.tensor([[1.0, 0.0], [-2.0, 1.0]])
    torch.testing.assert_close(combine(UPGrad(reg_eps=0.0), rows), torch.tensor([0.1, 0.7]))
    torch.testing.assert_close(combine(DualProj(reg_eps=0.0), rows), torch.tensor([0.0, 0.5]))
    # gradients inside each other's half-planes are their own projections
    agreeing = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(combine(UPGrad(reg_eps=0.0), agreeing), agreeing.mean(0))


def test_aligned_mtl_by_hand():
    # orthogonal gradients of norms 2 and 1: G = diag(4, 1), B = sqrt(1) diag(1/2, 1), so
    # each is rescaled to norm 1 and the mean of (1, 0) and (0, 1) is (1/2, 1/2)
    rows = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(combine(AlignedMTL(), rows), torch.tensor([0.5, 0.5]))
    # parallel gradients (1, 0) and (2, 0): G = [[1, 2], [2, 4]] has eigenvalues 0 and 5;
    # the zero one is left out, B = v v' with v = (1, 2) / sqrt 5, the weights
    # B (1/2, 1/2) = (3/10, 6/10): the mean gradient, (3/2, 0)
    rows = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    torch.testing.assert_close(combine(AlignedMTL(), rows), torch.tensor([1.5, 0.0]))


def test_pcd_by_hand():
    # first step: each gradient scaled to unit norm, u1 = (1, 0), u2 = (-1, 1)/sqrt 2;
    # d = u1 + mu u2 with u2.d = tau: mu = tau - u2.u1 = tau + 1/sqrt 2; rescaled to |g1| = 2
    tau = 0.02
    rows = torch.tensor([[2.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    mu = tau + 1 / math.sqrt(2)
    d = torch.tensor([1 - mu / math.sqrt(2), mu / math.sqrt(2)], dtype=torch.float64)
    torch.testing.assert_close(combine(PCD(tau=tau), rows), 2 * d / d.norm(), atol=1e-6, rtol=0)
    # agreeing gradients: the primary gradient alone
    rows = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(combine(PCD(tau=tau), rows), rows[0], atol=1e-6, rtol=0)


def test_imtl_g_by_hand():
    # orthogonal gradients of norms 2 and 1: G = diag(4, 1), d = (2, 1), G^+ d = (1/2, 1),
    # so w = (1/3, 2/3) and the update (2/3, 2/3) projects to 2/3 on both unit gradients
    rows = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(combine(IMTLG(), rows), torch.tensor([2 / 3, 2 / 3]))
    # parallel gradients (1, 0) and (2, 0): G^+ = G / 25, d = (1, 2), G^+ d = (1, 2) / 5,
    # w = (1/3, 2/3), the update (5/3, 0)
    rows = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    torch.testing.assert_close(combine(IMTLG(), rows), torch.tensor([5 / 3, 0.0]))


def test_gradvac_by_hand():
    # g1 = (1, 0), g2 = (-1, 1), targets 0. Task 1: cos = -1/sqrt 2 < 0, so
    # g1 += |g1| (0 - cos) / |g2| g2 = (1/sqrt 2) / sqrt 2 g2 = g2 / 2, giving (1/2, 1/2);
    # task 2: the same cosine with g1, g2 += sqrt 2 (1/sqrt 2) / 1 g1 = g1, giving (0, 1).
    # The sum (1/2, 3/2) = 2 g1 + 3/2 g2; each target moves to beta cos = -1/(2 sqrt 2).
    rows = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    gradvac = bound(GradVac(beta=0.5), TWO)
    torch.testing.assert_close(
        gradvac.gradient_weights(rows, rows @ rows.T), torch.tensor([2.0, 1.5])
    )
    cos = -1 / math.sqrt(2)
    expected = torch.tensor([[0.0, 0.5 * cos], [0.5 * cos, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(gradvac.targets, expected)
    # agreeing gradients above their targets are left alone (the targets still move)
    agreeing = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    fresh = bound(GradVac(beta=0.5), TWO)
    torch.testing.assert_close(
        fresh.gradient_weights(agreeing, agreeing @ agreeing.T), torch.ones(2)
    )
    torch.testing.assert_close(
        fresh.targets[0, 1], torch.tensor(0.5 / math.sqrt(2), dtype=torch.float64)
    )


def test_excess_mtl_by_hand():
    # g1 = (1, 0), g2 = (0, 2): the first step's excess risks are sum g^2 / sqrt(g^2) = |g|,
    # (1, 2), used raw: w = softmax(log(1/2, 1/2) + (1, 2)) = (1, e) / (1 + e). The second
    # step, same rows: the sums double, the risks are |g| / sqrt 2, each 1 / sqrt 2 of its
    # baseline, an equal shift, so the weights stay.
    rows = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    excess = bound(ExcessMTL(step_size=1.0), TWO)
    expected = torch.tensor([1.0, math.e]) / (1 + math.e)
    for _ in range(2):
        torch.testing.assert_close(excess.gradient_weights(rows, rows @ rows.T), expected)
    torch.testing.assert_close(excess.baseline, torch.tensor([1.0, 2.0]))


def test_excess_mtl_starts_again_when_the_width_changes():
    """An epoch's last, narrower rows start the state again (as TorchJD's ExcessMTL), and so
    do the next epoch's full rows: each such step weighs as a fresh instance's first; the
    state keeps its shapes throughout (the room of the widest rows)."""
    generator = torch.Generator().manual_seed(0)
    wide, later = torch.randn(2, 6, generator=generator), torch.randn(2, 6, generator=generator)
    narrow = torch.randn(2, 4, generator=generator)
    excess = bound(ExcessMTL(step_size=0.5), TWO)
    seen = []
    for rows in (wide, later, narrow, wide, later):
        seen.append(excess.gradient_weights(rows, rows @ rows.T))
        assert excess.squares.shape == (2, 6) and int(excess.width) == rows.shape[1]
    first_wide = bound(ExcessMTL(step_size=0.5), TWO).gradient_weights(wide, wide @ wide.T)
    first_narrow = bound(ExcessMTL(step_size=0.5), TWO).gradient_weights(narrow, narrow @ narrow.T)
    torch.testing.assert_close(seen[2], first_narrow)
    torch.testing.assert_close(seen[3], first_wide)
    torch.testing.assert_close(seen[4], seen[1])  # and goes on as after the first step
    assert not torch.allclose(seen[1], seen[0])  # a second step on other rows moves them


def test_graddrop_follows_its_definition_on_fixed_draws(monkeypatch):
    rows = torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.0, -0.5]])
    # sign purity P = (1 + sum / sum |.|) / 2: 1, 1/3, 1/2; with draws 0.5, 0.5, 0.25 keep
    # the positive parts (P > U), the negative ones, the positive ones
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor([0.5, 0.5, 0.25]))
    torch.testing.assert_close(combine(GradDrop(), rows), torch.tensor([4.0, -2.0, 0.5]))


# -- equal to TorchJD ------------------------------------------------------------------


@pytest.mark.parametrize(("tasks", "conflicting", "seed"), CASES)
def test_equal_to_torchjd(tasks, conflicting, seed):
    rows = random_rows(tasks, conflicting, seed)
    assert_equal(combine(CAGrad(c=0.4), rows), _tight_cagrad(rows))
    for alpha in (1.0, 2.0):
        assert_equal(combine(FairGrad(alpha=alpha), rows), tjd.FairGrad(alpha=alpha)(rows))
    gram = rows @ rows.T
    solution = bound(NashMTL(max_norm=0.0), (TWO, THREE)[tasks - 2]).gradient_weights(rows, gram)
    torch.testing.assert_close(gram @ solution, 1 / solution, atol=1e-9, rtol=1e-9)  # G a = 1/a
    # where ECOS fails at once (3 tasks, conflicting, seed 0), TorchJD keeps its start, ones
    if not torch.equal(_converged_nash(tasks, 0.0).weighting(rows), torch.ones(tasks).double()):
        for max_norm in (1.0, 0.0):
            ours = combine(NashMTL(max_norm=max_norm), rows)
            assert_equal(ours, _converged_nash(tasks, max_norm)(rows))
    assert_equal(combine(ConFIG(), rows), tjd.ConFIG()(rows))
    assert_equal(combine(IMTLG(), rows), tjd.IMTLG()(rows))
    assert_equal(combine(UPGrad(), rows), tjd.UPGrad()(rows))
    assert_equal(combine(DualProj(), rows), tjd.DualProj()(rows))
    assert_equal(combine(AlignedMTL(), rows), tjd.AlignedMTL()(rows))
    torch.manual_seed(seed)  # the same orders drawn (three tasks)
    ours = combine(PCGrad(), rows)
    torch.manual_seed(seed)
    assert_equal(ours, tjd.PCGrad()(rows))
    torch.manual_seed(seed)  # the same draws
    ours = combine(GradDrop(), rows)
    torch.manual_seed(seed)
    assert_equal(ours, tjd.GradDrop()(rows))
    ours, theirs = bound(GradVac(beta=0.5), (TWO, THREE)[tasks - 2]), tjd.GradVac(beta=0.5)
    for step in range(4):  # the moving target cosines, step after step, the same orders
        moved = rows + 0.3 * step * rows.roll(1, dims=0)
        torch.manual_seed(seed + step)
        mine = ours.shared_gradient(moved, moved @ moved.T)[0]
        torch.manual_seed(seed + step)
        assert_equal(mine, theirs(moved))
    ours, theirs = bound(ExcessMTL(), (TWO, THREE)[tasks - 2]), tjd.ExcessMTL()
    for step in range(4):  # the running sums step after step; the width changes at the last
        moved = (rows + 0.3 * step * rows.roll(1, dims=0))[:, : 30 - 10 * (step == 3)]
        assert_equal(ours.shared_gradient(moved, moved @ moved.T)[0], theirs(moved))
    ours, theirs = bound(PCD(tau=0.3), (TWO, THREE)[tasks - 2]), tjd.PCD(tau=0.3)
    for step in range(3):  # the moving averages of the squared norms, step after step
        scaled = rows * torch.linspace(1, 2, tasks, dtype=rows.dtype)[:, None] ** step
        assert_equal(ours.shared_gradient(scaled, scaled @ scaled.T)[0], theirs(scaled))
    if tasks == 2:  # Frank-Wolfe reaches the minimum in one step for two tasks
        assert_equal(combine(MGDA(), rows), tjd.MGDA()(rows))


@pytest.mark.parametrize(("tasks", "conflicting", "seed"), CASES)
def test_mgda_is_the_least_norm_point_of_the_simplex(tasks, conflicting, seed):
    """The optimality conditions: w >= 0, sum w = 1, (G w)_i >= w'Gw, with equality where
    w_i > 0; never longer than TorchJD's Frank-Wolfe answer (which approaches it)."""
    rows = random_rows(tasks, conflicting, seed)
    gram = rows @ rows.T
    w = bound(MGDA(), (TWO, THREE)[tasks - 2]).gradient_weights(rows, gram)
    assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-9
    square = w @ gram @ w
    assert (gram @ w >= square - 1e-9).all()
    support = w > 1e-9
    torch.testing.assert_close((gram @ w)[support], square.expand(int(support.sum())))
    assert square <= tjd.MGDA()(rows).square().sum() + 1e-9


@pytest.mark.parametrize(("tasks", "conflicting", "seed"), CASES)
def test_dual_cone_weights_meet_the_optimality_conditions(tasks, conflicting, seed):
    """min v'Gv such that v >= u: v >= u, G v >= 0, and (G v)_i = 0 where v_i > u_i."""
    rows = random_rows(tasks, conflicting, seed)
    gram = rows @ rows.T
    targets = torch.eye(tasks, dtype=gram.dtype) / tasks
    v = solvers.dual_cone_weights(gram, targets, reg_eps=0.0)
    normalised = gram / gram.trace()
    assert (v >= targets - 1e-12).all()
    pull = v @ normalised
    assert (pull >= -1e-12).all()
    torch.testing.assert_close(pull * (v - targets), torch.zeros_like(v), atol=1e-12, rtol=0)


def _tight_cagrad(rows: torch.Tensor) -> torch.Tensor:
    """TorchJD's CAGrad with its solver asked for tight tolerances: at the defaults, the
    flat three-task objective leaves its weights some 1e-4 from the minimum."""
    import cvxpy

    solve = cvxpy.Problem.solve

    def tight(self, *args, **kwargs):
        tolerances = dict(tol_gap_abs=1e-14, tol_gap_rel=1e-14, tol_feas=1e-14)
        return solve(self, *args, **tolerances, tol_ktratio=1e-10, max_iter=500, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cvxpy.Problem, "solve", tight)
        return tjd.CAGrad(c=0.4)(rows)


def _converged_nash(tasks: int, max_norm: float):
    """TorchJD's Nash-MTL iterated to convergence: its default stop (a residual of 1e-3)
    leaves the weights that far from the bargaining solution."""
    aggregator = tjd.NashMTL(n_tasks=tasks, max_norm=max_norm, optim_niter=200)
    weighting = aggregator.weighting

    def converged(gram, alpha):
        new = weighting.alpha_param.value
        return bool(
            new is None
            or np.linalg.norm(gram @ alpha - 1 / (alpha + 1e-10)) < 1e-10
            or np.linalg.norm(new - weighting.prvs_alpha_param.value) < 1e-12
        )

    weighting._stop_criteria = converged
    return aggregator


# -- the strategies in training ----------------------------------------------------------


def test_compiled_solvers_give_the_eager_weights():
    rows = random_rows(3, True, 0).float()
    solved = (lambda: CAGrad(c=0.4), lambda: PCD(tau=0.3), MGDA, UPGrad, AlignedMTL, IMTLG)
    for make in (*solved, GradVac, ExcessMTL):
        for tasks in (TWO, THREE):
            eager, compiled = bound(make(), tasks), bound(make(), tasks)
            compiled.use_compiler()
            part = rows[: len(tasks)]
            for step in range(2):
                torch.manual_seed(step)
                compiled_weights = compiled.gradient_weights(part, part @ part.T)
                torch.manual_seed(step)
                eager_weights = eager.gradient_weights(part, part @ part.T)
                torch.testing.assert_close(compiled_weights, eager_weights)
            torch.testing.assert_close(compiled.state_dict(), eager.state_dict())


@pytest.mark.parametrize("make", [PCD, GradVac, ExcessMTL])
def test_state_travels_in_checkpoints(make):
    rows = random_rows(2, True, 0)
    trained = bound(make(), TWO)
    trained.shared_gradient(rows, rows @ rows.T)
    trained.shared_gradient(2 * rows, 4 * rows @ rows.T)
    restored = bound(make(), TWO)
    restored.load_state_dict(trained.state_dict())
    if make is PCD:
        assert int(restored.steps) == 2
    torch.testing.assert_close(
        restored.shared_gradient(rows, rows @ rows.T)[0],
        trained.shared_gradient(rows, rows @ rows.T)[0],
    )


def test_excess_mtl_goes_on_from_a_checkpoint_saved_before_the_width_was_kept():
    rows = random_rows(2, True, 0)
    trained = bound(ExcessMTL(), TWO)
    trained.shared_gradient(rows, rows @ rows.T)
    saved = trained.state_dict()
    del saved["width"]  # as checkpoints of earlier versions hold it: the sums' width is it
    restored = bound(ExcessMTL(), TWO)
    restored.load_state_dict(saved)
    assert int(restored.width) == rows.shape[1]
    torch.testing.assert_close(
        restored.shared_gradient(2 * rows, 4 * rows @ rows.T)[0],
        trained.shared_gradient(2 * rows, 4 * rows @ rows.T)[0],
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CAGrad(c=-0.1), "weighting.c=-0.1"),
        (lambda: FairGrad(alpha=-1), "weighting.alpha=-1"),
        (lambda: NashMTL(max_norm=-1), "weighting.max_norm=-1"),
        (lambda: PCD(tau=1.5), "weighting.tau=1.5"),
        (lambda: PCD(beta=1.0), "weighting.beta=1.0"),
        (lambda: UPGrad(reg_eps=-1e-4), "weighting.reg_eps=-0.0001"),
        (lambda: DualProj(reg_eps=-1), "weighting.reg_eps=-1"),
        (lambda: GradVac(beta=1.5), "weighting.beta=1.5"),
        (lambda: GradVac(eps=-1), "weighting.eps=-1"),
        (lambda: ExcessMTL(step_size=0), "weighting.step_size=0"),
    ],
)
def test_bad_settings_get_one_message(make, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        make()
