"""What TensorBoard shows of the reference sweep: run names that differ early, swept columns.

The sweep is the real ``experiment=cs330`` (on small synthetic data, one epoch), written to the
default layout ``outputs/sweeps/cs330/<date_time>_<token>/``; TensorBoard's own reading code
names the runs and builds the HParams experiment, as ``make tensorboard`` would show them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.context import RequestContext
from tensorboard.plugins.base_plugin import TBContext
from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment

from conftest import run_main
from mtrec.runs.naming import short_keys

ROOT = Path(__file__).parents[1]
VISIBLE = 45  # characters of a run name the run list shows in full
SHOWN_COLUMNS = 5  # hyperparameter columns the HParams dashboard ticks at first
SWEPT = ["model.embedding_sharing", "model.factorization_weight"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder where ``mtrec-train experiment=cs330`` ran, as a user would run it there."""
    from conftest import synthetic_ratings, write_u_data

    work = tmp_path_factory.mktemp("work")
    data = write_u_data(work / "ml-synthetic", synthetic_ratings())
    argv = [
        "experiment=cs330",
        f"data.path={data}",
        "trainer.max_epochs=1",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    assert run_main(argv, cwd=work) == 0
    return work


def make_tensorboard_logdir(workdir: Path, *args: str) -> Path:
    """The ``--logdir`` that ``make tensorboard`` passes in ``workdir``."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    command = ["make", "-n", "-s", "--no-print-directory", "-f", str(ROOT / "Makefile")]
    command += ["-C", str(workdir), "tensorboard", "STAMP=", *args]
    printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"tensorboard --logdir (\S+)", printed)
    assert match, printed
    return workdir / match.group(1)


def tensorboard_runs(logdir: Path) -> tuple[EventMultiplexer, list[str]]:
    """The run names TensorBoard gives the event files under ``logdir``."""
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    return multiplexer, sorted(multiplexer.Runs())


def test_make_tensorboard_opens_the_newest_sweep_and_dir_overrides_it(workdir):
    (sweep,) = (workdir / "outputs" / "sweeps" / "cs330").iterdir()
    assert make_tensorboard_logdir(workdir) == sweep
    assert make_tensorboard_logdir(workdir, "DIR=outputs") == workdir / "outputs"


def test_run_names_of_the_sweep_differ_within_what_the_run_list_shows(workdir):
    _, runs = tensorboard_runs(make_tensorboard_logdir(workdir))
    assert runs == sorted(f"sharing={s},weight={w}" for s in (True, False) for w in (0.99, 0.5))
    assert len({run[:VISIBLE] for run in runs}) == 4


def test_swept_keys_are_among_the_hparams_columns_shown_at_first(workdir):
    logdir = make_tensorboard_logdir(workdir)
    multiplexer, runs = tensorboard_runs(logdir)
    assert len(runs) == 4
    provider = MultiplexerDataProvider(multiplexer, str(logdir))
    context = backend_context.Context(
        TBContext(logdir=str(logdir), data_provider=provider, multiplexer=multiplexer)
    )
    request = api_pb2.GetExperimentRequest(hparams_limit=1000)  # what the dashboard asks for
    experiment = get_experiment.Handler(RequestContext(), context, "", request).run()
    names = [info.name for info in experiment.hparam_infos]
    assert len(names) > SHOWN_COLUMNS and "data.batch_size" in names
    # The dashboard keeps the server's order, moves the differing ones first (a stable sort),
    # and ticks the first five.
    infos = sorted(experiment.hparam_infos, key=lambda info: not info.differs)
    shown = [info.name for info in infos[:SHOWN_COLUMNS]]
    assert shown[: len(SWEPT)] == SWEPT
    assert "model.factorization_weight" not in sorted(names)[:SHOWN_COLUMNS]  # unflagged, hidden


def test_short_keys_are_the_shortest_ends_no_other_key_shares():
    assert short_keys(SWEPT) == {
        "model.embedding_sharing": "sharing",
        "model.factorization_weight": "weight",
    }
    assert short_keys(["model.factorization_weight", "model.regression_weight", "seed"]) == {
        "model.factorization_weight": "factorization_weight",
        "model.regression_weight": "regression_weight",
        "seed": "seed",
    }
    assert short_keys(["seed", "data.split_seed", "optimizer.lr"]) == {
        "seed": "seed",
        "data.split_seed": "split_seed",
        "optimizer.lr": "lr",
    }
    assert short_keys(["model", "data.model"]) == {"model": "model", "data.model": "data.model"}
