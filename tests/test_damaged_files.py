"""Damaged files that mtrec reads: one message naming the file and the fix, or recovery with a
warning; never a traceback, and never a file removed or replaced without a word. Files mtrec
writes take the user's umask."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import SHORT_RUN as RUN
from mtrec import files
from mtrec.data import synthetic
from mtrec.runs import folder as run_folder
from mtrec.runs.rerun import CONTINUE, plan_rerun


def cut_short(path: Path) -> bytes:
    """Truncate ``path`` to half its size, as a full disk or an unfinished copy leaves it."""
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return path.read_bytes()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "train.log"
    }


@pytest.fixture
def finished_run(run_cli, ratings_folder, tmp_path) -> tuple[Path, list[str]]:
    """A completed two-epoch run in ``tmp_path/run`` and the overrides that made it."""
    command = [*RUN, f"data.path={ratings_folder}", f"hydra.run.dir={tmp_path / 'run'}"]
    status, text = run_cli(*command)
    assert status == 0, text
    return tmp_path / "run", command


def test_a_damaged_checkpoint_stops_a_run_that_continues_before_any_work(run_cli, finished_run):
    run, command = finished_run
    damaged = cut_short(run / "checkpoints" / "last.ckpt")
    before = snapshot(run)
    status, text = run_cli(*command, "trainer.max_epochs=3")  # longer: continues from it
    assert status == 2
    assert f"The checkpoint {run / 'checkpoints' / 'last.ckpt'} is damaged (" in text
    assert "Fix: put an intact copy in its place, or train afresh in a new folder" in text
    assert "Traceback" not in text
    assert snapshot(run) == before  # the file, the record and the saved config as they were
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == damaged


def test_a_damaged_checkpoint_given_as_ckpt_path_is_named(run_cli, finished_run, tmp_path):
    run, command = finished_run
    copy = tmp_path / "elsewhere" / "epoch.ckpt"
    copy.parent.mkdir()
    copy.write_bytes(b"")  # empty: a copy that never started
    status, text = run_cli(*command[:-1], f"ckpt_path={copy}")
    assert status == 2 and f"The checkpoint {copy} is damaged (it is empty)" in text
    assert copy.exists() and "Traceback" not in text


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"status": "comple', "not valid JSON"),
        ('["completed"]', "a JSON list, not an object"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_an_unreadable_job_record_counts_as_unfinished_with_one_warning(
    finished_run, caplog, content, reason
):
    run, _ = finished_run
    job = run / "job.json"
    job.write_bytes(content if isinstance(content, bytes) else content.encode())
    run_folder._warned.clear()
    with caplog.at_level(logging.WARNING):
        assert run_folder.read_job(run) == {}
        assert run_folder.read_job(run) == {}  # warned once
    (warning,) = [r.getMessage() for r in caplog.records if "job.json" in r.getMessage()]
    assert warning.startswith(f"{job} cannot be read ({reason}") and "unfinished" in warning
    assert "move it aside" in warning
    assert job.exists()  # left as it is
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert plan_rerun(run, saved).action == CONTINUE  # finished again from its checkpoint


def test_a_run_with_an_unreadable_job_record_finishes_again(run_cli, finished_run):
    run, command = finished_run
    (run / "job.json").write_text("{")
    final = json.loads((run / "metrics.json").read_text())["final"]
    status, text = run_cli(*command)
    assert status == 0, text
    assert json.loads((run / "job.json").read_text())["status"] == "completed"
    assert json.loads((run / "metrics.json").read_text())["final"] == final


def test_a_damaged_synthetic_cache_is_generated_again_with_a_warning(tmp_path, caplog):
    first = synthetic.cached("ml-latest-small", 4, tmp_path)
    (path,) = (tmp_path / "synthetic").iterdir()
    cut_short(path)
    with caplog.at_level(logging.WARNING):
        again = synthetic.cached("ml-latest-small", 4, tmp_path)
    assert again.ratings.equals(first.ratings)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"The synthetic data cache {path} is damaged (")
    assert "generating the data again and writing it anew in its place" in warning
    assert torch.load(path, weights_only=True)["users"].numel() == len(first.ratings)  # whole


def test_a_cache_of_the_wrong_length_counts_as_damaged(tmp_path, caplog):
    path = tmp_path / "synthetic" / f"ml-latest-small-seed4-v{synthetic.GENERATOR_VERSION}.pt"
    path.parent.mkdir()
    column = torch.zeros(10, dtype=torch.int32)
    torch.save({"users": column, "items": column, "ratings": column.to(torch.int8)}, path)
    with caplog.at_level(logging.WARNING):
        data = synthetic.cached("ml-latest-small", 4, tmp_path)
    assert len(data.ratings) == synthetic.SHAPES["ml-latest-small"][2]
    assert "[10, 10, 10] rows, not 100836" in caplog.text


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_take_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        files.atomic_write_text(tmp_path / "job.json", "{}")
        run_folder.write_metrics(tmp_path / "metrics.json", {})
        files.AtomicCheckpointIO().save_checkpoint({"epoch": 1}, tmp_path / "last.ckpt")
        plain = tmp_path / "plain.txt"
        plain.write_text("")  # any other file
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(
        ["job.json", "metrics.json", "last.ckpt", "plain.txt"], 0o666 & ~umask
    )


def test_the_sources_of_the_data_do_not_import_the_loader():
    """``Variant`` lives in its own module: fetching and reading import it, not each other."""
    code = "import sys, mtrec.data.sources; print('mtrec.data.movielens' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
