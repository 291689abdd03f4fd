"""What the terminal shows: jobs of a sweep side by side get one named line per message and no
bars; Ctrl-C ends a run or a sweep with one line on how to continue, and records each job it
stopped as ``interrupted``."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from mtrec.lightning_internals import StepProgressBar, epoch_line
from mtrec.mtl.tasks import Interaction, Rating
from mtrec.runs.sweep import (
    ConsoleFormatter,
    QuietLightning,
    command_again,
    job_interrupted,
    parallel_jobs,
)

RUN = [  # a few short eager epochs on the tests' synthetic ratings
    "trainer.max_epochs=4",
    "model.compile=false",
    "model.net.embedding_dim=8",
    "model.net.layer_sizes=[24,16]",
    "data.batch_size=64",
]
JOB_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\]\[seed=[123]\] ")


@pytest.fixture
def hydra_job():
    """``set(n_jobs)``: Hydra's config of a job ``seed=1`` of a sweep run by joblib."""
    previous = HydraConfig.instance().cfg

    def set_job(n_jobs: int | None, folder: str = "/sweeps/s/seed=1") -> None:
        cfg = OmegaConf.create({"hydra": OmegaConf.structured(HydraConf)})
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.launcher = {"n_jobs": n_jobs}
        cfg.hydra.runtime.output_dir = folder
        cfg.hydra.job.name = "train"
        cfg.hydra.sweep.dir = str(Path(folder).parent)
        HydraConfig.instance().set_config(cfg)

    yield set_job
    HydraConfig.instance().cfg = previous


def record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_jobs_side_by_side_get_one_line_per_message_naming_the_job(hydra_job):
    hydra_job(2)
    formatter = ConsoleFormatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    config = formatter.format(record("mtrec.train", logging.INFO, "Config:\nseed: 0\nname: x\n"))
    assert re.fullmatch(
        r"\[\d\d:\d\d:\d\d\]\[seed=1\] Config: \(and 2 more lines in its train.log\)", config
    )
    warning = formatter.format(record("mtrec.x", logging.WARNING, "careful"))
    assert warning.endswith("[seed=1] [WARNING] careful") and "\n" not in warning

    hydra_job(1)  # one at a time: Hydra's lines, as a single run has them
    plain = ConsoleFormatter("[%(name)s][%(levelname)s] - %(message)s")
    assert plain.format(record("mtrec.train", logging.INFO, "a\nb")) == "[mtrec.train][INFO] - a\nb"


@pytest.mark.parametrize(
    ("n_jobs", "side_by_side"),
    [(2, True), (-1, (os.cpu_count() or 1) > 1), (1, False), (None, False)],
)
def test_only_a_launcher_running_several_jobs_at_once_counts_as_side_by_side(
    hydra_job, n_jobs, side_by_side
):
    hydra_job(n_jobs)
    assert parallel_jobs() is side_by_side


def test_lightning_notes_leave_the_console_only_when_jobs_run_side_by_side(hydra_job):
    note = record("lightning.pytorch.utilities.rank_zero", logging.INFO, "GPU available: False")
    warning = record("lightning.pytorch.utilities.rank_zero", logging.WARNING, "deprecated")
    hydra_job(2)
    assert not QuietLightning().filter(note) and QuietLightning().filter(warning)
    assert QuietLightning().filter(record("mtrec.train", logging.INFO, "Final metrics: {}"))
    hydra_job(1)
    assert QuietLightning().filter(note)


class FakeTrainer:
    is_global_zero = True
    lightning_module = SimpleNamespace(tasks=(Interaction(), Rating()))  # their main metrics
    callback_metrics = {
        "test/mrr": 0.06051,
        "test/hr@10": 0.11,
        "test/mse": 0.91684,
        "train/loss": 0.3,
    }


def test_side_by_side_jobs_draw_no_bar_and_log_epochs_with_the_main_metrics(hydra_job):
    hydra_job(2)
    bar = StepProgressBar()
    bar.setup(FakeTrainer(), None, "fit")
    assert bar.lines and not bar.is_enabled
    line = epoch_line(25, 200, 0.41, 0.40, FakeTrainer())
    assert line == "epoch 25/200 (0.40 s; about 1 min 12 s left): test/mrr=0.0605 test/mse=0.9168"
    assert epoch_line(3, -1, 0.4, 0.4, FakeTrainer()).startswith("epoch 3 (0.40 s): ")

    hydra_job(1)  # one job at a time keeps its bar
    bar = StepProgressBar()
    bar.setup(FakeTrainer(), None, "fit")
    assert bar.is_enabled and not bar.lines


def test_the_command_to_continue_replaces_the_key_it_sets(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/x/.venv/bin/mtrec-train", "seed=1", "ckpt_path=a b"])
    assert command_again(ckpt_path="last") == "mtrec-train seed=1 ckpt_path=last"
    assert command_again() == "mtrec-train seed=1 'ckpt_path=a b'"


class CtrlC(L.Callback):
    """Presses Ctrl-C (SIGINT to this process) once, after the second epoch."""

    pressed = False

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.current_epoch == 1 and not CtrlC.pressed:
            CtrlC.pressed = True
            os.kill(os.getpid(), signal.SIGINT)


class HoldAtSecondEpoch(L.Callback):
    """Waits before the second epoch while the file ``hold`` exists, until Ctrl-C: jobs side by
    side stay mid-run until the test presses it, however slowly each one starts."""

    def __init__(self, hold: str) -> None:
        self.hold = Path(hold)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        while trainer.current_epoch == 1 and self.hold.exists() and not job_interrupted():
            time.sleep(0.05)


def interrupted_line(text: str, start: str) -> str:
    """The one line that says ``start`` (after the logging format's prefix), from there on."""
    (line,) = [line for line in text.splitlines() if start in line]
    assert line.startswith("[")  # a line of its own, not after a progress bar
    return line[line.index(start) :]


def test_ctrl_c_stops_a_run_with_one_line_and_the_command_that_continues_it(
    run_cli, ratings_folder, tmp_path
):
    CtrlC.pressed = False
    previous = signal.getsignal(signal.SIGINT)
    command = [*RUN, f"data.path={ratings_folder}", f"+callbacks.ctrl_c._target_={__name__}.CtrlC"]
    status, text = run_cli(*command)
    assert status == 130, text
    assert signal.getsignal(signal.SIGINT) is previous  # put back as it was
    assert "Detected KeyboardInterrupt" not in text and "Traceback" not in text
    line = interrupted_line(text, "Interrupted outputs/runs/train/")
    assert " after 2 of 4 epochs. To continue it from its last checkpoint: mtrec-train " in line
    (run,) = (tmp_path / "outputs/runs/train").glob("*/*")
    job = json.loads((run / "job.json").read_text())
    assert job["status"] == "interrupted" and "after 2 of 4 epochs" in job["error"]

    again = shlex.split(line.split("To continue it from its last checkpoint: ")[1])
    assert again[0] == "mtrec-train" and again[-1] == "ckpt_path=last"
    status, text = run_cli(*again[1:])
    assert status == 0, text
    assert json.loads((run / "job.json").read_text())["status"] == "completed"
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [entry["epoch"] for entry in history][:4] == [1, 2, 3, 4]  # continued, not redone


def test_ctrl_c_stops_a_sweep_and_the_jobs_not_begun_do_no_work(run_cli, ratings_folder, tmp_path):
    """One job at a time, in this process: the job running stops, the next does not start."""
    CtrlC.pressed = False
    sweep = tmp_path / "sweep"
    command = [
        "-m",
        *RUN,
        f"data.path={ratings_folder}",
        f"+callbacks.ctrl_c._target_={__name__}.CtrlC",
        "seed=1,2",
        f"hydra.sweep.dir={sweep}",
    ]
    status, text = run_cli(*command)
    assert status == 130, text
    line = interrupted_line(text, "Interrupted the sweep ")
    assert "sweep: 1 job stopped (seed=1), 1 not started, 0 completed" in line
    assert line.endswith(" hydra.sweep.dir=sweep")  # relative to where the command ran
    first, second = (json.loads((sweep / s / "job.json").read_text()) for s in ("seed=1", "seed=2"))
    assert first["status"] == second["status"] == "interrupted"
    assert "after 2 of 4 epochs" in first["error"] and second["error"].startswith("not started")
    assert not (sweep / "seed=2" / "metrics.json").exists()  # it did no work
    assert not (sweep / ".interrupted").exists()
    assert "interrupted" in (sweep / "summary.csv").read_text()

    status, text = run_cli(*command)  # the same command: continues seed=1, runs seed=2
    assert status == 0, text
    for seed in ("seed=1", "seed=2"):
        assert json.loads((sweep / seed / "job.json").read_text())["status"] == "completed"


# --- the real command, jobs side by side ----------------------------------------------------


def sweep_command(ratings_folder: Path, sweep: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mtrec.train",
        "-m",
        f"data.path={ratings_folder}",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
        "model.compile=false",
        "model.net.embedding_dim=8",
        "model.net.layer_sizes=[24,16]",
        *extra,
    ]


@pytest.mark.slow
def test_jobs_side_by_side_print_only_named_lines(ratings_folder, tmp_path):
    sweep = tmp_path / "sweep"
    command = sweep_command(ratings_folder, sweep, "seed=1,2", "trainer.max_epochs=3")
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "it/s" not in output and "\r" not in output  # no bars
    lines = [line for line in output.splitlines() if line.strip()]
    strays = [line for line in lines if not (JOB_LINE.match(line) or "][HYDRA]" in line)]
    assert strays == []  # every line a job prints names it
    for seed in ("seed=1", "seed=2"):
        named = [line for line in lines if f"][{seed}] " in line]
        assert any(f"][{seed}] Final metrics: {{'test/mrr': " in line for line in named)
        assert any(f"][{seed}] epoch 1/3 (" in line for line in named)
        assert any(f"][{seed}] epoch 3/3 (" in line for line in named)
    train_log = (sweep / "seed=1" / "train.log").read_text()
    assert "Config:\n" in train_log and "GPU available" in train_log  # the rest is kept there


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_stops_jobs_side_by_side_with_one_line(ratings_folder, tmp_path):
    """SIGINT to the whole process group, as a terminal sends Ctrl-C; then the same command."""
    sweep = tmp_path / "sweep"
    epochs = 4
    hold = tmp_path / "hold"
    hold.touch()
    extra = ["seed=1,2,3", f"trainer.max_epochs={epochs}"]
    callback = [
        f"+callbacks.hold._target_={__name__}.HoldAtSecondEpoch",
        f"+callbacks.hold.hold={hold}",
    ]
    command = sweep_command(ratings_folder, sweep, *extra, "data.batches_per_chunk=1", *callback)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}  # where the callback lives
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 180
    while len(list(sweep.glob("seed=*/checkpoints/last.ckpt"))) < 2:
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    hold.unlink()
    assert process.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "leaked semaphore" not in output, output[-3000:]
    (line,) = [line for line in output.splitlines() if "Interrupted the sweep" in line]
    assert "2 jobs stopped (seed=1, seed=2), 1 not started" in line
    assert line.endswith(" hydra.sweep.dir=sweep")
    statuses = {s: json.loads((sweep / s / "job.json").read_text()) for s in ("seed=1", "seed=2")}
    assert all(job["status"] == "interrupted" for job in statuses.values())

    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for seed in ("seed=1", "seed=2", "seed=3"):
        assert json.loads((sweep / seed / "job.json").read_text())["status"] == "completed"
        history = json.loads((sweep / seed / "metrics.json").read_text())["history"]
        assert [entry["epoch"] for entry in history][:epochs] == list(range(1, epochs + 1))
