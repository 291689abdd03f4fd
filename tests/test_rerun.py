"""Running again where a run already is: the same config skips, a longer run continues, any
other config is refused before any work; single runs touch their own folder only."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import SHORT_RUN as RUN
from conftest import run_main
from mtrec.runs import folder as run_folder
from mtrec.runs import report
from mtrec.runs.rerun import CONTINUE, NEW, REFUSE, SKIP, ConfigChanged, check_rerun, plan_rerun


def mtrec_train(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``mtrec-train <overrides>`` in a subprocess, from ``cwd``."""
    script = Path(sys.executable).with_name("mtrec-train")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mtrec.train"]
    return subprocess.run(
        [*command, *overrides], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def succeeded(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout + done.stderr


def contents(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder but the log (each launch appends to it), by path."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "train.log"
    }


def epochs(run: Path) -> list[int]:
    return [entry["epoch"] for entry in json.loads((run / "metrics.json").read_text())["history"]]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """A completed two-epoch run (its folder) and the ratings it was trained on."""
    from conftest import synthetic_ratings, write_u_data

    root = tmp_path_factory.mktemp("rerun")
    data = write_u_data(root / "data", synthetic_ratings())
    succeeded(mtrec_train(root, *RUN, f"data.path={data}", f"hydra.run.dir={root / 'run'}"))
    return root / "run", data


@pytest.fixture
def rerun(finished_run, tmp_path):
    """``run(*overrides)``: the finished run's command again, with ``overrides``, into a copy
    of its folder; returns the process and the folder."""
    original, data = finished_run
    folder = tmp_path / "run"
    shutil.copytree(original, folder)

    def run(*overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
        command = [*RUN, f"data.path={data}", f"hydra.run.dir={folder}", *overrides]
        return mtrec_train(tmp_path, *command), folder

    return run


@pytest.mark.slow
def test_the_same_config_again_is_skipped_and_changes_nothing(rerun, tmp_path):
    before = contents(tmp_path / "run")
    done, folder = rerun("threads=1", "callbacks.progress_bar.refresh_rate=5")  # housekeeping
    text = succeeded(done)
    assert "completed before with this config: skipped" in text
    assert "Traceback" not in text and "KeyError" not in text
    assert contents(folder) == before
    assert not (tmp_path / "outputs").exists()  # a single run writes no sweep summary


@pytest.mark.slow
def test_a_longer_run_continues_from_the_checkpoint(rerun, tmp_path, finished_run):
    earlier = json.loads((tmp_path / "run" / "job.json").read_text())
    done, folder = rerun("trainer.max_epochs=4")
    text = succeeded(done)
    assert "Continuing" in text and "trainer.max_epochs=2 there, 4 now" in text
    assert epochs(folder) == [1, 2, 3, 4]
    job = json.loads((folder / "job.json").read_text())
    assert job["status"] == "completed" and "trainer.max_epochs=4" in job["overrides"]
    assert job["wall_seconds"] > earlier["wall_seconds"]  # the earlier launch's time included
    saved = OmegaConf.load(folder / ".hydra" / "saved" / "config.yaml")
    assert saved.trainer.max_epochs == 4  # the folder's run is now the longer one
    assert not (tmp_path / "outputs").exists()

    # the same as training four epochs at once (CPU training is deterministic)
    _, data = finished_run
    whole = tmp_path / "whole"
    command = [*RUN, "trainer.max_epochs=4", f"data.path={data}", f"hydra.run.dir={whole}"]
    succeeded(mtrec_train(tmp_path, *command))
    assert json.loads((folder / "metrics.json").read_text()) == json.loads(
        (whole / "metrics.json").read_text()
    )


@pytest.mark.slow
def test_another_config_is_refused_and_the_folder_left_as_it_was(rerun, tmp_path):
    before = contents(tmp_path / "run")
    done, folder = rerun("optimizer.lr=0.01", "trainer.max_epochs=4")
    assert done.returncode == 2, (done.stdout + done.stderr)[-3000:]
    text = done.stdout + done.stderr
    assert "Traceback" not in text
    (message,) = [line for line in text.splitlines() if "holds a completed run" in line]
    assert "optimizer.lr=0.001 there, 0.01 now" in message
    assert "trainer.max_epochs=2 there, 4 now" in message
    assert "hydra.run.dir=<new folder>" in message and "(optimizer.lr=0.001" in message
    assert contents(folder) == before  # nothing trained, Hydra's config files put back
    assert "Continuing" not in text and not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_rerun_sweep_continues_longer_jobs_and_refuses_changed_ones(ratings_folder, tmp_path):
    sweep = tmp_path / "sweep"

    def run_sweep(*overrides: str) -> int:
        argv = [
            "-m",
            *RUN,
            "trainer.max_epochs=1",
            "seed=1,2",
            f"data.path={ratings_folder}",
            f"hydra.sweep.dir={sweep}",
            "~logger",
            *overrides,
        ]
        return run_main(argv, cwd=tmp_path)

    assert run_sweep() == 0
    jobs = [sweep / "seed=1", sweep / "seed=2"]
    assert [epochs(job) for job in jobs] == [[1], [1]]
    assert run_sweep("trainer.max_epochs=2") == 0
    assert [epochs(job) for job in jobs] == [[1, 2], [1, 2]]
    before = {job: contents(job) for job in jobs}
    # Hydra reports the failed jobs after running all of them
    assert run_sweep("trainer.max_epochs=2", "optimizer.lr=0.01") != 0
    assert {job: contents(job) for job in jobs} == before
    table = pd.read_csv(sweep / "summary.csv")
    assert list(table.status) == ["completed", "completed"] and list(table.epochs) == [2, 2]
    assert not (tmp_path / "outputs").exists()


# --- the rules, on folders made by hand ---------------------------------------------------


def make_run(folder: Path, status: str | None = "completed", checkpoint: bool = True, **values):
    """A run folder as a run leaves it, with the run config ``values`` (dotted keys)."""
    cfg = OmegaConf.create({"trainer": {"max_epochs": 2, "max_steps": -1}, "seed": 0})
    cfg.merge_with(OmegaConf.from_dotlist([f"{k}={v}" for k, v in values.items()]))
    for target in (folder / ".hydra", folder / ".hydra" / "saved"):
        target.mkdir(parents=True, exist_ok=True)
        (target / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        (target / "overrides.yaml").write_text("[]\n")
    if status:
        run_folder.write_job(folder, {"status": status, "wall_seconds": 3.0})
        run_folder.write_metrics(folder / "metrics.json", {"final": {"test/mrr": 0.1}})
    if checkpoint:
        (folder / "checkpoints").mkdir()
        torch.save({"epoch": 1, "global_step": 2}, folder / "checkpoints" / "last.ckpt")
    return cfg


def now(cfg, **values):
    changed = cfg.copy()
    for key, value in values.items():
        OmegaConf.update(changed, key, value, force_add=True)
    return changed


def test_housekeeping_keys_do_not_count(tmp_path):
    cfg = make_run(tmp_path, **{"paths.output_dir": "/a", "threads": 1})
    changed = now(cfg, **{"paths.output_dir": "/b", "threads": 2, "ckpt_path": "last"})
    assert plan_rerun(tmp_path, changed).action == SKIP


def test_length_rules(tmp_path):
    cfg = make_run(tmp_path)
    assert plan_rerun(tmp_path, now(cfg, **{"trainer.max_epochs": 3})).action == CONTINUE
    assert plan_rerun(tmp_path, now(cfg, **{"trainer.max_epochs": 1})).action == REFUSE
    assert plan_rerun(tmp_path, now(cfg, **{"trainer.max_steps": 100})).action == REFUSE
    longer = now(cfg, **{"trainer.max_epochs": 3, "optimizer.lr": 0.1})
    refused = plan_rerun(tmp_path, longer)
    assert refused.action == REFUSE and set(refused.changes) == {
        "trainer.max_epochs",
        "optimizer.lr",
    }
    assert "optimizer.lr=(not set) there, 0.1 now" in refused.message
    assert "(~optimizer.lr trainer.max_epochs=2)" in refused.message  # the command to keep it


def test_an_unfinished_run_continues_with_the_same_config(tmp_path):
    cfg = make_run(tmp_path, status=None)
    assert plan_rerun(tmp_path, cfg).action == CONTINUE
    assert plan_rerun(tmp_path, now(cfg, **{"trainer.max_epochs": 5})).action == CONTINUE
    assert plan_rerun(tmp_path, now(cfg, **{"seed": 3})).action == REFUSE


def test_nothing_to_keep_means_a_new_run(tmp_path):
    cfg = make_run(tmp_path, status="failed", checkpoint=False)
    assert plan_rerun(tmp_path, now(cfg, **{"seed": 3})).action == NEW


def test_a_longer_run_without_a_checkpoint_is_refused(tmp_path):
    cfg = make_run(tmp_path, checkpoint=False)
    refused = plan_rerun(tmp_path, now(cfg, **{"trainer.max_epochs": 3}))
    assert refused.action == REFUSE and "it has no checkpoints/last.ckpt" in refused.message


def test_a_refusal_puts_hydras_config_files_back(tmp_path):
    cfg = make_run(tmp_path)
    saved = (tmp_path / ".hydra" / "config.yaml").read_text()
    changed = now(cfg, **{"seed": 3})
    (tmp_path / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(changed))  # as Hydra does
    with pytest.raises(ConfigChanged, match="seed=0 there, 3 now"):
        check_rerun(tmp_path, changed)
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == saved


def test_continuing_a_completed_run_marks_it_unfinished_until_it_completes(tmp_path):
    cfg = make_run(tmp_path)
    rerun = check_rerun(tmp_path, now(cfg, **{"trainer.max_epochs": 3}))
    rerun.begin()
    assert run_folder.read_job(tmp_path)["status"] == "unfinished"
    assert rerun.earlier_seconds == 3.0


def test_a_folder_without_a_saved_config_keeps_the_earlier_behaviour(tmp_path):
    cfg = make_run(tmp_path)
    shutil.rmtree(tmp_path / ".hydra" / "saved")
    assert plan_rerun(tmp_path, now(cfg, **{"seed": 3})).action == SKIP


# --- the summary table -------------------------------------------------------------------


def test_markdown_table_shows_four_digits_and_empty_cells():
    frame = pd.DataFrame(
        {
            "run": ["optimizer.lr=1e-3", "a|b"],
            "status": ["completed", "failed"],
            "test/mrr": [0.123456, math.nan],
            "epochs": [3, 0],
            "error": ["", "ConfigError: one\ntwo"],
        }
    )
    lines = report.markdown_table(frame).splitlines()
    assert len(lines) == 4
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    assert cells[0] == ["run", "status", "test/mrr", "epochs", "error"]
    assert cells[2] == ["optimizer.lr=1e-3", "completed", "0.1235", "3", ""]
    assert cells[3] == ["a\\|b", "failed", "", "0", "ConfigError: one two"]


def test_metrics_are_ordered_task_by_task():
    job = report.Job(Path("x"), {}, "completed")
    names = ["val/mse", "test/combined", "test/rmse", "test/mse", "test/hr@10", "test/mrr"]
    job.metrics = {"final": dict.fromkeys(names, 0.0)}
    assert report.metric_names([job]) == [
        "test/mrr",
        "test/hr@10",
        "test/mse",
        "test/rmse",
        "test/combined",
        "val/mse",
    ]
