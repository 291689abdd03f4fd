"""The whole training step compiled (``model.compile=step``) against the step's parts apart
(``model.compile=loss``): the same parameters and optimizer state after a few steps, within
float tolerance, for loss-level and gradient-level strategies, Adam and AdamW, and sparse
rows (the tables' lazy Adam inside the graph)."""

from __future__ import annotations

import logging
from functools import partial

import lightning as L
import pytest
import torch

from conftest import multitask_net
from mtrec.data.datamodule import MovieLensDataModule
from mtrec.data.info import DataInfo
from mtrec.errors import ConfigError
from mtrec.models import MatrixFactorization
from mtrec.mtl.objective import Objective
from mtrec.mtl.step import LOSS, StepEngine
from mtrec.mtl.tasks import Interaction, Rating
from mtrec.mtl.weighting import (
    MGDA,
    PCD,
    ExcessMTL,
    FixedWeighting,
    GradNorm,
    PCGrad,
    Uncertainty,
)
from mtrec.training.compiled_step import CompiledStep, unsupported
from mtrec.training.module import RecommenderModule
from mtrec.training.optim import RowSparseAdam

USERS, ITEMS, BATCH = 30, 40, 16


@pytest.fixture(autouse=True)
def compiler(monkeypatch):
    """The compiler on (tests run eagerly otherwise: tests/conftest.py), its caches fresh."""
    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)
    torch.compiler.reset()


TASKS = {"interaction": 0.9, "rating": 0.1}


def batches(count: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "users": torch.randint(0, USERS, (BATCH,), generator=generator),
            "items": torch.randint(0, ITEMS, (BATCH,), generator=generator),
            "negatives": torch.randint(0, ITEMS, (BATCH, 1), generator=generator),
            "ratings": torch.randint(1, 6, (BATCH,), generator=generator).float(),
        }
        for _ in range(count)
    ]


def build(make_weighting, make_optimizer, sharing="shared", tasks=None):
    torch.manual_seed(0)
    net = multitask_net(
        DataInfo(USERS, ITEMS), embedding_dim=4, layer_sizes=(12, 8), sharing=sharing
    )
    weighting = make_weighting()
    engine = StepEngine(net, Objective(tasks), weighting)
    optimizer = make_optimizer([*net.parameters(), *weighting.parameters()])
    return net, weighting, engine, optimizer


def separate_step(engine, optimizer, batch):
    optimizer.zero_grad()
    losses = engine.step(batch, torch.Tensor.backward)
    optimizer.step()
    return losses


STRATEGIES = {
    "fixed": partial(FixedWeighting, TASKS),
    "uncertainty": Uncertainty,  # learned log-variances: parameters of the weighting
    "mgda": MGDA,  # per-task gradients, weights from the Gram matrix
    "pcgrad": PCGrad,
    "pcd": PCD,  # moving averages in buffers, updated inside the graph
}


def two_groups(params):
    """The first half of the parameters at Adam's own settings, the rest at their own
    (``model.parts``): a learning rate and a weight decay of their own."""
    half = len(params) // 2
    groups = [
        {"params": params[:half]},
        {"params": params[half:], "lr": 0.002, "weight_decay": 0.1},
    ]
    return torch.optim.Adam(groups, lr=0.01)


OPTIMIZERS = {
    "adam": partial(torch.optim.Adam, lr=0.01, fused=True),
    "adam_groups": two_groups,
    "adamw": partial(torch.optim.AdamW, lr=0.01, weight_decay=0.1),
    "adam_l2": partial(torch.optim.Adam, lr=0.01, weight_decay=0.01),
}


@pytest.mark.parametrize(
    ("strategy", "optimizer", "sharing"),
    [
        ("fixed", "adam", "shared"),
        ("fixed", "adamw", "separate"),
        ("fixed", "adam_groups", "shared"),
        ("mgda", "adam_groups", "shared"),
        ("uncertainty", "adam_l2", "shared"),
        ("mgda", "adam", "shared"),
        ("pcgrad", "adam", "shared"),
        ("pcd", "adam", "shared"),
        ("mgda", "adam", "shared_bottom"),  # shared values from a layer: their own backward
    ],
)
def test_the_compiled_step_gives_the_parameters_of_the_separate_one(strategy, optimizer, sharing):
    steps = batches(6)
    make_weighting, make_optimizer = STRATEGIES[strategy], OPTIMIZERS[optimizer]
    net, weighting, engine, reference = build(make_weighting, make_optimizer, sharing)
    engine.use_compiler()  # model.compile=loss: today's separate path, compiled loss
    for batch in steps:
        expected_losses = separate_step(engine, reference, batch)

    net2, weighting2, engine2, optimizer2 = build(make_weighting, make_optimizer, sharing)
    separate_step(engine2, optimizer2, steps[0])  # builds Adam's state, as in a run
    step = CompiledStep(engine2, optimizer2)
    torch._dynamo.utils.counters.clear()
    for batch in steps[1:]:
        losses = step.step(batch)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # one graph, no breaks
    assert not torch._dynamo.utils.counters["graph_break"]

    torch.testing.assert_close(losses[LOSS], expected_losses[LOSS].detach())
    # nothing outside the graph is differentiable: no autograd graph is kept from step to step
    assert not losses[LOSS].requires_grad
    assert not any(buffer.requires_grad for buffer in weighting2.buffers())
    for (name, p), q in zip(net.named_parameters(), net2.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)
    for p, q in zip(weighting.parameters(), weighting2.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)
    groups = (
        [p for g in reference.param_groups for p in g["params"]],
        [q for g in optimizer2.param_groups for q in g["params"]],
    )
    for p, q in zip(*groups, strict=True):
        state, state2 = reference.state[p], optimizer2.state[q]
        assert float(state2["step"]) == float(state["step"]) == len(steps)
        torch.testing.assert_close(state2["exp_avg"], state["exp_avg"], rtol=1e-4, atol=1e-6)
    if engine2.diagnostics is not None:  # the Gram matrix reached the diagnostics
        assert engine2.diagnostics.epoch_means().keys() == engine.diagnostics.epoch_means().keys()


def ranking_tasks(loss: str) -> tuple:
    """The reference's two tasks, the interaction task with ``loss``."""
    return Interaction(factorization_loss=loss), Rating()


def with_log_q(steps: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The batches with log Q of their items and negatives, Q a fixed non-uniform
    distribution over the items (as ``data.negative_alpha`` > 0 gives them)."""
    generator = torch.Generator().manual_seed(5)
    log_q = torch.log_softmax(torch.randn(ITEMS, generator=generator), 0)
    return [
        batch | {"log_q_items": log_q[batch["items"]], "log_q_negatives": log_q[batch["negatives"]]}
        for batch in steps
    ]


@pytest.mark.parametrize("loss", ["softmax", "sampled_softmax"])
def test_the_ranking_losses_on_dense_tables_are_compiled_whole(loss):
    steps = with_log_q(batches(6))
    make_weighting, make_optimizer = STRATEGIES["fixed"], OPTIMIZERS["adam"]
    net, _, engine, reference = build(make_weighting, make_optimizer, tasks=ranking_tasks(loss))
    engine.use_compiler()
    for batch in steps:
        expected = separate_step(engine, reference, batch)
    net2, _, engine2, optimizer2 = build(make_weighting, make_optimizer, tasks=ranking_tasks(loss))
    assert unsupported(optimizer2, engine2) is None
    separate_step(engine2, optimizer2, steps[0])
    step = CompiledStep(engine2, optimizer2)
    torch._dynamo.utils.counters.clear()
    for batch in steps[1:]:
        losses = step.step(batch)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]
    torch.testing.assert_close(losses[LOSS], expected[LOSS].detach())
    for (name, p), q in zip(net.named_parameters(), net2.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)


def test_a_state_that_starts_again_with_the_width_keeps_one_graph_per_width():
    """ExcessMTL starts again when the rows' width changes (an epoch's last, smaller batch,
    here the fourth): compiled whole, one graph per width, the separate path's parameters."""
    steps = batches(7)
    steps[3] = {name: value[: BATCH // 2] for name, value in steps[3].items()}
    net, weighting, engine, reference = build(ExcessMTL, OPTIMIZERS["adam"])
    engine.use_compiler()
    for batch in steps:
        separate_step(engine, reference, batch)
    net2, weighting2, engine2, optimizer2 = build(ExcessMTL, OPTIMIZERS["adam"])
    assert unsupported(optimizer2, engine2) is None
    separate_step(engine2, optimizer2, steps[0])
    step = CompiledStep(engine2, optimizer2)
    torch._dynamo.utils.counters.clear()
    for batch in steps[1:]:
        step.step(batch)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # full and half width
    assert not torch._dynamo.utils.counters["graph_break"]
    for (name, p), q in zip(net.named_parameters(), net2.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)
    for name, buffer in weighting.named_buffers():
        torch.testing.assert_close(dict(weighting2.named_buffers())[name], buffer, msg=name)


def test_what_the_compiled_step_cannot_serve_is_named():
    _, _, engine, _ = build(STRATEGIES["fixed"], OPTIMIZERS["adam"])
    parameters = list(engine.net.parameters())
    assert unsupported(torch.optim.Adam(parameters), engine) is None
    assert unsupported(two_groups(parameters), engine) is None  # each group its own update
    rows = RowSparseAdam([{"params": parameters[:1]}, {"params": parameters[1:]}], lr=0.01)
    assert unsupported(rows, engine) == "sparse rows with several parameter groups"
    assert unsupported(torch.optim.SGD(parameters, lr=0.1), engine) == "SGD is not Adam or AdamW"
    assert unsupported(torch.optim.Adam(parameters, amsgrad=True), engine) == "amsgrad=True"
    # GradNorm's weights get their gradient after the backward pass, from the task gradients
    _, _, gradnorm, optimizer = build(GradNorm, OPTIMIZERS["adam"])
    assert unsupported(optimizer, gradnorm) == (
        "GradNorm sets its weights' gradients after the backward pass"
    )


def fit(folder, tmp_path, epochs=2, resume=None, data=None, **module_args):
    L.seed_everything(0)
    dm = MovieLensDataModule(path=str(folder), batch_size=16, test_fraction=0.2, **(data or {}))
    dm.setup()
    net = multitask_net(dm.data_info(), embedding_dim=8, layer_sizes=(24, 16))
    module = RecommenderModule(net, **module_args)
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(tmp_path / "checkpoints", save_last=True)],
    )
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    return module, trainer


HALVED = partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)  # read every step


def test_a_run_compiled_whole_trains_as_the_separate_path(ratings_folder, tmp_path):
    torch._dynamo.utils.counters.clear()
    whole, trainer = fit(ratings_folder, tmp_path / "whole", compile="step", scheduler=HALVED)
    assert whole.compiled_step is not None  # every step after the first ran compiled
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    torch.compiler.reset()
    separate, _ = fit(ratings_folder, tmp_path / "separate", compile="loss", scheduler=HALVED)
    assert separate.compiled_step is None
    for p, q in zip(separate.parameters(), whole.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-5)
    optimizer = trainer.optimizers[0]  # a real Adam's state: what checkpoints save
    assert {float(s["step"]) for s in optimizer.state.values()} == {trainer.global_step}


def test_a_compiled_run_resumes_to_the_parameters_of_an_uninterrupted_one(ratings_folder, tmp_path):
    straight, _ = fit(ratings_folder, tmp_path / "straight", epochs=2, compile="step")
    fit(ratings_folder, tmp_path / "resumed", epochs=1, compile="step")
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    resumed, trainer = fit(ratings_folder, tmp_path / "resumed", 2, resume=last, compile="step")
    assert resumed.compiled_step is not None
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)


def test_an_optimizer_the_compiled_step_cannot_serve_falls_back_with_one_line(
    ratings_folder, tmp_path, caplog
):
    with caplog.at_level(logging.INFO, logger="mtrec.training.module"):
        module, _ = fit(
            ratings_folder,
            tmp_path,
            epochs=1,
            compile="step",
            optimizer=partial(torch.optim.SGD, lr=0.01),
        )
    assert module.compiled_step is None
    (line,) = [r.getMessage() for r in caplog.records if "model.compile=step" in r.getMessage()]
    assert "SGD is not Adam or AdamW; the step runs as with model.compile=loss" in line


def test_a_bad_compile_setting_is_named():
    net = multitask_net(DataInfo(USERS, ITEMS), embedding_dim=4, layer_sizes=(12, 8))
    with pytest.raises(ConfigError, match="model.compile=fast is not valid: use step"):
        RecommenderModule(net, compile="fast")


def sparse_build(make_weighting, sharing, tasks=None, **settings):
    """A net whose tables give sparse gradients, with the optimizer sparse rows use."""
    torch.manual_seed(0)
    net = multitask_net(
        DataInfo(USERS, ITEMS), embedding_dim=4, layer_sizes=(12, 8), sharing=sharing, **settings
    )
    for table in net.modules():
        if isinstance(table, torch.nn.Embedding):
            table.sparse = True
    weighting = make_weighting()
    engine = StepEngine(net, Objective(tasks), weighting, read_once=True)
    optimizer = RowSparseAdam([*net.parameters(), *weighting.parameters()], lr=0.01, compile=False)
    return net, engine, optimizer


def sparse_batches(count: int, collide: bool) -> list[dict[str, torch.Tensor]]:
    """Batches whose negatives never repeat their pair's item, or (``collide``) whose first
    pair draws its own item as the negative. That item's bias then gets a gradient of
    exactly zero, yet it was read, so lazy Adam still decays its moments and moves it by
    them. (Compiled, the two logits may differ in the last bit, and Adam's first step on a
    gradient of about 1e-9 is as large as on any other: no float tolerance covers it.)"""
    steps = batches(count, seed=3)
    generator = torch.Generator().manual_seed(4)
    for batch in steps:
        shift = torch.randint(1, ITEMS, batch["items"].shape, generator=generator)
        batch["negatives"] = ((batch["items"] + shift) % ITEMS).unsqueeze(1)
        if collide:
            batch["negatives"][0, 0] = batch["items"][0]
    return steps


def sparse_steps(strategy, sharing, settings, steps, tasks=None):
    """The parameters and optimizer after ``steps`` on the separate path, and the same
    compiled (after the first step, as in a run), with the parameters it started from."""
    net, engine, reference = sparse_build(STRATEGIES[strategy], sharing, tasks, **settings)
    for batch in steps:
        separate_step(engine, reference, batch)
    net2, engine2, optimizer2 = sparse_build(STRATEGIES[strategy], sharing, tasks, **settings)
    start = {name: p.detach().clone() for name, p in net2.named_parameters()}
    assert unsupported(optimizer2, engine2) is None
    separate_step(engine2, optimizer2, steps[0])
    step = CompiledStep(engine2, optimizer2)
    assert step.rows  # the tables are updated row by row inside the graph
    torch._dynamo.utils.counters.clear()
    for batch in steps[1:]:
        step.step(batch)
    return (net, reference), (net2, optimizer2), start


def assert_same_steps(separate, compiled, steps, tolerance):
    (net, reference), (net2, optimizer2) = separate, compiled
    for (name, p), q in zip(net.named_parameters(), net2.parameters(), strict=True):
        torch.testing.assert_close(q, p, **tolerance, msg=name)
    for p, q in zip(net.parameters(), net2.parameters(), strict=True):
        state, state2 = reference.state[p], optimizer2.state[q]
        assert float(state2["step"]) == float(state["step"]) == len(steps)
        torch.testing.assert_close(state2["exp_avg"], state["exp_avg"], **tolerance)
        torch.testing.assert_close(state2["exp_avg_sq"], state["exp_avg_sq"], rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize(
    ("strategy", "sharing", "settings"),
    [
        ("fixed", "shared", {}),  # the shared rows read once
        ("fixed", "separate", {"rating_biases": True}),  # tables not read at the negatives
        ("fixed", "cross_stitch", {}),  # every head reads every task's tables
        ("fixed", "mmoe", {}),  # one wide table per side, mixed per id
        ("pcgrad", "shared", {}),  # each task's copy of the shared rows
        ("mgda", "shared_bottom", {}),  # shared values from a layer over the rows
    ],
)
def test_the_compiled_step_updates_sparse_rows_as_the_separate_path(strategy, sharing, settings):
    steps = sparse_batches(6, collide=False)
    separate, (net2, optimizer2), start = sparse_steps(strategy, sharing, settings, steps)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]
    assert all(t.sparse for t in net2.modules() if isinstance(t, torch.nn.Embedding))
    assert_same_steps(separate, (net2, optimizer2), steps, {"rtol": 1e-4, "atol": 1e-6})
    read = {
        "user": {int(u) for b in steps for u in b["users"]},
        "item": {int(i) for b in steps for i in [*b["items"], *b["negatives"].flatten()]},
    }
    for name, p in net2.named_parameters():  # rows no batch read: bit-identical
        if p.shape[0] in (USERS, ITEMS) and ("embeddings" in name or "biases" in name):
            unread = sorted(set(range(p.shape[0])) - read["user" if "user" in name else "item"])
            assert torch.equal(p[unread], start[name][unread]), name


def ranking_batches(count: int, negatives: int = 3) -> list[dict[str, torch.Tensor]]:
    """Batches of several negatives per pair, none its pair's item, with log Q by row."""
    steps = batches(count, seed=3)
    generator = torch.Generator().manual_seed(4)
    for batch in steps:
        shift = torch.randint(1, ITEMS, (BATCH, negatives), generator=generator)
        batch["negatives"] = (batch["items"].unsqueeze(1) + shift) % ITEMS
    return with_log_q(steps)


@pytest.mark.parametrize(
    ("loss", "sharing", "strategy"),
    [
        ("sampled_softmax", "shared", "fixed"),
        ("sampled_softmax", "separate", "fixed"),
        ("sampled_softmax", "shared", "pcgrad"),
        ("softmax", "shared", "fixed"),  # the rating head's biases: read at the items only
        ("softmax", "separate", "fixed"),  # the rating head's own tables, too
        ("softmax", "shared", "pcgrad"),  # each task's copy of the shared rows
    ],
)
def test_the_ranking_losses_update_sparse_rows_inside_the_compiled_step(loss, sharing, strategy):
    """The sampled softmax (log Q by row) reads the batch's rows; the full softmax reads
    the item tables whole: both compiled whole, the separate path's parameters and moments,
    and a row no task read stays bit-identical."""
    steps = ranking_batches(6)
    tasks = ranking_tasks(loss)
    settings = {"rating_biases": True}
    separate, (net2, optimizer2), start = sparse_steps(strategy, sharing, settings, steps, tasks)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]
    assert_same_steps(separate, (net2, optimizer2), steps, {"rtol": 1e-4, "atol": 1e-6})
    users = {int(u) for b in steps for u in b["users"]}
    items = {int(i) for b in steps for i in b["items"]}
    negatives = {int(i) for b in steps for i in b["negatives"].flatten()}
    every = set(range(ITEMS)) if loss == "softmax" else negatives
    for name, p in net2.named_parameters():
        if p.shape[0] not in (USERS, ITEMS) or not name.startswith(("mixer.", "heads.")):
            continue
        # the rating head reads its own item tables at the batch's items only
        read = users if "user" in name else items if "rating" in name else items | every
        unread = sorted(set(range(p.shape[0])) - read)
        assert torch.equal(p[unread], start[name][unread]), name
        if loss == "softmax" and read == items | every:  # every item read, every row moved
            assert (p != start[name]).any(1).all(), name


@pytest.mark.parametrize("sharing", ["shared", "separate"])
def test_a_row_read_with_a_zero_gradient_moves_as_lazy_adam_moves_it(sharing, monkeypatch):
    """The step's arithmetic run eagerly, in the same float order as the separate path, with
    an item that is its own pair's negative: its bias's gradient is exactly zero."""
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "1")
    steps = sparse_batches(6, collide=True)
    separate, compiled, _ = sparse_steps("fixed", sharing, {"rating_biases": True}, steps)
    assert_same_steps(separate, compiled, steps, {"rtol": 1e-6, "atol": 1e-7})


def test_what_sparse_rows_cannot_compile_is_named():
    data = DataInfo(USERS, ITEMS)
    tables = MatrixFactorization(data)
    for table in tables.modules():
        if isinstance(table, torch.nn.Embedding):
            table.sparse = True
    engine = StepEngine(tables, Objective([Rating()]), FixedWeighting({"rating": 1.0}))
    optimizer = RowSparseAdam(tables.parameters())
    assert unsupported(optimizer, engine) == (
        "MatrixFactorization does not say which ids index its tables"
    )
    for task, why in [
        (Rating(negative_rating_ratio=1), "the rating loss reads ids"),
        (Interaction(factorization_loss="sampled_softmax"), None),  # log Q by row
        (Interaction(factorization_loss="softmax"), None),  # the item tables whole
    ]:
        net, _, optimizer = sparse_build(STRATEGIES["fixed"], "shared")
        engine = StepEngine(net, Objective([task]), FixedWeighting({task.name: 1.0}))
        found = unsupported(optimizer, engine)
        assert found is None if why is None else found.startswith(why)


@pytest.mark.parametrize("loss", ["bounded_bpr", "sampled_softmax"])
def test_a_sparse_rows_run_compiled_whole_trains_as_the_separate_path(
    ratings_folder, tmp_path, caplog, loss
):
    settings = {"sparse_rows": True}
    if loss != "bounded_bpr":  # popularity negatives: every batch carries log Q by row
        settings["data"] = {"negative_alpha": 0.75, "num_negatives": 4}
    with caplog.at_level(logging.INFO, logger="mtrec.training.module"):
        whole, trainer = fit(
            ratings_folder,
            tmp_path / "whole",
            compile="step",
            objective=Objective(ranking_tasks(loss)),
            **settings,
        )
    assert whole.compiled_step is not None and whole.compiled_step.rows
    assert not [r for r in caplog.records if "model.compile=step" in r.getMessage()]
    separate, _ = fit(
        ratings_folder,
        tmp_path / "separate",
        compile="loss",
        objective=Objective(ranking_tasks(loss)),
        **settings,
    )
    assert separate.compiled_step is None
    for p, q in zip(separate.parameters(), whole.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-5)
    optimizer = trainer.optimizers[0]  # the tables' step counts: plain numbers, as saved
    assert {int(s["step"]) for s in optimizer.state.values()} == {trainer.global_step}
