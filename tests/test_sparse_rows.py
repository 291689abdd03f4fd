"""Sparse row updates: only the rows a batch read change, and they change as Adam would."""

import copy

import pytest
import torch
from torchjd.aggregation import PCGrad

from conftest import multitask_net
from mtrec.data.info import DataInfo
from mtrec.errors import ConfigError
from mtrec.models import MultiTaskNet
from mtrec.mtl.objective import Objective
from mtrec.mtl.tasks import Interaction
from mtrec.mtl.weighting import Aggregation, FixedWeighting
from mtrec.training.module import RecommenderModule
from mtrec.training.optim import RowSparseAdam

NUM_USERS, NUM_ITEMS = 30, 20
BATCH = {
    "users": torch.tensor([1, 2, 2, 5]),
    "items": torch.tensor([3, 4, 5, 4]),
    "ratings": torch.tensor([4.0, 3.0, 5.0, 1.0]),
    "negatives": torch.tensor([[7], [8], [3], [9]]),
}
READ_USERS, READ_ITEMS = {1, 2, 5}, {3, 4, 5, 7, 8, 9}


def net(**settings) -> MultiTaskNet:
    torch.manual_seed(0)
    genres = torch.zeros(NUM_ITEMS, 1, dtype=torch.long)
    return multitask_net(DataInfo(NUM_USERS, NUM_ITEMS, genres, None), **settings)


def one_step(module: RecommenderModule, batch=BATCH) -> None:
    """One optimizer step, as training takes it (the module's own step and optimizer)."""
    optimizer = module.configure_optimizers()
    optimizer.zero_grad()
    module.engine.step(batch, torch.Tensor.backward)
    optimizer.step()


def changed_rows(before: torch.Tensor, after: torch.Tensor) -> set[int]:
    return set((before != after).any(1).nonzero().flatten().tolist())


@pytest.mark.parametrize(
    "sharing", ["shared", "separate", "items", "cross_stitch", "mmoe", "stem", "mmoe_mlp"]
)
@pytest.mark.parametrize("weighting", ["fixed", "pcgrad"])
def test_a_sparse_step_leaves_the_rows_no_one_read_bit_identical(sharing, weighting):
    strategy = (
        FixedWeighting({"interaction": 0.99, "rating": 0.01})
        if weighting == "fixed"
        else Aggregation(PCGrad())
    )
    module = RecommenderModule(net(sharing=sharing), weighting=strategy, sparse_rows=True)
    module.engine.losses = (
        module.engine.weighted_losses
    )  # eager: the test is about the update, not the compiler
    before = {name: p.detach().clone() for name, p in module.net.named_parameters()}
    one_step(module)
    tables = 0
    for name, p in module.net.named_parameters():
        is_table = name.startswith(("mixer.users.", "mixer.items."))
        if p.shape[0] in (NUM_USERS, NUM_ITEMS) and is_table or "biases" in name:
            tables += 1
            read = READ_USERS if p.shape[0] == NUM_USERS else READ_ITEMS
            changed = changed_rows(before[name], p.detach())
            assert changed <= read, name  # rows no one read: bit-identical
            if "rating" not in name or sharing not in ("separate", "items", "cross_stitch"):
                assert changed, name  # and the rows read did learn
            else:  # a rating table: the rating head reads only the observed pairs
                assert changed <= set(BATCH["users" if "user" in name else "items"].tolist())
        elif ".mlp." in name:  # dense parameters: plain Adam
            assert not torch.equal(before[name], p.detach()), name
    assert tables >= 3


def test_the_first_step_equals_adams_on_the_rows_it_touches():
    """One step from the same start: Adam's first step is lr * g / (|g| + eps') per
    coordinate (its moments are g and g², bias-corrected), so a touched row moves by
    about -lr * sign(g); the row-wise update takes the same step there and nothing elsewhere."""
    dense = torch.nn.Embedding(6, 3)
    sparse = copy.deepcopy(dense)
    sparse.sparse = True
    ids = torch.tensor([1, 4, 4])
    weights = torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.0, -1.0], [-1.0, 0.25, 2.0]])
    adam = torch.optim.Adam(dense.parameters(), lr=0.1)
    rowwise = RowSparseAdam(sparse.parameters(), lr=0.1, compile=False)
    start = dense.weight.detach().clone()
    for table, optimizer in ((dense, adam), (sparse, rowwise)):
        (table(ids) * weights).sum().backward()
        optimizer.step()
    assert sparse.weight.grad.is_sparse
    moved = sparse.weight.detach() - start
    # by hand: row 1 gets g = weights[0]; row 4 gets g = weights[1] + weights[2] = [2, 1.25, 1]
    expected = torch.zeros(6, 3)
    expected[1] = -0.1 * torch.sign(weights[0])
    expected[4] = -0.1 * torch.sign(weights[1] + weights[2])
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(sparse.weight[[1, 4]], dense.weight[[1, 4]], rtol=0, atol=1e-6)
    untouched = [0, 2, 3, 5]
    assert torch.equal(sparse.weight[untouched], start[untouched])


@pytest.mark.parametrize("compile", [False, True])
def test_later_steps_follow_torch_sparse_adam(compile, monkeypatch):
    """Over several steps with changing rows, the row-wise update (eager, and compiled with
    row counts that change) equals PyTorch's own SparseAdam."""
    if compile:  # the compiler is off for the other tests (conftest)
        monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)
        torch.compiler.reset()
        torch._dynamo.utils.counters.clear()
    torch.manual_seed(1)
    ours, reference = torch.nn.Embedding(10, 4, sparse=True), torch.nn.Embedding(10, 4)
    reference.sparse = True
    reference.load_state_dict(ours.state_dict())
    row_wise = RowSparseAdam(ours.parameters(), lr=0.05, betas=(0.8, 0.9), compile=compile)
    sparse_adam = torch.optim.SparseAdam(reference.parameters(), lr=0.05, betas=(0.8, 0.9))
    for _ in range(6):
        ids = torch.randint(10, (5,))
        target = torch.randn(5, 4)
        for table, optimizer in ((ours, row_wise), (reference, sparse_adam)):
            optimizer.zero_grad()
            ((table(ids) - target) ** 2).sum().backward()
            optimizer.step()
        torch.testing.assert_close(ours.weight, reference.weight, rtol=1e-5, atol=1e-6)
    assert row_wise.state[ours.weight]["step"] == 6
    if compile:
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert 1 <= graphs < 6  # compiled, and not again for every new number of rows


def autograd_step(module: RecommenderModule) -> None:
    """One step by a plain backward pass of the weighted loss: every lookup through the
    tables, each giving its own sparse gradient."""
    optimizer = module.configure_optimizers()
    optimizer.zero_grad()
    module.engine.losses(BATCH)[0]["loss"].backward()
    optimizer.step()


@pytest.mark.parametrize("sharing", ["shared", "items", "separate", "mmoe"])
def test_reading_the_shared_rows_once_gives_the_plain_backward_step(sharing):
    once = RecommenderModule(net(sharing=sharing), sparse_rows=True, compile=False)
    plain = RecommenderModule(net(sharing=sharing), sparse_rows=True, compile=False)
    assert once.engine.read_once
    before = once.net.mixer.table("user", "interaction").weight.detach().clone()
    one_step(once)
    autograd_step(plain)
    # the same sums in another order: equal to float rounding, a thousandth of Adam's step
    for (name, p), q in zip(once.net.named_parameters(), plain.net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert (
        once.net.mixer.table("user", "interaction").weight - before
    ).abs().max() > 5e-4  # the rows did move


def test_per_task_gradients_reach_sparse_tables_as_the_plain_backward_does():
    """Fixed weights through each task's copy of the shared rows (diagnostics on) give the
    same step as the plain backward pass: the combined gradient is sent back sparse."""
    plain = RecommenderModule(net(), sparse_rows=True, compile=False, diagnostics=False)
    copies = RecommenderModule(net(), sparse_rows=True, compile=False, diagnostics=True)
    assert copies.task_gradients and not plain.task_gradients
    autograd_step(plain)
    one_step(copies)
    for (name, p), q in zip(plain.net.named_parameters(), copies.net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def test_sparse_rows_checkpoint_round_trip_keeps_the_row_moments():
    module = RecommenderModule(net(), sparse_rows=True, compile=False)
    optimizer = module.configure_optimizers()
    optimizer.zero_grad()
    module.engine.step(BATCH, torch.Tensor.backward)
    optimizer.step()
    state = copy.deepcopy(optimizer.state_dict())
    restored = RecommenderModule(net(), sparse_rows=True, compile=False).configure_optimizers()
    restored.load_state_dict(state)
    table = restored.param_groups[0]["params"][0]
    moments = restored.state[table]["exp_avg"]
    assert changed_rows(torch.zeros_like(moments), moments) == READ_USERS


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"optimizer": "sgd"}, "needs optimizer=adam or optimizer=adamw"),
        ({"l2": 1e-4}, "model.l2=0.0001: a penalty on all parameters"),
    ],
)
def test_sparse_rows_refuse_what_would_touch_every_row(settings, message):
    from functools import partial

    from mtrec.mtl.objective import Objective

    optimizer = partial(torch.optim.SGD, lr=0.1) if "optimizer" in settings else None
    objective = Objective(l2=settings.get("l2", 0.0))
    with pytest.raises(ConfigError, match=message):
        module = RecommenderModule(
            net(), objective=objective, optimizer=optimizer, sparse_rows=True, compile=False
        )
        module.configure_optimizers()


def test_sparse_rows_need_embedding_tables():
    from mtrec.data.interactions import Interactions
    from mtrec.models.baselines import Popularity

    rows = torch.tensor([0, 1])
    train = Interactions(rows, rows, rows.float(), rows, NUM_USERS, NUM_ITEMS)
    data = DataInfo(NUM_USERS, NUM_ITEMS, torch.zeros(NUM_ITEMS, 1, dtype=torch.long), train)
    with pytest.raises(ConfigError, match="has no embedding tables"):
        RecommenderModule(Popularity(data), Objective([Interaction()]), sparse_rows=True)
