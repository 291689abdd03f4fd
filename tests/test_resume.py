"""Nothing lost: killed runs and sweeps resume, checkpoints survive a crash mid-save,
divergence stops with a message, and the same seed gives the same metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtrec import files
from mtrec.train import train

EPOCHS = 10
RUN = [  # small and eager, with enough steps per epoch to be killed part-way
    f"trainer.max_epochs={EPOCHS}",
    "data.batch_size=8",
    "data.batches_per_chunk=1",
    "model.compile=false",
    "model.net.embedding_dim=8",
    "model.net.layer_sizes=[24,16]",
    "callbacks.progress_bar.refresh_rate=0",
]


def mtrec_train(cwd: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mtrec.train", *overrides],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]


def kill_after_first_checkpoint(process: subprocess.Popen, pattern: str, cwd: Path) -> None:
    """SIGKILL the process once a ``last.ckpt`` matching ``pattern`` exists (epoch 1 saved)."""
    deadline = time.time() + 120
    while not list(cwd.glob(pattern)):
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.02)
    time.sleep(0.1)  # into a later epoch
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def scalar_steps(run: Path, tag: str) -> list[int]:
    events = EventAccumulator(str(run))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["fixed", "dwa", "gradnorm"])  # none, histories, learned
def test_a_killed_run_resumes_to_the_metrics_of_an_uninterrupted_one(
    ratings_folder, tmp_path, weighting
):
    data = f"data.path={ratings_folder} weighting={weighting}".split()
    killed = mtrec_train(tmp_path, *RUN, *data, "name=killed")
    whole = mtrec_train(tmp_path, *RUN, *data, "name=whole")  # beside it: one core each
    kill_after_first_checkpoint(killed, "outputs/runs/killed/*/*/checkpoints/last.ckpt", tmp_path)
    (run,) = (tmp_path / "outputs/runs/killed").glob("*/*")
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert 1 <= len(history) < EPOCHS  # it was stopped part-way

    finished(mtrec_train(tmp_path, *RUN, *data, "name=killed", "ckpt_path=last"))
    finished(whole)
    assert list((tmp_path / "outputs/runs/killed").glob("*/*")) == [run]  # the same folder
    (reference,) = (tmp_path / "outputs/runs/whole").glob("*/*")
    resumed = json.loads((run / "metrics.json").read_text())
    expected = json.loads((reference / "metrics.json").read_text())
    assert resumed["final"] == expected["final"]  # exactly: CPU training is deterministic
    assert [e["epoch"] for e in resumed["history"]] == list(range(1, EPOCHS + 1))
    # one TensorBoard run, every epoch logged once
    steps = scalar_steps(run, "test/mrr")
    assert steps == scalar_steps(reference, "test/mrr") and len(set(steps)) == EPOCHS


def test_ckpt_path_last_without_an_earlier_run_says_so(run_cli, ratings_folder):
    status, text = run_cli(f"data.path={ratings_folder}", "ckpt_path=last")
    assert status != 0
    assert "ckpt_path=last: no earlier run in" in text and "outputs/runs/train/default" in text
    assert not list(Path.cwd().glob("outputs/runs/*/*/*/checkpoints"))  # nothing was trained


@pytest.mark.slow
def test_a_rerun_sweep_runs_only_the_jobs_that_did_not_finish(ratings_folder, tmp_path):
    sweep = tmp_path / "sweep"
    command = [
        "-m",
        *RUN,
        f"data.path={ratings_folder}",
        "seed=1,2",
        f"hydra.sweep.dir={sweep}",
    ]
    first = mtrec_train(tmp_path, *command)
    kill_after_first_checkpoint(first, "sweep/seed=2/checkpoints/last.ckpt", tmp_path)
    done = sweep / "seed=1" / "job.json"
    record = done.read_text()
    assert json.loads(record)["status"] == "completed"
    assert not (sweep / "seed=2" / "job.json").exists()

    finished(mtrec_train(tmp_path, *command))
    assert done.read_text() == record  # not run again
    summary = (sweep / "summary.csv").read_text()
    assert summary.count(",completed,") == 2, summary
    history = json.loads((sweep / "seed=2" / "metrics.json").read_text())["history"]
    assert [e["epoch"] for e in history] == list(range(1, EPOCHS + 1))


def test_a_diverging_run_stops_with_the_step_and_the_likely_cause(run_cli, ratings_folder):
    status, text = run_cli(
        f"data.path={ratings_folder}", "optimizer.lr=1e30", "trainer.max_epochs=2", *RUN[1:]
    )
    assert status == 2
    assert "The training loss became" in text and "at epoch 0" in text
    assert "optimizer step" in text and "optimizer.lr=1e+30" in text
    assert "No epoch had finished, so there is no checkpoint." in text
    assert not list(Path.cwd().glob("outputs/runs/*/*/*/checkpoints/*.ckpt"))


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = files.AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, path)

    def crash(*args):
        raise KeyboardInterrupt  # killed between writing the new file and renaming it

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "weights": torch.zeros(3)}, path)
    assert torch.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file left


@pytest.mark.slow
def test_the_same_config_and_seed_give_identical_metrics(ratings_folder, tmp_path):
    def run(out: Path) -> dict[str, float]:
        with initialize_config_module("mtrec.conf", version_base="1.3"):
            cfg = compose(
                "train",
                overrides=[
                    *RUN,
                    "trainer.max_epochs=3",
                    f"data.path={ratings_folder}",
                    f"paths.output_dir={out}",
                    f"paths.data_dir={out}",
                    f"paths.root_dir={out}",
                ],
            )
        return train(cfg)

    first, second = run(tmp_path / "a"), run(tmp_path / "b")
    assert first == second and len(first) == 6  # the six test metrics
