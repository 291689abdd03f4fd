"""The problems gradient-level strategies solve each step, solved in torch on the K x K Gram
matrix ``G`` of the tasks' gradients (``G[i, j] = g_i . g_j``).

For a handful of tasks these problems are tiny: a strategy's weights depend on the gradients
only through ``G``, so a step never calls a general-purpose solver. Problems over the simplex
or with inequality constraints are solved exactly by trying every face (every subset of the
tasks, or of the constraints: 2^K - 1 small linear systems, batched: three for two tasks,
seven for three) and keeping the best feasible one; the fair allocations by a few damped
Newton steps; Aligned-MTL by the eigendecomposition of ``G``. Every function is branch-free
torch (``torch.where``, fixed loops over K), so it runs eagerly or compiled, and works in
float64 whatever the gradients' dtype.
"""

from __future__ import annotations

import itertools

import torch

EPSILON = 1e-12  # below this a squared norm counts as zero


def faces(tasks: int, like: torch.Tensor, empty: bool = False) -> torch.Tensor:
    """Every nonempty subset of ``range(tasks)`` (``empty``: the empty one first) as a row of
    0/1 (``like``'s dtype and device), smallest first."""
    rows = [
        [1.0 if i in subset else 0.0 for i in range(tasks)]
        for size in range(0 if empty else 1, tasks + 1)
        for subset in itertools.combinations(range(tasks), size)
    ]
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def _restricted_inverses(gram: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """For each mask, the (pseudo-)inverse of ``gram`` restricted to the masked rows and
    columns, zero elsewhere (pseudo: faces of linearly dependent gradients stay finite)."""
    restricted = gram * masks[:, :, None] * masks[:, None, :]
    return torch.linalg.pinv(restricted, hermitian=True)


def min_norm_weights(gram: torch.Tensor) -> torch.Tensor:
    """MGDA's weights (Sener and Koltun, "Multi-Task Learning as Multi-Objective
    Optimization", NeurIPS 2018): the point of the simplex whose combination of the gradients
    has the least norm, ``argmin_{w >= 0, sum w = 1} w' G w``.

    On a face S the minimum is ``H 1 / (1' H 1)`` with ``H`` the inverse of ``G`` on S; the
    answer is the feasible face point of least norm.
    """
    g = gram.to(torch.float64)
    if g.shape[0] == 2:  # the segment's point nearest 0
        a, b, _, d = g.flatten().unbind()
        t = ((d - b) / (a + d - 2 * b).clamp_min(EPSILON)).clamp(0, 1)
        return torch.stack([t, 1 - t]).to(gram.dtype)
    masks = faces(g.shape[0], g)
    inverses = _restricted_inverses(g, masks)
    h1 = inverses.sum(-1)  # H 1 per face
    candidates = h1 / h1.sum(-1, keepdim=True)
    candidates = torch.where(masks.sum(-1, keepdim=True) == 1, masks, candidates)
    return _best(candidates, _quadratic(candidates, g)).to(gram.dtype)


def cagrad_weights(gram: torch.Tensor, c: float, norm_eps: float = 1e-4) -> torch.Tensor:
    """CAGrad's weights (Liu et al., "Conflict-Averse Gradient Descent for Multi-task
    Learning", NeurIPS 2021, Algorithm 1), on the Gram matrix normalised by its trace:

    ``w* = argmin_{w in simplex} w' G g0 + sqrt(phi) |G_w|`` with ``g0`` the mean gradient and
    ``sqrt(phi) = c |g0|`` (``b = G 1 / K``: each task's inner product with ``g0``); the
    update is ``g0 + sqrt(phi) / |G_w*| G_w*``.
    """
    tasks = gram.shape[0]
    g = gram.to(torch.float64)
    g = _normalised(g, norm_eps)
    mean = g.sum(-1) / tasks  # b = G g0 in weight space
    sqrt_phi = c * (g.sum() / tasks**2).clamp_min(0).sqrt()
    w = _cagrad_two(g, mean, sqrt_phi) if tasks == 2 else _cagrad_faces(g, mean, sqrt_phi)
    norm = (w @ g @ w).clamp_min(0).sqrt()
    weights = 1.0 / tasks + sqrt_phi / norm.clamp_min(EPSILON) * w
    return torch.where(norm >= norm_eps, weights, torch.zeros_like(weights)).to(gram.dtype)


def _cagrad_two(g: torch.Tensor, mean: torch.Tensor, sqrt_phi: torch.Tensor) -> torch.Tensor:
    """Two tasks, ``w = (t, 1 - t)``: ``|G_w|^2 = p t^2 + q t + d``, and the stationary point
    solves ``s u = -2 delta |G_w|`` in ``u = 2 p t + q`` (``delta = b_0 - b_1``): ``u^2 =
    delta^2 (4 p d - q^2) / (p phi - delta^2)``, ``u`` of the sign of ``-delta``. Without one
    (``p phi <= delta^2``) the objective is monotone and the answer an end."""
    a, b, _, d = g.flatten().unbind()
    p, q = a - 2 * b + d, 2 * (b - d)
    delta = mean[0] - mean[1]
    room = p * sqrt_phi**2 - delta**2
    u = -torch.sign(delta) * (delta**2 * (4 * p * d - q**2).clamp_min(0) / room).clamp_min(0).sqrt()
    inside = ((u - q) / (2 * p).clamp_min(EPSILON)).clamp(0, 1)
    t = torch.where((room > EPSILON) & (p > EPSILON), inside, (delta < 0).to(g.dtype))
    return torch.stack([t, 1 - t])


def _cagrad_faces(g: torch.Tensor, mean: torch.Tensor, sqrt_phi: torch.Tensor) -> torch.Tensor:
    """Any number of tasks: the best face point. On a face S (``H``: the inverse of G on S)
    the stationary point is ``w = (lambda H 1 - H b) / sqrt(D)``, ``lambda = (B + sqrt(D)) /
    A``, with ``A = 1'H1``, ``B = 1'Hb``, ``C = b'Hb``, ``D = B^2 - AC + A phi``; vertices are
    always candidates."""
    masks = faces(g.shape[0], g)
    inverses = _restricted_inverses(g, masks)
    h1, hb = inverses.sum(-1), inverses @ mean
    a, b = h1.sum(-1), hb.sum(-1)
    discriminant = b**2 - a * (hb * mean).sum(-1) + a * sqrt_phi**2
    root = discriminant.clamp_min(EPSILON).sqrt()
    lam = (b + root) / a.clamp_min(EPSILON)
    candidates = (lam[:, None] * h1 - hb) / root[:, None]
    singleton = masks.sum(-1, keepdim=True) == 1
    usable = singleton | ((discriminant > EPSILON) & (a > EPSILON))[:, None]
    candidates = torch.where(singleton, masks, torch.where(usable, candidates, 0.0))
    values = candidates @ mean + sqrt_phi * _quadratic(candidates, g).clamp_min(0).sqrt()
    return _best(candidates, torch.where(usable.squeeze(-1), values, torch.inf))


def fair_weights(gram: torch.Tensor, alpha: float, steps: int = 20) -> torch.Tensor:
    """The positive ``x`` with ``G x = x^(-1/alpha)``: FairGrad's weights (Ban and Ji, "Fair
    Resource Allocation in Multi-Task Learning", ICML 2024, Eq. 4); at ``alpha = 1``,
    Nash-MTL's (:func:`nash_weights`).

    Two tasks at ``alpha = 1``: ``x_1 / x_0 = sqrt(G_00 / G_11)``, in closed form. Otherwise
    ``x`` minimises the strictly convex ``x'Gx / 2 - sum h(x_i)`` (``h' = x^(-1/alpha)``):
    start from the solution for orthogonal gradients, rescaled to the best multiple, then
    damped Newton steps (step ``1 / (1 + decrement)`` far away, full steps near; never
    leaving x > 0).
    """
    g = gram.to(torch.float64)
    if alpha == 0:  # linear scalarisation with uniform weights (the paper, Section 3)
        return torch.full_like(_diagonal(gram), 1.0 / gram.shape[0])
    if alpha == 1 and g.shape[0] == 2:
        # x_0 (a x_0 + b x_1) = 1 = x_1 (b x_0 + d x_1) gives x_1 / x_0 = sqrt(a / d):
        # both weighted gradients get the same norm
        a, b, _, d = g.flatten().unbind()
        ratio = (a / d.clamp_min(EPSILON)).sqrt()
        first = (a + b * ratio).clamp_min(EPSILON).rsqrt()
        return torch.stack([first, first * ratio]).to(gram.dtype)
    power = -1.0 / alpha
    x = _diagonal(g).clamp_min(EPSILON) ** (-alpha / (alpha + 1))
    curvature = (x @ g @ x).clamp_min(EPSILON)  # the best multiple tau of x:
    x = x * ((x ** (1 + power)).sum() / curvature) ** (alpha / (alpha + 1))
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    for _ in range(steps):
        residual = g @ x - x**power
        hessian = g + eye * (-power * x ** (power - 1))
        direction = torch.linalg.solve(hessian, residual)
        decrement = (residual @ direction).clamp_min(0).sqrt()
        step = torch.where(decrement < 0.25, 1.0, 1.0 / (1.0 + decrement))
        # at most 90 % of the way to x_i = 0 for any coordinate the step decreases
        room = torch.where(direction > 0, 0.9 * x / direction.clamp_min(EPSILON), torch.inf)
        x = x - torch.minimum(step, room.min()) * direction
    return x.to(gram.dtype)


def nash_weights(gram: torch.Tensor, max_norm: float = 1.0, steps: int = 20) -> torch.Tensor:
    """Nash-MTL's weights (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022):
    the Nash bargaining solution, the positive ``a`` with ``G a = 1 / a`` (FairGrad at
    ``alpha = 1``), shrunk so that ``|G_a| <= max_norm`` (0: never), as the official code."""
    g = gram.to(torch.float64)
    a = fair_weights(g, 1.0, steps)
    if max_norm > 0:
        norm = (a @ g @ a).clamp_min(0).sqrt()
        a = torch.where(norm > max_norm, a * max_norm / norm, a)
    return a.to(gram.dtype)


def pcgrad_weights(gram: torch.Tensor, orders: torch.Tensor | None = None) -> torch.Tensor:
    """PCGrad's weights (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020,
    Algorithm 1): each task's gradient, projected in turn onto the normal plane of every
    gradient it conflicts with (``orders[i]``: the order for task i, a permutation of the
    tasks; the paper draws it at random), then summed. With two tasks the order does not
    matter: ``w_i = 1 - min(G_01, 0) / G_ii`` (the other projection removes from the other
    gradient its component along ``g_i``)."""
    tasks = gram.shape[0]
    g = gram.to(torch.float64)
    if tasks == 2:
        conflict = g[0, 1].clamp_max(0)
        return (1 - conflict / _diagonal(g).clamp_min(EPSILON)).to(gram.dtype)
    if orders is None:
        orders = torch.arange(tasks).expand(tasks, tasks)
    eye = torch.eye(tasks, dtype=g.dtype, device=g.device)
    total = torch.zeros(tasks, dtype=g.dtype, device=g.device)
    for i in range(tasks):
        current = eye[i]
        for position in range(tasks):
            j = orders[i, position]
            inner = g[j] @ current
            conflict = (j != i) & (inner < 0)
            current = current + torch.where(conflict, -inner / g[j, j], 0.0) * eye[j]
        total = total + current
    return total.to(gram.dtype)


def gradvac_weights(
    gram: torch.Tensor, targets: torch.Tensor, orders: torch.Tensor, beta: float, eps: float
) -> torch.Tensor:
    """GradVac's weights (Wang et al., "Gradient Vaccine: Investigating and Improving
    Multi-task Optimization in Massively Multilingual Models", ICLR 2021, Algorithm 2): for
    each task i, the other tasks j in the order ``orders[i]``; where the cosine ``phi`` of
    the (already corrected) ``g_i`` with ``g_j`` is below its target ``phi_hat[i, j]``,
    ``g_i += |g_i| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) / (|g_j|
    sqrt(1 - phi_hat^2)) g_j``, which brings the cosine to the target; then ``phi_hat[i, j]
    <- (1 - beta) phi_hat + beta phi``. The corrected rows are summed. ``g_i = c_i G`` is
    kept as coefficients ``c_i``, so everything reads the Gram matrix; ``targets``
    (``phi_hat``) moves in place."""
    tasks = gram.shape[0]
    g = gram.to(torch.float64)
    hats = targets.to(torch.float64)
    eye = torch.eye(tasks, dtype=g.dtype, device=g.device)
    norms = gradient_norms(g)
    visits = eye[orders]  # each task j of each order, one-hot
    total = torch.zeros(tasks, dtype=g.dtype, device=g.device)
    moved = []
    for i in range(tasks):
        current, inner, row = eye[i], g[i], hats[i]  # c_i, c_i G, phi_hat[i]
        for position in range(tasks - 1):
            j = visits[i, position]
            norm_i = (inner @ current).clamp_min(0).sqrt()
            norm_j = norms @ j
            phi = (inner @ j) / (norm_i * norm_j + eps)
            hat = row @ j
            off = (1 - phi * phi).clamp_min(0).sqrt()
            off_hat = (1 - hat * hat).clamp_min(0).sqrt()
            step = norm_i * (hat * off - phi * off_hat) / (norm_j * off_hat + eps)
            step = torch.where(phi < hat, step, 0.0)
            current = current + step * j
            inner = inner + step * (j @ g)
            row = row + (beta * (phi - hat)) * j
        total = total + current
        moved.append(row)
    targets.copy_(torch.stack(moved).to(targets.dtype))
    return total.to(gram.dtype)


def imtl_g_weights(gram: torch.Tensor) -> torch.Tensor:
    """IMTL-G's weights (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, in
    the form of Quinton and Rey, "Jacobian Descent for Multi-Objective Optimization", 2024):
    ``w = G^+ d / sum(G^+ d)`` with ``d_i = |g_i|``, so the combined gradient has an equal
    projection on every task's unit gradient (zero where ``G^+ d`` sums to zero)."""
    g = gram.to(torch.float64)
    v = torch.linalg.pinv(g) @ gradient_norms(g)
    total = v.sum()
    return torch.where(total.abs() < 1e-12, 0.0, v / total).to(gram.dtype)


def config_weights(gram: torch.Tensor) -> torch.Tensor:
    """ConFIG's weights (Liu et al., "ConFIG: Towards Conflict-free Training of Physics
    Informed Neural Networks", ICLR 2025, Eq. 2): the direction with an equal cosine to every
    gradient, ``pinv(U) 1`` for the unit gradients ``U``, scaled to the sum of the gradients'
    projections on it. With ``n_i = |g_i|`` and ``c = pinv(N^-1 G N^-1) 1``, the direction
    is ``sum_j c_j g_j / n_j``; for two tasks ``c`` is a multiple of ``(1, 1)``."""
    g = gram.to(torch.float64)
    norms = gradient_norms(g)
    inverse_norms = torch.where(norms > 0, 1.0 / norms.clamp_min(EPSILON), 0.0)
    if g.shape[0] == 2:  # equal cosines to two gradients: the bisector of their unit vectors
        along = inverse_norms
    else:
        units = g * inverse_norms[:, None] * inverse_norms[None, :]
        along = torch.linalg.pinv(units, hermitian=True).sum(-1) * inverse_norms
    # the direction sum_j along_j g_j, scaled to the sum of the gradients' projections on it
    square = along @ g @ along
    weights = (g @ along).sum() / square.clamp_min(EPSILON) * along
    return torch.where(square > EPSILON, weights, torch.zeros_like(weights)).to(gram.dtype)


def dual_cone_weights(
    gram: torch.Tensor, targets: torch.Tensor, norm_eps: float = 1e-4, reg_eps: float = 1e-4
) -> torch.Tensor:
    """For each row ``u`` of ``targets``, the weights ``v`` of the projection of ``J'u`` onto
    the dual cone of the gradients (the directions that improve every task), by Proposition 1
    of Quinton and Rey, "Jacobian Descent for Multi-Objective Optimization", 2024:
    ``v = argmin v'Gv`` such that ``v >= u``, on ``G`` normalised by its trace plus ``reg_eps``
    on the diagonal (as TorchJD's projector).

    The QP is strictly convex, so its answer is the feasible point of least value among the
    stationary points of every set F of free coordinates (``v_A = u_A`` off F, ``G_FF v_F =
    -G_FA u_A`` on it): 2^K small systems, batched. Two tasks and ``u >= 0`` (the targets of
    UPGrad and DualProj): at most one ``(G u)_i`` is negative (else ``u'Gu < 0``), and only
    that ``v_i`` leaves its bound, to ``(G v)_i = 0``.
    """
    tasks = gram.shape[0]
    g = gram.to(torch.float64)
    g = _normalised(g, norm_eps) + reg_eps * torch.eye(tasks, dtype=g.dtype, device=g.device)
    u = targets.to(torch.float64)
    if tasks == 2:
        return (u + (-(u @ g)).clamp_min(0) / _diagonal(g)).to(gram.dtype)
    free = faces(tasks, g, empty=True)  # (sets, K)
    fixed = 1 - free
    # G on the free block, the identity on the fixed one: the fixed part of the answer is 0
    systems = g * free[:, :, None] * free[:, None, :] + torch.diag_embed(fixed)
    at_bound = u[:, None, :] * fixed  # (rows, sets, K)
    pull = -(at_bound @ g) * free
    v = at_bound + torch.linalg.solve(systems, pull.unsqueeze(-1)).squeeze(-1)
    feasible = (v - u[:, None, :] >= -1e-9 * (1 + v.abs())).all(-1)
    values = torch.where(feasible, _quadratic(v, g), torch.inf)  # all at bound: feasible
    best = values.argmin(-1)[:, None, None].expand(-1, 1, tasks)
    return v.gather(1, best).squeeze(1).to(gram.dtype)


def upgrad_weights(gram: torch.Tensor, reg_eps: float = 1e-4) -> torch.Tensor:
    """UPGrad's weights (Quinton and Rey, "Jacobian Descent for Multi-Objective Optimization",
    2024): each gradient projected onto the dual cone of all of them, then averaged."""
    tasks = gram.shape[0]
    eye = torch.eye(tasks, dtype=torch.float64, device=gram.device)
    return dual_cone_weights(gram, eye / tasks, reg_eps=reg_eps).sum(0)


def dualproj_weights(gram: torch.Tensor, reg_eps: float = 1e-4) -> torch.Tensor:
    """DualProj's weights (Lopez-Paz and Ranzato, "Gradient Episodic Memory for Continual
    Learning", NeurIPS 2017, Eq. 11, as TorchJD applies it): the mean gradient projected onto
    the dual cone of the gradients."""
    tasks = gram.shape[0]
    mean = torch.full((1, tasks), 1.0 / tasks, dtype=torch.float64, device=gram.device)
    return dual_cone_weights(gram, mean, reg_eps=reg_eps)[0]


def aligned_weights(gram: torch.Tensor) -> torch.Tensor:
    """Aligned-MTL's weights (Senushkin et al., "Independent Component Alignment for
    Multi-Task Learning", CVPR 2023, Algorithm 1): ``B 1 / K`` with the balance
    transformation ``B = sqrt(lambda_min) V S^-1 V'`` from ``G = V S^2 V'``, which makes the
    aligned gradients (the rows of ``B J``) orthogonal, each of norm ``sqrt(lambda_min)``.
    Eigenvalues below ``lambda_max K eps`` (eps of the gradients' dtype) count as zero and
    are left out, as in TorchJD; with none left, ``B`` is the identity."""
    tasks = gram.shape[0]
    values, vectors = torch.linalg.eigh(gram.to(torch.float64))
    kept = values > values.max() * tasks * torch.finfo(gram.dtype).eps
    inverse_roots = torch.where(kept, values.clamp_min(EPSILON).rsqrt(), 0.0)
    smallest = torch.where(kept, values, torch.inf).min()
    smallest = torch.where(kept.any(), smallest, 0.0)
    balance = smallest.sqrt() * (vectors * inverse_roots) @ vectors.T
    eye = torch.eye(tasks, dtype=balance.dtype, device=balance.device)
    balance = torch.where(kept.any(), balance, eye)
    return (balance.sum(-1) / tasks).to(gram.dtype)


def pcd_weights(
    gram: torch.Tensor, scales: torch.Tensor, taus: torch.Tensor, tol: float = 1e-9
) -> torch.Tensor:
    """Priority-Constrained Descent's weights ("Not All Objectives Are Born Equal:
    Priority-Constrained Descent for Hierarchical Multi-Objective Optimization", TMLR 2026):
    with each gradient scaled (``scales``: one over the root of its moving squared norm),
    ``d = argmin |d - g_1|^2 / 2`` such that ``g_j . d >= tau_j |g_j|^2`` for every secondary
    task j, rescaled to the norm of ``g_1``; the primary task's gradient alone where the
    constraints cannot hold together. ``d = g_1 + sum_j mu_j g_j``, ``mu >= 0``.
    """
    g = gram.to(torch.float64)
    scaled = g * scales[:, None] * scales[None, :]
    mu = _pcd_two(scaled, taus) if g.shape[0] == 2 else _pcd_active_sets(scaled, taus, tol)
    w = torch.cat([torch.ones(1, dtype=g.dtype, device=g.device), mu])
    length2 = w @ scaled @ w
    magnitude = (w.abs() @ _diagonal(scaled).clamp_min(0).sqrt()) ** 2
    precision = 10.0 * torch.finfo(gram.dtype).eps
    weights = w * scales * (g[0, 0] / length2.clamp_min(EPSILON)).sqrt()
    usable = (g[0, 0] > 0) & (length2 > precision * magnitude)
    return torch.where(usable, weights, torch.zeros_like(weights)).to(gram.dtype)


def _pcd_two(scaled: torch.Tensor, taus: torch.Tensor) -> torch.Tensor:
    """One constraint: ``mu = max(tau G_11 - G_10, 0) / G_11``."""
    need = taus * scaled[1, 1] - scaled[1, 0]
    return (need.clamp_min(0) / scaled[1, 1].clamp_min(EPSILON)).reshape(1)


def _pcd_active_sets(scaled: torch.Tensor, taus: torch.Tensor, tol: float) -> torch.Tensor:
    """Any number of constraints: on each set A of active ones ``mu_A`` solves ``G_AA mu_A =
    tau_A diag(G_AA) - G_A0``; the answer is the feasible set's (``mu >= 0``, every constraint
    held) of least ``|d - g_0|``; the primary gradient alone where none is."""
    secondary = scaled[1:, 1:]
    need = taus * _diagonal(secondary) - scaled[1:, 0]  # > 0: g_0 alone breaks constraint j
    masks = faces(secondary.shape[0], scaled, empty=True)
    mus = (_restricted_inverses(secondary, masks) @ need).clamp_min(0)
    slack_tol = tol * _diagonal(scaled).max()
    feasible = ((mus @ secondary - need) >= -slack_tol).all(-1)
    values = torch.where(feasible, _quadratic(mus, secondary), torch.inf)
    return mus[values.argmin()] * feasible.any()


def graddrop(rows: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """GradDrop (Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with
    Gradient Sign Dropout", NeurIPS 2020, Algorithm 1, no leak): per coordinate, the positive
    sign purity ``P = (1 + sum_i g_i / sum_i |g_i|) / 2``; with a uniform draw ``U``, keep the
    positive components where ``P > U``, the negative ones where ``P < U``, and sum them."""
    purity = 0.5 * (1.0 + rows.sum(0) / rows.abs().sum(0))
    positive = rows.clamp_min(0).sum(0)
    negative = rows.clamp_max(0).sum(0)
    return torch.where(purity > draws, positive, 0.0) + torch.where(purity < draws, negative, 0.0)


def excess_mtl_weights(
    rows: torch.Tensor,
    sums: torch.Tensor,
    width: torch.Tensor,
    weights: torch.Tensor,
    baseline: torch.Tensor,
    step_size: float,
) -> torch.Tensor:
    """ExcessMTL's weights (He et al., "Robust Multi-Task Learning with Excess Risks", ICML
    2024, Eqs. 6, 7 and 9): each task's excess risk ``e_t = sum g_t^2 / sqrt(S_t)``, with
    ``S_t`` the running sum of ``g_t^2`` per coordinate (an AdaGrad diagonal Hessian), taken
    relative to the first step's (kept in ``baseline`` and used raw, as the official code);
    then the exponentiated-gradient step ``w <- softmax(log w + eta e)``.

    ``sums`` holds ``S`` in its first ``rows.shape[1]`` columns (the rest is never read
    before a restart writes it); ``width`` is the last step's width: where it differs (the
    first step, a new width) everything starts again, from uniform weights and this step's
    squares. ``sums``, ``width``, ``weights`` and ``baseline`` move in place; the choice is
    made with tensors, so a compiled step keeps one graph."""
    count, current = rows.shape
    first = width != current
    width.fill_(current)
    weights.copy_(torch.where(first, torch.full_like(weights, 1.0 / count), weights))
    squares = sums[:, :current]
    square = rows.square()
    squares.copy_(torch.where(first, square, squares + square))
    risks = (square / (squares + 1e-7).sqrt()).sum(1)
    baseline.copy_(torch.where(first, risks, baseline))
    risks = torch.where(first, risks, risks / (baseline + 1e-7))
    weights.copy_(torch.softmax(weights.log() + step_size * risks, dim=0))
    return weights.to(rows.dtype, copy=True)


def _diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The diagonal of a square matrix, as a strided view (the compiler's ``diagonal`` warns)."""
    return matrix.flatten()[:: matrix.shape[0] + 1]


def gradient_norms(gram: torch.Tensor) -> torch.Tensor:
    """Each task's gradient norm, ``sqrt(G_ii)`` (rounding never makes it NaN)."""
    return _diagonal(gram).clamp_min(0).sqrt()


def _normalised(gram: torch.Tensor, norm_eps: float) -> torch.Tensor:
    """``gram`` divided by its trace (zero below ``norm_eps``), as TorchJD's ``normalize``."""
    trace = _diagonal(gram).sum()
    return torch.where(trace < norm_eps, torch.zeros_like(gram), gram / trace)


def _quadratic(weights: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``w' G w`` for each row ``w``."""
    return ((weights @ gram) * weights).sum(-1)


def _best(candidates: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The candidate of least value among those inside the simplex (up to rounding; each sums
    to 1 and is zero off its face by construction)."""
    inside = (candidates >= -1e-9).all(-1)
    return candidates[torch.where(inside, values, torch.inf).argmin()].clamp_min(0)
