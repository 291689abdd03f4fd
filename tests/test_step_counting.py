"""With chunks of steps per ``training_step``, everything that counts steps counts optimizer
steps: the progress bar, per-step logging, step-interval checkpoints, ``max_steps`` and the
step named when training diverges."""

from __future__ import annotations

import re

import lightning as L
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks.progress import tqdm_progress
from lightning.pytorch.loggers import CSVLogger

from conftest import multitask_net
from mtrec.data.datamodule import MovieLensDataModule
from mtrec.errors import TrainingDiverged
from mtrec.lightning_internals import (
    TESTED_LIGHTNING,
    LightningMismatch,
    StepBoundaries,
    StepProgressBar,
)
from mtrec.training.module import RecommenderModule


class BarRecorder(L.Callback):
    """The training bar's total and position at the end of every epoch."""

    def __init__(self, bar: StepProgressBar):
        self.bar, self.seen = bar, []

    def on_train_epoch_end(self, trainer, module):
        self.seen.append((self.bar.train_progress_bar.total, self.bar.train_progress_bar.n))


def fit(folder, tmp_path, chunk=4, epochs=2, callbacks=(), optimizer=None, **trainer_args):
    L.seed_everything(0)
    dm = MovieLensDataModule(
        path=str(folder), batch_size=16, batches_per_chunk=chunk, test_fraction=0.2
    )
    dm.setup()
    net = multitask_net(dm.data_info(), embedding_dim=8, layer_sizes=(24, 16))
    step_hooks = trainer_args.pop("step_hooks", False)
    module = RecommenderModule(net, optimizer=optimizer, step_hooks=step_hooks)
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=CSVLogger(tmp_path, name="", version=""),
        callbacks=list(callbacks),
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        **{"enable_progress_bar": False, **trainer_args},
    )
    trainer.fit(module, datamodule=dm)
    return module, trainer, len(dm.train_dataloader().batches)


def test_chunks_end_where_step_counted_events_fall():
    plan = StepBoundaries(start=0, periods=(5,), last=None).chunk_sizes(12, size=4)
    assert plan == [4, 1, 4, 1, 2]  # ends at steps 4, 5, 9, 10, 12
    plan = StepBoundaries(start=12, periods=(5,), last=14).chunk_sizes(12, size=4)
    assert plan == [2, 1, 4, 1, 4]  # steps 12 -> 14 (max_steps) -> 15 -> 19 -> 20 -> 24
    assert StepBoundaries(0, (), None).chunk_sizes(10, 64) == [10]


def test_the_progress_bar_counts_optimizer_steps(ratings_folder, tmp_path):
    bar = StepProgressBar()
    recorder = BarRecorder(bar)
    _, trainer, batches = fit(
        ratings_folder, tmp_path, chunk=4, callbacks=[bar, recorder], enable_progress_bar=True
    )
    assert batches > 4 and batches % 4  # several chunks, the last one partial
    assert recorder.seen == [(batches, batches)] * 2


def test_per_step_losses_are_logged_every_n_optimizer_steps(ratings_folder, tmp_path):
    _, trainer, batches = fit(ratings_folder, tmp_path, chunk=4, log_every_n_steps=3)
    logged = pd.read_csv(tmp_path / "metrics.csv")
    steps = logged.dropna(subset=["train_step/loss"])["step"].tolist()
    # Lightning's convention: the i-th step (from 0) is logged when (i + 1) % n == 0
    assert steps == [i for i in range(2 * batches) if (i + 1) % 3 == 0]
    assert {"train_step/interaction_loss", "train_step/rating_loss"} <= set(logged.columns)


def test_step_interval_checkpoints_fall_on_their_steps(ratings_folder, tmp_path):
    every = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=5, save_top_k=-1
    )
    _, trainer, batches = fit(ratings_folder, tmp_path, chunk=4, callbacks=[every])
    saved = sorted(
        int(re.search(r"step=(\d+)", p.name)[1])
        for p in every.dirpath and (tmp_path / "ckpt").glob("step=*.ckpt")
    )
    assert saved == list(range(5, 2 * batches + 1, 5))
    state = torch.load(tmp_path / "ckpt" / "step=5.ckpt", weights_only=True)
    assert state["global_step"] == 5


def test_max_steps_stops_at_that_optimizer_step(ratings_folder, tmp_path):
    chunked, trainer, _ = fit(ratings_folder, tmp_path / "a", chunk=4, epochs=5, max_steps=7)
    single, single_trainer, _ = fit(ratings_folder, tmp_path / "b", chunk=1, epochs=5, max_steps=7)
    assert trainer.global_step == single_trainer.global_step == 7
    for (name, a), (_, b) in zip(
        chunked.state_dict().items(), single.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("step_hooks", [False, True])
def test_divergence_names_the_optimizer_step_on_both_paths(ratings_folder, tmp_path, step_hooks):
    from functools import partial

    huge = partial(torch.optim.SGD, lr=1e30)
    with pytest.raises(TrainingDiverged) as error:
        fit(ratings_folder, tmp_path, chunk=4, optimizer=huge, step_hooks=step_hooks)
    step = int(re.search(r"optimizer step (\d+)", str(error.value))[1])
    batch = int(re.search(r"batch (\d+) of the epoch", str(error.value))[1])
    assert step == batch  # epoch 0: the step and the batch of the epoch agree
    assert 1 < step <= 8  # a step inside the chunks, not the chunk's count


def test_a_moved_lightning_internal_names_the_installed_version(
    ratings_folder, tmp_path, monkeypatch
):
    monkeypatch.delattr(tqdm_progress, "_update_n")
    with pytest.raises(LightningMismatch) as error:
        fit(ratings_folder, tmp_path, epochs=1)
    message = str(error.value)
    assert f"lightning {L.__version__} is installed" in message
    assert "_update_n" in message and f"pip install 'lightning{TESTED_LIGHTNING}'" in message
