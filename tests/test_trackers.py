"""Every tracker receives what TensorBoard receives (the HParams key set, per-epoch metrics
including mtl/, the final test metrics, the run's name as its sweep names it), read back with
each tracker's own reader: MLflow's client, W&B's run-file inspector, the CSV file."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import SHORT_RUN

mlflow = pytest.importorskip("mlflow")  # installed by make install (the trackers extra)
pytest.importorskip("wandb")

WANDB = Path(sys.executable).with_name("wandb")


def train(cwd: Path, *overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    """``mtrec-train`` as a user runs it, from ``cwd``."""
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "mtrec.train", *(["-m"] if multirun else []), *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def wandb_summary(run_folder: Path) -> dict:
    """W&B's own reading of an offline run's records (``wandb leet inspect --summary``)."""
    (offline,) = (run_folder / "wandb").glob("offline-run-*")
    shown = subprocess.run(
        [str(WANDB), "leet", "inspect", "--summary", "--json", str(offline)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(shown.stdout)


def mlflow_runs(store: Path) -> dict[str, list]:
    """Each experiment's runs in a local MLflow store, by experiment name."""
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    return {
        e.name: client.search_runs([e.experiment_id])
        for e in client.search_experiments()
        if e.name != "Default"
    }


def test_every_tracker_gets_the_hparams_metrics_and_name(tmp_path, ratings_folder):
    done = train(
        tmp_path,
        "model.factorization_weight=0.9",  # first: the run's name begins with it
        f"data.path={ratings_folder}",
        *SHORT_RUN,
        "model.compile=false",
        "logger=[tensorboard,mlflow,wandb,csv]",
        "name=tracked",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (folder,) = (tmp_path / "outputs/runs/tracked").glob("*/*")
    final = json.loads((folder / "metrics.json").read_text())["final"]
    tensorboard_keys = set(yaml.safe_load((folder / "hparams.yaml").read_text()))
    assert {"model.name", "seed", "optimizer.lr", "model.factorization_weight"} <= tensorboard_keys

    runs = mlflow_runs(tmp_path / "outputs/mlflow.db")
    assert list(runs) == ["tracked"]  # the experiment is the run's name
    (run,) = runs["tracked"]
    assert run.info.run_name == folder.parent.name  # the run's name, as its folder's
    assert run.info.run_name.startswith("model.factorization_weight=0.9,")
    assert run.info.status == "FINISHED"
    assert set(run.data.params) == tensorboard_keys
    assert run.data.params["model.factorization_weight"] == "0.9"
    assert run.data.metrics["test/mrr"] == pytest.approx(final["test/mrr"], rel=1e-5)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'outputs/mlflow.db'}")
    ranks = [m for m in run.data.metrics if m.startswith("mtl/effective_rank/")]
    assert ranks and len(client.get_metric_history(run.info.run_id, ranks[0])) == 2  # per epoch
    artifacts = Path(client.get_experiment(run.info.experiment_id).artifact_location[7:])
    assert artifacts == tmp_path / "outputs/mlflow-artifacts/tracked"  # beside the store

    summary = wandb_summary(folder)
    assert summary["name"] == folder.parent.name and summary["project"] == "mtrec"
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    assert set(summary["config"]) == tensorboard_keys
    assert summary["summary"]["test/mrr"] == pytest.approx(final["test/mrr"], rel=1e-5)
    assert ranks[0] in summary["summary"]

    with open(folder / "csv/metrics.csv") as rows:
        table = list(csv.DictReader(rows))
    tested = [r for r in table if r.get("test/mrr")]
    assert float(tested[-1]["test/mrr"]) == pytest.approx(final["test/mrr"], rel=1e-5)
    assert len([r for r in table if r.get(ranks[0])]) == 2
    assert set(yaml.safe_load((folder / "csv/hparams.yaml").read_text())) == tensorboard_keys


def test_a_sweep_is_one_mlflow_experiment_and_one_wandb_group(tmp_path, ratings_folder):
    done = train(
        tmp_path,
        f"data.path={ratings_folder}",
        *SHORT_RUN,
        "model.compile=false",
        "logger=[mlflow,wandb]",
        "model.factorization_weight=0.5,0.99",
        "name=pair",
        multirun=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs/sweeps/pair").iterdir()
    runs = mlflow_runs(tmp_path / "outputs/mlflow.db")
    assert list(runs) == ["pair"]
    assert sorted(r.info.run_name for r in runs["pair"]) == ["weight=0.5", "weight=0.99"]
    assert {r.data.tags["sweep"] for r in runs["pair"]} == {f"pair/{sweep.name}"}
    groups = set()
    for job in ("weight=0.5", "weight=0.99"):
        records = subprocess.run(
            [str(WANDB), "leet", "inspect", "--json", str(next((sweep / job).glob("wandb/off*")))],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        run = next(json.loads(line)["run"] for line in records.splitlines() if '"run"' in line)
        assert run["display_name"] == job
        groups.add(run["run_group"])
    assert groups == {f"pair/{sweep.name}"}


def test_a_failed_run_ends_failed_in_every_tracker(tmp_path, ratings_folder):
    done = train(
        tmp_path,
        f"data.path={ratings_folder}",
        *SHORT_RUN,
        "model.compile=false",
        "logger=[mlflow,wandb]",
        "optimizer.lr=1e30",  # the loss diverges in the first epoch
        "name=diverged",
    )
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    (folder,) = (tmp_path / "outputs/runs/diverged").glob("*/*")
    (run,) = mlflow_runs(tmp_path / "outputs/mlflow.db")["diverged"]
    assert run.info.status == "FAILED"
    summary = wandb_summary(folder)
    assert summary["exit_code"] == 1 and summary["state"] != "finished"


def test_a_tracker_not_installed_gets_the_install_command(run_cli, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name)
    )
    status, output = run_cli("logger=[tensorboard,wandb]", "data.path=/nonexistent")
    assert status == 2
    assert "logger=wandb needs the wandb package" in output and "[trackers]" in output
    assert output.count("needs the wandb package") == 1  # before the data (a missing path)
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob("*.ckpt"))


def test_an_mlflow_store_of_another_version_is_refused_untouched(tmp_path, ratings_folder):
    store = tmp_path / "outputs/mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{store}").search_experiments()  # a store of this version
    with sqlite3.connect(store) as db:
        db.execute("UPDATE alembic_version SET version_num = '0584bdc529eb'")  # an older one
    before = store.read_bytes()
    done = train(tmp_path, f"data.path={ratings_folder}", *SHORT_RUN, "logger=mlflow", "name=stale")
    assert done.returncode == 2
    assert f"mlflow db upgrade sqlite:///{store}" in done.stdout + done.stderr
    assert store.read_bytes() == before
    assert not list(tmp_path.glob("outputs/runs/stale/*/*/checkpoints"))  # no work began
