"""Short real training runs on synthetic data: the Lightning glue and the Hydra app."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger

import mtrec
from conftest import multitask_net
from mtrec.data.datamodule import MovieLensDataModule
from mtrec.mtl.tasks import Interaction, Rating
from mtrec.mtl.weighting import FixedWeighting
from mtrec.reference_keys import apply_reference_keys
from mtrec.train import main, train
from mtrec.training.callbacks import MetricsHistory
from mtrec.training.module import RecommenderModule

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("sharing", [True, False])
def test_training_lowers_the_loss(ratings_folder, tmp_path, sharing):
    L.seed_everything(0)
    dm = MovieLensDataModule(path=str(ratings_folder), batch_size=64, test_fraction=0.2)
    dm.setup()
    net = multitask_net(dm.data_info(), 8, (24, 16), embedding_sharing=sharing)
    module = RecommenderModule(net, weighting=FixedWeighting({"interaction": 0.5, "rating": 0.5}))
    history = MetricsHistory(tmp_path / "metrics.json")
    trainer = L.Trainer(
        max_epochs=30,
        logger=CSVLogger(tmp_path, name="csv", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[history],
    )
    trainer.fit(module, datamodule=dm)
    logged = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    losses = logged["train/loss"].dropna().tolist()
    assert len(losses) == 30 and losses[-1] < 0.7 * losses[0]
    assert {"train/interaction_loss", "train/rating_loss"} <= set(logged.columns)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert len(record["history"]) == 30 and record["history"][-1]["epoch"] == 30
    assert record["final"]["test/mse"] < record["history"][0]["test/mse"]
    assert record["best"]["test/mse"]["value"] == min(h["test/mse"] for h in record["history"])
    for side in ("user", "item"):  # collapse diagnostics, every epoch: 8 dimensions at most
        ranks = [h[f"mtl/effective_rank/{side}/interaction"] for h in record["history"]]
        assert len(ranks) == 30 and all(1.0 < rank <= 8.0 for rank in ranks)
        assert 1.0 < record["final"][f"mtl/abundance/{side}/rating"] <= 8.0


def test_regression_weight_defaults_to_one_minus_factorization_weight():
    def weights(*overrides):
        with initialize_config_module("mtrec.conf", version_base="1.3"):
            cfg = compose("train", overrides=list(overrides))
        apply_reference_keys(cfg)  # the reference's keys set the fixed weights
        weighting = instantiate(cfg.weighting)
        weighting.bind([Interaction(), Rating()])
        return weighting.weights

    assert weights("model.factorization_weight=0.99") == {"interaction": 0.99, "rating": 0.01}
    assert weights("model.factorization_weight=0.5", "model.regression_weight=2.0") == {
        "interaction": 0.5,
        "rating": 2.0,
    }


def test_embedding_sharing_is_the_reference_name_for_the_nets_setting():
    def sharing(*overrides):
        with initialize_config_module("mtrec.conf", version_base="1.3"):
            cfg = compose("train", overrides=list(overrides))
        apply_reference_keys(cfg)
        return cfg.model.net.embedding_sharing

    assert sharing() is True
    assert sharing("model.embedding_sharing=false") is False
    assert sharing("model.net.embedding_sharing=items") == "items"
    assert sharing("model.embedding_sharing=items", "model.net.embedding_sharing=false") == "items"


def test_each_net_argument_is_written_once_under_model_net():
    """No model config repeats a setting into its net (``net.x: ${..x}``): the net's
    constructor arguments live under ``model.net`` alone."""
    for path in sorted((Path(mtrec.__file__).parent / "conf" / "model").glob("*.yaml")):
        assert "${.." not in path.read_text(), path.name


def test_one_run_writes_config_log_metrics_checkpoint_and_events(
    ratings_folder, tmp_path, monkeypatch
):
    argv = [
        "mtrec-train",
        f"data.path={ratings_folder}",
        "trainer.max_epochs=2",
        "model.embedding_sharing=false",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.chdir(tmp_path)
    main()
    # named by its overrides, housekeeping keys (data.path, callbacks.*) left out
    named = (
        tmp_path
        / "outputs"
        / "runs"
        / "train"
        / "trainer.max_epochs=2,model.embedding_sharing=False"
    )
    (run,) = named.iterdir()
    assert (run / ".hydra" / "config.yaml").exists() and (run / "train.log").exists()
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "job.json").exists()
    record = json.loads((run / "metrics.json").read_text())
    held_out = {f"test/{m}" for m in ("mrr", "mrr_interaction", "hr@10", "ndcg@10", "mse", "rmse")}
    collapse = {
        f"mtl/{measure}/{side}/{task}"
        for measure in ("effective_rank", "abundance")
        for side in ("user", "item")
        for task in ("interaction", "rating")
    }
    assert set(record["final"]) == held_out | collapse
    assert json.loads((run / "tasks.json").read_text()) == {  # in the run's order
        "interaction": {
            "metrics": ["mrr", "mrr_interaction", "hr@{k}", "ndcg@{k}"],
            "lower_is_better": [],
        },
        "rating": {"metrics": ["mse", "rmse"], "lower_is_better": ["mse", "rmse"]},
    }


def test_validation_carve_out_logs_val_every_epoch_and_test_once(ratings_folder, tmp_path):
    with initialize_config_module("mtrec.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"data.path={ratings_folder}",
                "data.val_fraction=0.1",
                "trainer.max_epochs=2",
                "~logger",
                "~callbacks",
                f"paths.output_dir={tmp_path}",
                f"paths.data_dir={tmp_path}",
                f"paths.root_dir={tmp_path}",
            ],
            return_hydra_config=False,
        )
    metrics = train(cfg)
    assert {"val/mrr", "val/mse", "test/mrr", "test/mse"} <= set(metrics)


def test_reference_experiment_is_the_two_by_two_sweep():
    with initialize_config_module("mtrec.conf", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=cs330"], return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert dict(cfg.hydra.sweeper.params) == {
        "model.embedding_sharing": "true,false",
        "model.factorization_weight": "0.99,0.5",
    }
    assert (
        cfg.data.split_seed == 123 and cfg.trainer.max_epochs == 200 and cfg.data.batch_size == 256
    )


@pytest.mark.slow
def test_the_built_wheel_trains_with_no_source_tree(tmp_path, ratings_folder):
    """What users install: the wheel, unpacked alone on the path (no editable finder, no
    source tree), with every package under src/, its configs, and two short runs."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(wheels), str(REPO)],
        check=True,
    )
    wheel = zipfile.ZipFile(next(wheels.glob("mtrec-*.whl")))
    names = wheel.namelist()
    packages = {p.relative_to(REPO / "src").as_posix() for p in (REPO / "src").rglob("__init__.py")}
    assert packages and packages <= set(names)  # found automatically, none left out
    for config in (
        "train.yaml",
        "tasks/like.yaml",
        "weighting/pcgrad.yaml",
        "model/multitask.yaml",
        "logger/mlflow.yaml",
        "hydra/sweeper/optuna.yaml",
        "callbacks/task_stopping.yaml",
        "experiment/best.yaml",
        "hparams_search/best.yaml",
    ):
        assert f"mtrec/conf/{config}" in names
    installed = tmp_path / "installed"
    wheel.extractall(installed)
    site = next(p for p in sys.path if p.endswith("site-packages"))
    # -S: no site-packages .pth files, so no editable finder; the wheel first, then the deps
    env = {**os.environ, "PYTHONPATH": f"{installed}{os.pathsep}{site}"}
    where = subprocess.run(
        [sys.executable, "-S", "-c", "import mtrec.mtl.weighting, mtrec; print(mtrec.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(installed))
    for overrides in (
        ["weighting=pcgrad", "logger=[csv,mlflow]"],
        ["model.net.sharing=mmoe"],
        ["model.net.item_to_item=true", "callbacks=task_stopping", "data.val_fraction=0.1"],
    ):
        done = subprocess.run(
            [sys.executable, "-S", "-m", "mtrec.train", f"data.path={ratings_folder}", *overrides]
            + ["trainer.max_epochs=1", "model.compile=false", "hydra.run.dir=run"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
        assert {"test/mrr", "test/mse"} <= final.keys()
        if "logger=[csv,mlflow]" in overrides:  # the trackers' configs and store, installed
            assert (tmp_path / "run/csv/metrics.csv").is_file()
            assert (tmp_path / "outputs/mlflow.db").is_file()
        shutil.rmtree(tmp_path / "run")
