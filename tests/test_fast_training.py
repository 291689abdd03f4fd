"""The fast training loop: chunks of mini-batches, plain steps and compiled losses.

Each speed lever must leave what is computed unchanged: these tests compare it with the
slower path it replaces.
"""

from __future__ import annotations

import logging
from functools import partial

import lightning as L
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from conftest import multitask_net
from mtrec import compile as compile_module
from mtrec.data.datamodule import Chunks, MovieLensDataModule
from mtrec.training.module import RecommenderModule


class StepHookCounter(L.Callback):
    def __init__(self):
        self.calls = 0

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.calls += 1


def fit(folder, log_dir, batches_per_chunk=1, epochs=2, callbacks=(), **module_args):
    L.seed_everything(0)
    dm = MovieLensDataModule(
        path=str(folder), batch_size=16, batches_per_chunk=batches_per_chunk, test_fraction=0.2
    )
    dm.setup()
    net = multitask_net(dm.data_info(), embedding_dim=8, layer_sizes=(24, 16))
    module = RecommenderModule(net, **module_args)
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=CSVLogger(log_dir, name="", version=""),
        log_every_n_steps=1,
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(module, datamodule=dm)
    batches = len(dm.train_dataloader().batches)
    return module, trainer, batches


def test_chunks_group_consecutive_batches_and_keep_the_remainder():
    chunks = Chunks(list(range(10)), 4)
    assert list(chunks) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(chunks) == 3


def test_chunk_size_changes_nothing_computed(ratings_folder, tmp_path):
    one, one_trainer, batches = fit(ratings_folder, tmp_path / "one", batches_per_chunk=1)
    many, many_trainer, _ = fit(ratings_folder, tmp_path / "many", batches_per_chunk=4)
    assert batches % 4 != 0  # a partial last chunk is part of the comparison
    for (name, a), (_, b) in zip(one.state_dict().items(), many.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # steps, not chunks, are counted: checkpoints, max_steps and the logged step axis agree
    assert one_trainer.global_step == many_trainer.global_step == 2 * batches
    logged = [pd.read_csv(tmp_path / run / "metrics.csv") for run in ("one", "many")]
    assert logged[0]["step"].tolist() == logged[1]["step"].tolist()
    # the epoch means differ only in summation order
    one_loss, many_loss = (log["train/loss"].dropna().tolist() for log in logged)
    assert many_loss == pytest.approx(one_loss, rel=1e-6)


def test_plain_steps_compute_what_lightnings_wrapped_steps_compute(ratings_folder, tmp_path):
    plain_hooks, wrapped_hooks = StepHookCounter(), StepHookCounter()
    plain, _, batches = fit(ratings_folder, tmp_path / "a", 4, callbacks=[plain_hooks])
    wrapped, trainer, _ = fit(
        ratings_folder, tmp_path / "b", 4, callbacks=[wrapped_hooks], step_hooks=True
    )
    assert plain.plain_steps and not wrapped.plain_steps
    pairs = zip(plain.state_dict().items(), wrapped.state_dict().items(), strict=True)
    for (name, a), (_, b) in pairs:
        assert torch.equal(a, b), name
    assert (plain_hooks.calls, wrapped_hooks.calls) == (0, 2 * batches)
    assert trainer.global_step == 2 * batches


def test_the_scheduler_steps_once_per_epoch(ratings_folder, tmp_path):
    scheduler = partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    module, trainer, _ = fit(ratings_folder, tmp_path, 4, epochs=3, scheduler=scheduler)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5**3)


def test_compiled_losses_and_gradients_equal_eager_ones(ratings_folder, monkeypatch):
    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)  # set for all tests in conftest
    torch.compiler.reset()
    dm = MovieLensDataModule(path=str(ratings_folder), batch_size=16, batches_per_chunk=2)
    dm.setup()
    torch.manual_seed(0)
    net = multitask_net(dm.data_info(), embedding_dim=8, layer_sizes=(24, 16))
    module = RecommenderModule(net, compile="loss")
    batch = next(iter(dm.train_dataloader()))[0]

    def losses_and_gradients(compute):
        module.zero_grad()
        terms, _ = compute(batch)
        terms["loss"].backward()
        return terms, [p.grad.clone() for p in module.parameters()]

    torch._dynamo.utils.counters.clear()
    compiled_terms, compiled_grads = losses_and_gradients(module.engine.losses)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    eager_terms, eager_grads = losses_and_gradients(module.engine.weighted_losses)
    assert compiled_terms.keys() == eager_terms.keys()
    for name in eager_terms:
        torch.testing.assert_close(compiled_terms[name], eager_terms[name])
    for compiled, eager in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(compiled, eager)


def test_a_failing_compiler_falls_back_to_eager_with_a_warning(monkeypatch, caplog):
    def broken_compiler(function):
        def compiled(*args):
            raise RuntimeError("no C compiler found")

        return compiled

    monkeypatch.setattr(compile_module.torch, "compile", broken_compiler)
    calls = []
    function = compile_module.compile_or_eager(lambda x: calls.append(x) or 2 * x)
    with caplog.at_level(logging.WARNING):
        assert function(3) == 6 and function(4) == 8
    assert calls == [3, 4]
    assert "torch.compile failed (RuntimeError: no C compiler found)" in caplog.text
    assert "model.compile=false" in caplog.text


def test_freed_memory_is_kept_where_glibc_allows_and_skipped_elsewhere(monkeypatch):
    import ctypes
    import platform

    from mtrec import memory

    if platform.libc_ver()[0] == "glibc":
        assert memory.keep_freed_memory()  # both mallopt calls accepted their values

    def no_libc(*args, **kwargs):
        raise OSError("no libc here")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert memory.keep_freed_memory() is False
