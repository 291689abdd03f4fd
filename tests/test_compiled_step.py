"""The whole training step compiled (``model.compile=step``) against the step's parts apart
(``model.compile=loss``): the same parameters and optimizer state after a few steps, within
float tolerance, for loss-level and gradient-level strategies, Adam and AdamW."""

from __future__ import annotations

import logging
from functools import partial

import lightning as L
import pytest
import torch

from mtrec.data.datamodule import MovieLensDataModule
from mtrec.data.info import DataInfo
from mtrec.errors import ConfigError
from mtrec.models import MultiTaskNet
from mtrec.mtl.objective import Objective
from mtrec.mtl.step import LOSS, StepEngine
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


def build(make_weighting, make_optimizer, sharing="shared"):
    torch.manual_seed(0)
    net = MultiTaskNet(
        DataInfo(USERS, ITEMS), embedding_dim=4, layer_sizes=(12, 8), sharing=sharing
    )
    weighting = make_weighting()
    engine = StepEngine(net, Objective(), weighting)
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
OPTIMIZERS = {
    "adam": partial(torch.optim.Adam, lr=0.01, fused=True),
    "adamw": partial(torch.optim.AdamW, lr=0.01, weight_decay=0.1),
    "adam_l2": partial(torch.optim.Adam, lr=0.01, weight_decay=0.01),
}


@pytest.mark.parametrize(
    ("strategy", "optimizer", "sharing"),
    [
        ("fixed", "adam", "shared"),
        ("fixed", "adamw", "separate"),
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
    groups = reference.param_groups[0]["params"], optimizer2.param_groups[0]["params"]
    for p, q in zip(*groups, strict=True):
        state, state2 = reference.state[p], optimizer2.state[q]
        assert float(state2["step"]) == float(state["step"]) == len(steps)
        torch.testing.assert_close(state2["exp_avg"], state["exp_avg"], rtol=1e-4, atol=1e-6)
    if engine2.diagnostics is not None:  # the Gram matrix reached the diagnostics
        assert engine2.diagnostics.epoch_means().keys() == engine.diagnostics.epoch_means().keys()


def test_what_the_compiled_step_cannot_serve_is_named():
    _, _, engine, _ = build(STRATEGIES["fixed"], OPTIMIZERS["adam"])
    parameters = list(engine.net.parameters())
    assert unsupported(torch.optim.Adam(parameters), engine) is None
    assert unsupported(torch.optim.SGD(parameters, lr=0.1), engine) == "SGD is not Adam or AdamW"
    assert unsupported(torch.optim.Adam(parameters, amsgrad=True), engine) == "amsgrad=True"
    # GradNorm's weights get their gradient after the backward pass, from the task gradients
    _, _, gradnorm, optimizer = build(GradNorm, OPTIMIZERS["adam"])
    assert unsupported(optimizer, gradnorm) == (
        "GradNorm sets its weights' gradients after the backward pass"
    )
    # a state re-sized with the rows' width (each epoch's last batch): retraced at each change
    _, _, excess, optimizer = build(ExcessMTL, OPTIMIZERS["adam"])
    assert unsupported(optimizer, excess) == (
        "ExcessMTL's state, re-sized with the rows' width, would retrace the step"
    )


def fit(folder, tmp_path, epochs=2, resume=None, **module_args):
    L.seed_everything(0)
    dm = MovieLensDataModule(path=str(folder), batch_size=16, test_fraction=0.2)
    dm.setup()
    net = MultiTaskNet(dm.data_info(), embedding_dim=8, layer_sizes=(24, 16))
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
    net = MultiTaskNet(DataInfo(USERS, ITEMS), embedding_dim=4, layer_sizes=(12, 8))
    with pytest.raises(ConfigError, match="model.compile=fast is not valid: use step"):
        RecommenderModule(net, compile="fast")
