"""Shared fixtures: small synthetic MovieLens-shaped data written by the tests themselves."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# Runs in tests execute eagerly (compiling costs seconds per run, also in subprocesses);
# tests/test_fast_training.py turns the compiler back on to check the compiled path.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np
import pandas as pd
import pytest

# Imported here, not first inside a test: Lightning binds its console handler to the
# sys.stderr of its first import, which would be a test's capture, closed after that test.
import mtrec.train  # noqa: F401, E402

SHORT_RUN = [  # two short eager epochs on the tests' synthetic ratings
    "trainer.max_epochs=2",
    "model.compile=false",
    "model.net.embedding_dim=8",
    "model.net.layer_sizes=[24,16]",
    "data.batch_size=64",
    "callbacks.progress_bar.refresh_rate=0",
]


def synthetic_ratings(num_users: int = 60, num_items: int = 40, per_user: int = 15, seed: int = 0):
    """Ratings with structure a model can learn: two user groups prefer two item groups."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, num_users + 1):
        group = user % 2
        liked = [i for i in range(1, num_items + 1) if i % 2 == group]
        items = rng.choice(liked, size=per_user, replace=False)
        for item in items:
            rating = int(np.clip(rng.normal(4.0 if item % 4 < 2 else 2.5, 0.5), 1, 5))
            rows.append((user, int(item), rating, 880_000_000 + len(rows)))
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


def write_u_data(folder: Path, ratings: pd.DataFrame) -> Path:
    """Write ``ratings`` as an ML-100K ``u.data`` file (and a matching ``u.item``)."""
    folder.mkdir(parents=True, exist_ok=True)
    ratings.to_csv(folder / "u.data", sep="\t", header=False, index=False)
    lines = []
    for i in sorted(ratings.item.unique()):
        flags = ["1" if g in (i % 19, (7 * i) % 19) else "0" for g in range(19)]  # 1-2 genres
        lines.append(f"{i}|Movie {i} (1990)|01-Jan-1990||http://x|{'|'.join(flags)}")
    (folder / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return folder


def run_main(argv: list[str], cwd: Path | None = None) -> int:
    """Run ``mtrec-train`` in this process with ``argv`` (from ``cwd``); its exit status."""
    from mtrec.train import main

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(sys, "argv", ["mtrec-train", *argv])
    if cwd is not None:
        monkeypatch.chdir(cwd)
    try:
        main()
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else 1
    finally:
        monkeypatch.undo()
    return 0


@pytest.fixture
def ratings_folder(tmp_path: Path) -> Path:
    return write_u_data(tmp_path / "ml-synthetic", synthetic_ratings())


@pytest.fixture
def run_cli(monkeypatch, capsys, caplog, tmp_path):
    """Run ``mtrec-train <overrides>`` in this process, from ``tmp_path``, as a user would.

    Returns the exit status (0 when it returned) and the error records it logged plus what it
    printed (Hydra's own errors are printed). tests/test_bad_data.py runs the real command
    once in a subprocess to check what the console shows.
    """
    import logging

    from mtrec.train import main

    def run(*overrides: str) -> tuple[int, str]:
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
        monkeypatch.setattr(sys, "argv", ["mtrec-train", *overrides])
        monkeypatch.chdir(tmp_path)
        caplog.clear()
        status = 0
        with caplog.at_level(logging.WARNING):
            try:
                main()
            except SystemExit as exit:
                status = exit.code if isinstance(exit.code, int) else 1
        out, err = capsys.readouterr()
        return status, "\n".join(r.getMessage() for r in caplog.records) + out + err

    return run


@pytest.fixture
def short_run(run_cli, ratings_folder, tmp_path):
    """Train two eager epochs on the tests' ratings with these overrides, as ``mtrec-train``
    does; returns the run's folder and its ``metrics.json``."""

    def run(*overrides: str) -> tuple[Path, dict]:
        status, output = run_cli(
            f"data.path={ratings_folder}", *overrides, "trainer.max_epochs=2", "model.compile=false"
        )
        assert status == 0, output
        (folder,) = (tmp_path / "outputs/runs/train").glob("*/*")
        return folder, json.loads((folder / "metrics.json").read_text())

    return run


def tasks_named(*names: str):
    """The built-in tasks of these names, with default settings."""
    from mtrec.mtl.tasks import Interaction, Like, Rating

    built_in = {task.name: task for task in (Interaction, Rating, Like)}
    return tuple(built_in[name]() for name in names)


def multitask_net(*args, tasks=("interaction", "rating"), **settings):
    """A MultiTaskNet for built-in tasks given by name (default: the reference's two)."""
    from mtrec.models import MultiTaskNet

    return MultiTaskNet(*args, tasks=tasks_named(*tasks), **settings)
