"""A real multirun with one failing setting: names, summary, figures, HParams, evaluation."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from mtrec import evaluate
from mtrec.runs import figures, report, tables
from mtrec.runs.naming import safe_name
from mtrec.train import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, request) -> Path:
    """Four jobs: sharing x embedding size, where embedding size 5 is invalid and fails."""
    from conftest import synthetic_ratings, write_u_data

    out = tmp_path_factory.mktemp("sweep")
    folder = write_u_data(out / "data", synthetic_ratings())
    argv = [
        "mtrec-train",
        "-m",
        "model.embedding_sharing=true,false",
        "model.net.embedding_dim=8,5",
        "model.net.layer_sizes=[24,16]",
        f"data.path={folder}",
        f"paths.data_dir={out / 'cache'}",
        "trainer.max_epochs=3",
        "data.batch_size=128",
        f"hydra.sweep.dir={out / 'sweep'}",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):  # Hydra reports the failed jobs after running all of them
        main()
    monkeypatch.undo()
    return out / "sweep"


def job_dirs(sweep: Path) -> dict[str, Path]:
    return {p.parent.name: p.parent for p in sweep.glob("*/.hydra")}


def test_runs_are_named_by_their_swept_values_only(sweep):
    assert set(job_dirs(sweep)) == {
        f"sharing={s},dim={d}"  # each swept key by the shortest end no other one shares
        for s in (True, False)
        for d in (8, 5)
    }


def test_summary_has_every_job_and_marks_the_failed_ones(sweep):
    table = pd.read_csv(sweep / "summary.csv")
    assert len(table) == 4
    assert list(table.columns[1:3]) == ["model.embedding_sharing", "model.net.embedding_dim"]
    failed = table[table.status == "failed"]
    assert sorted(failed["model.net.embedding_dim"]) == [5, 5]
    assert failed.error.str.contains(
        "model.net.layer_sizes=[24,16] does not fit model.net.embedding_dim=5", regex=False
    ).all()
    for _, row in table[table.status == "completed"].iterrows():
        record = json.loads((sweep / row["run"] / "metrics.json").read_text())
        for name, value in record["final"].items():
            assert row[name] == pytest.approx(value, rel=1e-12)
            assert row[f"{name} best"] == pytest.approx(record["best"][name]["value"], rel=1e-12)
            assert row[f"{name} best epoch"] == record["best"][name]["epoch"]
        assert row["epochs"] == 3 and row["wall_seconds"] > 0
    markdown = (sweep / "summary.md").read_text()
    statuses = re.findall(r"\|\s*(failed|completed)\s*\|", markdown)
    assert sorted(statuses) == ["completed", "completed", "failed", "failed"]


def test_figures_are_written(sweep):
    import matplotlib.pyplot as plt

    jobs, keys = tables.read_sweep(sweep)
    finished = [j for j in jobs if j.metrics.get("history")]
    assert len(finished) == 2  # the failed jobs have nothing to draw
    names = figures.curve_names(finished)
    assert names[:2] == ["test/mrr", "test/mse"]  # each task's main metric, then gradients
    for name in [*names, "final_metrics"]:
        path = sweep / f"{'curve_' if '/' in name else ''}{name.replace('/', '_')}.png"
        assert path.read_bytes().startswith(PNG_MAGIC)
    ax = figures.curve_figure(finished, keys, "test/mrr").axes[0]  # one line per run
    drawn = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    for job in finished:
        epochs = [h["test/mrr"] for h in job.metrics["history"] if "test/mrr" in h]
        assert drawn[figures.run_label(job, keys)] == pytest.approx(epochs)
    fig = figures.final_metrics_figure(finished, keys)  # one panel per metric, task by task
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:2] == ["test/mrr (higher is better)", "test/mrr_interaction (higher is better)"]
    assert titles.index("test/mse (lower is better)") > titles.index(
        "test/ndcg@10 (higher is better)"
    )
    panel = fig.axes[titles.index("test/mse (lower is better)")]
    heights = [bar.get_height() for bar in panel.patches]
    assert heights == pytest.approx([j.metrics["final"]["test/mse"] for j in finished])
    plt.close("all")


def test_report_command_regenerates_the_summary(sweep, capsys):
    before = (sweep / "summary.csv").read_text()
    (sweep / "summary.csv").unlink()
    (sweep / "final_metrics.png").unlink()
    report.main([str(sweep)])
    assert (sweep / "summary.csv").read_text() == before
    assert (sweep / "final_metrics.png").exists()
    assert "failed" in capsys.readouterr().out


def read_events(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_each_run_has_one_hparams_session_with_final_metrics(sweep):
    completed = [run for name, run in job_dirs(sweep).items() if "dim=8" in name]
    key_sets = []
    for run in completed:
        events = read_events(run)
        content = events.PluginTagToContent("hparams")
        sessions = [plugin_data_pb2.HParamsPluginData.FromString(c) for c in content.values()]
        starts = [s.session_start_info for s in sessions if s.HasField("session_start_info")]
        experiment = next(s.experiment for s in sessions if s.HasField("experiment"))
        assert len(starts) == 1
        hparams = starts[0].hparams
        key_sets.append(set(hparams))
        sharing = hparams["model.embedding_sharing"].string_value
        assert f"sharing={sharing}," in run.name  # categorical, as a string
        assert hparams["model.net.embedding_dim"].number_value == 8
        assert hparams["weighting.weights.rating"].number_value == pytest.approx(0.01)
        metric_tags = {m.name.tag for m in experiment.metric_infos}
        assert {
            "test/mrr",
            "test/mse",
            "test/rmse",
            "test/mrr_interaction",
            "test/hr@10",
            "test/ndcg@10",
        } == metric_tags
        assert "hp_metric" not in events.Tags()["scalars"]
        final = json.loads((run / "metrics.json").read_text())["final"]
        for tag in ("test/mrr", "test/mse"):
            assert events.Scalars(tag)[-1].value == pytest.approx(final[tag], rel=1e-6)
    assert key_sets[0] == key_sets[1]


def test_item_embeddings_are_logged_for_the_projector(sweep):
    for name, run in job_dirs(sweep).items():
        if "dim=8" not in name:
            continue
        config = (run / "projector_config.pbtxt").read_text()
        expected = 1 if "sharing=True" in name else 2
        assert config.count("embeddings {") == expected
        metadata = next(run.glob("*/mixer.items.interaction/metadata.tsv")).read_text().splitlines()
        assert metadata[0] == "title\tgenres" and metadata[1].startswith("Movie 1 (1990)")
        assert len(metadata) == 41


def test_eval_reproduces_the_end_of_training_metrics_exactly(sweep, capsys):
    run = next(run for name, run in job_dirs(sweep).items() if "dim=8" in name)
    checkpoint = run / "checkpoints" / "last.ckpt"
    evaluate.main([f"ckpt_path={checkpoint}"])
    written = json.loads((run / "eval_last.json").read_text())["metrics"]
    final = json.loads((run / "metrics.json").read_text())["final"]
    held_out = {name: value for name, value in final.items() if not name.startswith("mtl/")}
    assert written == held_out  # mtl/...: training's diagnostics, not evaluation's
    assert "test/mrr" in capsys.readouterr().out


def test_eval_rejects_a_missing_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match="is not a file"):
        evaluate.main([f"ckpt_path={tmp_path / 'nope.ckpt'}"])


def test_notebook_runs_top_to_bottom_on_the_sweep(sweep, monkeypatch):
    """Executes the notebook's code cells in order, as nbconvert would."""
    import matplotlib

    matplotlib.use("Agg")
    notebook = json.loads(
        (Path(__file__).parents[1] / "notebooks" / "compare_sweep.ipynb").read_text()
    )
    monkeypatch.setenv("MTREC_SWEEP", str(sweep))
    namespace: dict = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "notebook", "exec"), namespace)  # noqa: S102
    assert len(namespace["summary"]) == 4
    assert set(namespace["scalars"].run) == {n for n in job_dirs(sweep) if "dim=8" in n}


def test_safe_name_keeps_folder_names_flat_and_short():
    assert safe_name("data.path=/a/b c") == "data.path=_a_b_c"
    long = safe_name("x=" + "y" * 500)
    assert len(long) <= 120 and long != safe_name("x=" + "y" * 499)


@pytest.mark.slow
def test_two_sweeps_started_together_get_two_folders(ratings_folder, tmp_path):
    command = [
        sys.executable,
        "-m",
        "mtrec.train",
        "-m",
        "seed=1,2",
        f"data.path={ratings_folder}",
        "trainer.max_epochs=1",
        "~callbacks",
        "~logger",
        "hydra.callbacks={}",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    sweeps = list((tmp_path / "outputs" / "sweeps" / "train").iterdir())
    assert len(sweeps) == 2
    for folder in sweeps:
        assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["seed=1", "seed=2"]


@pytest.mark.slow
def test_joblib_launcher_runs_two_jobs_in_parallel(ratings_folder, tmp_path):
    command = [
        sys.executable,
        "-m",
        "mtrec.train",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "seed=1,2",
        f"data.path={ratings_folder}",
        "trainer.max_epochs=2",
        "model.compile=false",  # the launcher is what is tested, not the compiler
        "callbacks.progress_bar.refresh_rate=0",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Joblib.Parallel(n_jobs=2" in done.stdout + done.stderr
    table = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert sorted(table.run) == ["seed=1", "seed=2"] and (table.status == "completed").all()
    assert table["test/mrr"].notna().all()
    seeds = pd.read_csv(tmp_path / "sweep" / "summary_over_seeds.csv")
    assert seeds["runs"].tolist() == [2]
    assert seeds["test/mrr"][0] == pytest.approx(table["test/mrr"].mean())
    assert "## Over seeds" in (tmp_path / "sweep" / "summary.md").read_text()


def test_mean_and_sd_over_seeds_by_hand():
    table = pd.DataFrame(
        {
            "run": ["a0", "a1", "a2", "b0", "b1"],
            "weighting": ["mgda", "mgda", "mgda", "dwa", "dwa"],
            "seed": [0, 1, 2, 0, 1],
            "status": ["completed"] * 4 + ["failed"],
            "test/mrr": [0.10, 0.12, 0.14, 0.05, float("nan")],
            "test/mrr best epoch": [3, 4, 5, 6, 7],
            "error": [""] * 5,
        }
    )
    seeds = tables.over_seeds(table, ["weighting", "seed"])
    assert seeds["weighting"].tolist() == ["mgda", "dwa"]  # in order of appearance
    assert seeds["runs"].tolist() == [3, 1]  # the failed run left out
    assert seeds["test/mrr"][0] == pytest.approx(0.12)
    assert seeds["test/mrr sd"][0] == pytest.approx(0.02)  # sample sd of 0.10, 0.12, 0.14
    assert pd.isna(seeds["test/mrr sd"][1])  # one run: no spread
    assert "test/mrr best epoch" not in seeds.columns and "seed" not in seeds.columns
    shown = tables.mean_sd_table(seeds)
    assert shown["test/mrr"].tolist() == ["0.12 ± 0.02", "0.05"]


def test_the_summary_orders_metrics_task_by_task_and_diagnostics_by_pair():
    job = tables.Job(Path("x"), {}, "completed")
    names = [
        "mtl/grad_cosine/rating-like",
        "test/log_loss",
        "mtl/grad_norm/like",
        "test/auc",
        "val/auc",
        "mtl/grad_cosine/interaction-like",
        "test/mse",
        "mtl/grad_norm/interaction",
        "mtl/grad_cosine/interaction-rating",
        "test/mrr",
        "mtl/gate/user/like/0",
    ]
    job.metrics = {"final": dict.fromkeys(names, 0.0)}
    assert tables.metric_names([job]) == [
        "test/mrr",
        "test/mse",
        "test/auc",
        "test/log_loss",
        "val/auc",
        "mtl/grad_cosine/interaction-rating",
        "mtl/grad_cosine/interaction-like",
        "mtl/grad_cosine/rating-like",
        "mtl/grad_norm/interaction",
        "mtl/grad_norm/like",
    ]


def test_optuna_search_config_returns_a_validation_objective():
    from hydra import compose, initialize_config_module

    with initialize_config_module("mtrec.conf", version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True)
    assert cfg.optimized_metric == "val/mrr" and cfg.data.val_fraction > 0
    assert cfg.hydra.sweeper._target_.endswith("mtrec_optuna_sweeper.optuna_sweeper.OptunaSweeper")
    assert cfg.hydra.sweeper.n_jobs == cfg.hydra.launcher.n_jobs == 2  # trials side by side
    assert cfg.callbacks.pruning.monitor == cfg.optimized_metric  # what the study optimises
    assert set(cfg.hydra.sweeper.params) == {
        "model.net.embedding_dim",
        "optimizer.lr",
        "model.factorization_weight",
        "model.l2",
    }


@pytest.mark.slow
@pytest.mark.xdist_group("gloo")  # process groups one at a time: their sockets never meet
@pytest.mark.parametrize(
    "weighting, sparse_rows, encoder",
    [
        ("fixed", False, "id"),
        ("pcgrad", False, "id"),
        ("fixed", True, "id"),
        ("mgda", False, "graph"),
    ],
)
def test_ddp_on_two_cpu_processes_evaluates_the_whole_held_out_set(
    ratings_folder, tmp_path, weighting, sparse_rows, encoder
):
    """Two gloo ranks train on disjoint shares of each epoch; the metrics they log are those of
    the whole held-out set (equal to a one-process evaluation of the checkpoint) and agree with
    one-process training of the same effective batch within noise. With a gradient-level
    strategy each rank combines its tasks' gradients and the ranks average the result; with
    sparse rows DDP averages the tables' sparse gradients; each rank builds the graph encoder's
    propagation (as it would the history encoder's matrix) from the same training rows."""
    common = [
        f"data.path={ratings_folder}",
        f"weighting={weighting}",
        f"model.sparse_rows={str(sparse_rows).lower()}",
        f"model.net.encoder={encoder}",
        "trainer.max_epochs=10",
        "optimizer.lr=0.01",
        "callbacks.progress_bar.refresh_rate=0",
        "~logger",
    ]
    runs = {
        "ddp": [
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "data.batch_size=32",
        ],
        "single": ["data.batch_size=64"],
    }
    processes = {  # side by side: the one-process run is the reference, not a rival
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mtrec.train",
                *common,
                *extra,
                f"hydra.run.dir={tmp_path / name}",
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, extra in runs.items()
    }
    finals, logs = {}, {}
    for name, process in processes.items():
        logs[name] = process.communicate(timeout=300)[0]
        assert process.returncode == 0, logs[name][-3000:]
        finals[name] = json.loads((tmp_path / name / "metrics.json").read_text())["final"]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs["ddp"] and "GLOBAL_RANK" not in logs["single"]
    evaluate.main([f"ckpt_path={tmp_path / 'ddp' / 'checkpoints' / 'last.ckpt'}"])
    held_out = {k: v for k, v in finals["ddp"].items() if not k.startswith("mtl/")}
    assert json.loads((tmp_path / "ddp" / "eval_last.json").read_text())["metrics"] == held_out
    if weighting != "fixed":  # each rank's diagnostics, of its own tasks' gradients
        assert -1 <= finals["ddp"]["mtl/grad_cosine/interaction-rating"] <= 1
    assert finals["ddp"]["test/mse"] == pytest.approx(finals["single"]["test/mse"], abs=0.1)
    assert finals["ddp"]["test/mrr"] == pytest.approx(finals["single"]["test/mrr"], abs=0.05)
