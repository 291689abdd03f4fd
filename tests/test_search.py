"""The search on Optuna's current API: the space from Hydra's sweep syntax, trials side by side,
unpromising ones pruned from their per-epoch validation metric, the best trial written, and
a stopped search resumed from its storage."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from conftest import SHORT_RUN

optuna = pytest.importorskip("optuna")  # installed by make install (the search extra)

from mtrec.search.space import override, search_space  # noqa: E402


def test_the_space_is_read_from_hydras_sweep_syntax():
    space, fixed = search_space(
        {
            "model.net.embedding_dim": "choice(16, 32, 64)",
            "model.embedding_sharing": "choice(true, false, items)",
            "optimizer.lr": "tag(log, interval(1e-4, 1e-2))",
            "model.factorization_weight": "interval(0.5, 0.999)",
            "data.num_negatives": "int(interval(1, 8))",
            "model.net.dropout": "range(0, 0.3, 0.1)",
            "data.split_seed": 0,
        }
    )
    D = optuna.distributions
    assert space["model.net.embedding_dim"] == D.CategoricalDistribution([16, 32, 64])
    assert space["model.embedding_sharing"] == D.CategoricalDistribution([True, False, "items"])
    assert space["optimizer.lr"] == D.FloatDistribution(1e-4, 1e-2, log=True)
    assert space["model.factorization_weight"] == D.FloatDistribution(0.5, 0.999)
    assert space["data.num_negatives"] == D.IntDistribution(1, 8)
    assert space["model.net.dropout"].choices == pytest.approx((0.0, 0.1, 0.2))
    assert fixed == ["data.split_seed=0"]
    space, fixed = search_space(  # the command line after the config: searched or fixed
        {"optimizer.lr": "interval(1e-4, 1e-2)", "model.l2": "interval(0, 1e-5)"},
        ["optimizer.lr=0.01", "model.net.embedding_dim=choice(8, 16)", "seed=1"],
    )
    assert set(space) == {"model.l2", "model.net.embedding_dim"}
    assert fixed == ["optimizer.lr=0.01", "seed=1"]
    assert override("model.embedding_sharing", False) == "model.embedding_sharing=false"
    assert override("optimizer.lr", 0.1 + 0.2) == "optimizer.lr=0.30000000000000004"


def test_a_value_that_cannot_be_searched_is_named(run_cli):
    status, output = run_cli(
        "hparams_search=optuna", "hydra.sweeper.params={optimizer.lr:'glob(*)'}"
    )
    assert status != 0 and "hydra.sweeper.params.optimizer.lr" in output


def search(tmp_path, ratings_folder, storage, n_trials):
    """A search on the tests' ratings as a user runs it: two trials side by side, a learning
    rate that learns against one that cannot, pruning from the second epoch on."""
    return subprocess.run(
        [sys.executable, "-m", "mtrec.train", "hparams_search=optuna"]
        + [f"data.path={ratings_folder}", *SHORT_RUN, "model.compile=false"]
        + ["trainer.max_epochs=4", "~hydra.sweeper.params"]
        + ["+hydra.sweeper.params={optimizer.lr:'choice(0.03, 1e-9)'}"]
        + [f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.storage=sqlite:///{storage}"]
        + ["hydra.sweeper.pruner.n_startup_trials=2", "hydra.sweeper.pruner.n_warmup_steps=2"],
        cwd=tmp_path,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_a_search_prunes_writes_its_best_and_resumes(tmp_path, ratings_folder):
    storage = tmp_path / "study.db"
    first = search(tmp_path, ratings_folder, storage, n_trials=6)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    study = optuna.load_study(study_name="mtrec", storage=f"sqlite:///{storage}")
    assert study.metric_names == ["val/mrr"]
    states = [t.state for t in study.trials]
    assert len(states) == 6 and optuna.trial.TrialState.FAIL not in states
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned  # the untrained ranking head's trials
    assert all(len(t.intermediate_values) < 4 for t in pruned)
    assert all(t.params["optimizer.lr"] == 1e-9 for t in pruned)
    (sweep,) = (tmp_path / "outputs/sweeps/optuna").iterdir()
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"] == {"optimizer.lr": 0.03}
    assert results["best_value"] == pytest.approx(study.best_value)
    assert results["epochs_trained"] < 6 * 4
    assert results["best_run"].startswith(f"trial={study.best_trial.number},")
    assert (sweep / results["best_run"] / "metrics.json").is_file()
    for trial in pruned:  # the run stopped after the epoch it was pruned at
        (folder,) = sweep.glob(f"trial={trial.number},*")
        history = yaml.safe_load((folder / "metrics.json").read_text())["history"]
        assert max(entry["epoch"] for entry in history) == len(trial.intermediate_values)

    again = search(tmp_path, ratings_folder, storage, n_trials=7)  # resumes: one trial more
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "1 trials to run of 7 (6 done before)" in again.stdout + again.stderr
    study = optuna.load_study(study_name="mtrec", storage=f"sqlite:///{storage}")
    assert len(study.trials) == 7 and study.trials[-1].state.is_finished()


def test_a_search_without_optuna_gets_the_install_command(run_cli, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else find_spec(name)
    )
    status, output = run_cli("hparams_search=optuna", "data.path=/nonexistent")
    assert status != 0
    assert "needs the optuna package" in output and "[search]" in output


def test_trials_roll_a_freed_place_starts_the_next_trial_at_once():
    import threading
    import time

    from hydra_plugins.mtrec_optuna_sweeper.optuna_sweeper import run_rolling

    seconds = [0.6, 0.05, 0.05, 0.05]  # trial 0 long (a full run), the others short (pruned)
    events, lock, asked, told = [], threading.Lock(), [], []

    def ask():
        asked.append(len(asked))
        return asked[-1]

    def run(trial):
        with lock:
            events.append(("start", trial))
        time.sleep(seconds[trial])
        with lock:
            events.append(("end", trial))
        return trial

    run_rolling(4, 2, ask, run, lambda trial, job: told.append(job) or False)
    assert sorted(told) == [0, 1, 2, 3]
    # trials 2 and 3 start (and end) while trial 0 still runs: the freed place stayed busy;
    # in batches of two, trial 2 would start only after trial 0 ended
    assert events.index(("start", 3)) < events.index(("end", 0))
    assert events[-1] == ("end", 0)


def test_an_interrupted_trial_stops_asking_for_more():
    from hydra_plugins.mtrec_optuna_sweeper.optuna_sweeper import run_rolling

    asked = []

    def ask():
        asked.append(len(asked))
        return asked[-1]

    run_rolling(5, 1, ask, lambda trial: trial, lambda trial, job: job == 1)
    assert asked == [0, 1]
