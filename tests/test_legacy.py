"""Checkpoints of the multi-task net written before its parts had names (tables and heads as
attributes named after the built-in tasks) load into today's net and give the same outputs.
``tests/data/legacy_multitask.pt`` holds such state dicts, written by that code, with the
outputs of each head on a few pairs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import tasks_named
from mtrec.data.info import DataInfo
from mtrec.data.interactions import Interactions
from mtrec.models import MultiTaskNet
from mtrec.training import legacy

SAVED = torch.load(Path(__file__).parent / "data" / "legacy_multitask.pt", weights_only=False)


def test_every_saved_legacy_net_loads_with_its_outputs():
    users, items, ratings = SAVED["data"]
    train = Interactions(users, items, ratings, torch.zeros(len(users), dtype=torch.long), 5, 7)
    u, i = torch.tensor([0, 1, 4]), torch.tensor([2, 6, 3])
    cases = [name for name in SAVED if name != "data"]
    assert len(cases) == 4
    for name in cases:
        saved = SAVED[name]
        settings = dict(saved["settings"])
        tasks = tasks_named(*settings.pop("tasks", ("interaction", "rating")))
        net = MultiTaskNet(DataInfo(5, 7, None, train), 4, (12, 8), tasks=tasks, **settings)
        assert legacy.is_legacy(saved["state_dict"]), name
        state = legacy.renamed(saved["state_dict"], net)
        net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()}, strict=True)
        net.eval()
        for task, expected in saved["outputs"].items():
            torch.testing.assert_close(net.head(task)(u, i), expected, msg=f"{name} {task}")


def test_todays_checkpoints_are_not_renamed():
    net = MultiTaskNet(DataInfo(5, 7), 4, (12, 8), tasks=tasks_named("interaction", "rating"))
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    assert not legacy.is_legacy(state)


def test_an_old_runs_config_reads_its_tasks_declarations_and_trained_weights():
    from omegaconf import OmegaConf

    from mtrec.runs.naming import register_resolvers

    register_resolvers()
    old = OmegaConf.create(
        {
            "tasks": {"interaction": {"_target_": "mtrec.mtl.tasks.Interaction"}},
            "model": {"net": {"_target_": "mtrec.models.MultiTaskNet", "tasks": ["interaction"]}},
            "weighting": {
                "weights": {
                    "interaction": 0.9,
                    "rating": "${mtrec.one_minus:${.interaction}}",
                    "like": "${.rating}",
                }
            },
        }
    )
    cfg = legacy.upgraded(old)
    assert OmegaConf.to_container(cfg.model.net, resolve=False)["tasks"] == "${tasks}"
    assert list(cfg.model.net.tasks) == ["interaction"]  # the tasks group, as today's config
    assert OmegaConf.to_container(cfg.weighting.weights) == {"interaction": 0.9}


def test_an_old_runs_checkpoint_continues_as_the_old_code_continued_it(
    tmp_path, ratings_folder, run_cli
):
    """``data/legacy_run``: a run with separate embeddings stopped after epoch 1 by the code
    before the net had named parts, and the test metrics that code gave after continuing it
    to epoch 2. Continued here, the run gives the same: the weights and Adam's state (whose
    parameters the old net registered in another order) land where they belong."""
    import json
    import shutil

    saved = Path(__file__).parent / "data" / "legacy_run"
    checkpoint = tmp_path / "old.ckpt"
    shutil.copy(saved / "separate_epoch1.ckpt", checkpoint)
    status, output = run_cli(
        f"data.path={ratings_folder}",
        "model.compile=false",
        "model.net.embedding_dim=8",
        "model.net.layer_sizes=[24,16]",
        "data.batch_size=64",
        "model.embedding_sharing=false",
        "trainer.max_epochs=2",
        f"ckpt_path={checkpoint}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert status == 0, output
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    expected = json.loads((saved / "separate_epoch2_metrics.json").read_text())
    assert {name: final[name] for name in expected} == pytest.approx(expected, rel=1e-6)
