"""The README's "Extending mtrec" examples, run as written: their files are taken from the
README, and each command is run from the command line (with a short training added)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from conftest import multitask_net, synthetic_ratings, tasks_named
from mtrec.data.datamodule import BATCH_FIELDS, MovieLensDataModule
from mtrec.models.protocol import HeadKind
from mtrec.mtl.tasks import Task

README = Path(__file__).resolve().parents[1] / "README.md"
SHORT = ["trainer.max_epochs=2", "model.compile=false", "data.batch_size=64"]


def section() -> str:
    text = README.read_text()
    start = text.index("## Extending mtrec")
    return text[start : text.index("\n## ", start + 1)]


def examples() -> tuple[dict[str, str], list[list[str]]]:
    """The files (path -> text) and commands the README's section shows."""
    blocks = re.findall(r"<!-- (file: (\S+)|run) -->\n```\w+\n(.*?)```", section(), re.S)
    files = {path: body for kind, path, body in blocks if kind.startswith("file")}
    commands = [shlex.split(body.strip()) for kind, _, body in blocks if kind == "run"]
    return files, commands


EXAMPLES = ["model", "weighting", "data", "task", "sharing"]  # in the README's order


def test_the_readme_shows_a_model_a_weighting_a_data_source_a_task_and_an_architecture():
    files, commands = examples()
    assert {"my_package/nets.py", "my_conf/model/two_tower.yaml"} <= files.keys()
    assert {"my_package/weighting.py", "my_conf/weighting/geometric.yaml"} <= files.keys()
    assert {"my_package/data.py", "my_conf/data/jsonl.yaml"} <= files.keys()
    assert {"my_package/tasks.py", "my_conf/tasks/stars.yaml"} <= files.keys()
    assert {"my_package/sharing.py", "my_conf/model/shared_plus_own.yaml"} <= files.keys()
    assert len(commands) == len(EXAMPLES) and all(c[0] == "mtrec-train" for c in commands)


def readme_package(folder: Path) -> None:
    """The README's files written under ``folder`` (``my_package`` importable from there)."""
    files, _ = examples()
    for path, body in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(body)
    (folder / "my_package" / "__init__.py").write_text("")


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES)
def test_each_readme_example_trains_from_the_command_line(tmp_path, ratings_folder, example):
    _, commands = examples()
    readme_package(tmp_path)
    ratings = synthetic_ratings()
    ratings.to_json(tmp_path / "ratings.jsonl", orient="records", lines=True)
    command = commands[EXAMPLES.index(example)]
    data = [] if example == "data" else [f"data.path={ratings_folder}"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    binary = Path(sys.executable).with_name("mtrec-train")
    done = subprocess.run(
        [str(binary), *command[1:], *data, *SHORT, "hydra.run.dir=run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    assert {"test/mrr", "test/mse"} <= final.keys()
    if example == "task":  # the new task's own metrics, beside the others'
        assert {"test/accuracy", "test/macro_f1"} <= final.keys()
        assert 0 < final["test/accuracy"] <= 1 and 0 < final["test/macro_f1"] <= 1
    config = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    expected = {
        "model": "my_package.nets.TwoTowerNet",
        "weighting": "my_package.weighting.GeometricWeighting",
        "data": "my_package.data.JsonLinesRatings",
        "task": "my_package.tasks.Stars",
        "sharing": "my_package.sharing.SharedPlusOwn",
    }[example]
    assert expected in config
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    state = saved["state_dict"]
    if example == "sharing":  # each task's own rows, beside the shared table
        assert {"net.mixer.own.user.rating.weight", "net.mixer.own.item.interaction.weight"} <= (
            state.keys()
        )
    if example in ("model", "data"):  # the README's net, or the default one
        table = "item_embeddings" if example == "model" else "mixer.items.interaction"
        items = state[f"net.{table}.weight"]
        assert len(items) == ratings["item"].nunique()  # the catalogue of the file read


def readme_net_class():
    """The README's TwoTowerNet, from the README's own text."""
    files, _ = examples()
    namespace: dict = {}
    exec(compile(files["my_package/nets.py"], "my_package/nets.py", "exec"), namespace)
    return namespace["TwoTowerNet"]


def two_head_nets():
    """Every two-head net: the zoo's in each sharing architecture, and the README's."""
    from mtrec.models.mixers import SHARINGS

    nets = {
        f"multitask-{s}": lambda d, s=s: multitask_net(d, 4, (12, 8), sharing=s) for s in SHARINGS
    }
    nets["readme-two_tower"] = lambda d: readme_net_class()(d, dim=4)
    return nets


@pytest.mark.parametrize("strategy", ["fixed", "pcgrad"])
@pytest.mark.parametrize("name", list(two_head_nets()))
def test_every_two_head_net_serves_every_kind_of_strategy(name, strategy):
    """The protocol's contract: one step under a loss-level and a gradient-level strategy,
    the shared part reached by every task's gradient, and per-task gradients (taken for the
    diagnostics) adding up to what one backward pass of the weighted sum gives."""
    from torchjd.aggregation import PCGrad

    from mtrec.data.info import DataInfo
    from mtrec.models.protocol import SharesRows
    from mtrec.mtl.objective import Objective
    from mtrec.mtl.step import StepEngine
    from mtrec.mtl.weighting import Aggregation, FixedWeighting

    batch = {
        "users": torch.tensor([0, 1, 2, 1]),
        "items": torch.tensor([3, 4, 5, 6]),
        "ratings": torch.tensor([4.0, 2.0, 5.0, 3.0]),
        "negatives": torch.tensor([[6], [0], [7], [2]]),
    }

    def gradients(diagnostics):
        torch.manual_seed(0)
        net = two_head_nets()[name](DataInfo(4, 8))
        weighting = (
            FixedWeighting({"interaction": 0.7, "rating": 0.3})
            if strategy == "fixed"
            else Aggregation(PCGrad())
        )
        engine = StepEngine(net, Objective(), weighting, diagnostics=diagnostics)
        losses = engine.step(batch, torch.Tensor.backward)
        assert torch.isfinite(losses["loss"])
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        return net, engine, grads

    net, engine, grads = gradients(diagnostics=True)
    assert isinstance(net, SharesRows)
    shares = bool(net.shared(batch["users"], batch["items"]))
    assert engine.task_gradients  # asked for: taken wherever the tasks share something
    assert len(engine.diagnostics.steps) == (1 if shares else 0)
    assert all(torch.isfinite(g).all() for g in grads.values()) and grads
    if strategy == "fixed":  # per-task copies change nothing in the sum
        _, _, plain = gradients(diagnostics=False)
        assert plain.keys() == grads.keys()
        for key in plain:
            torch.testing.assert_close(grads[key], plain[key], rtol=1e-5, atol=1e-7)


def readme_stars():
    """The README's Stars task, from the README's own text."""
    files, _ = examples()
    namespace: dict = {}
    exec(compile(files["my_package/tasks.py"], "my_package/tasks.py", "exec"), namespace)
    return namespace["Stars"]()


def test_the_readme_task_is_a_classification_of_the_rating():
    """Its loss is the cross-entropy of the head's 5 logits against the stars, by hand."""
    from mtrec.data.info import DataInfo
    from mtrec.models import MultiTaskNet

    stars = readme_stars()
    torch.manual_seed(0)
    net = MultiTaskNet(DataInfo(3, 4), 4, (12, 8), tasks=(*tasks_named("interaction"), stars))
    batch = {"users": torch.tensor([0, 2]), "items": torch.tensor([1, 3])}
    batch["ratings"] = torch.tensor([5.0, 1.0])
    logits = net.head("stars")(batch["users"], batch["items"])
    assert logits.shape == (2, 5)
    by_hand = -(logits.log_softmax(-1)[0, 4] + logits.log_softmax(-1)[1, 0]) / 2
    torch.testing.assert_close(stars.loss(net, batch), by_hand)


def test_a_run_with_the_readme_task_trains_under_every_architecture_and_strategy(
    tmp_path, ratings_folder
):
    """The new task with three tasks, under every sharing architecture (fixed weights) and
    under fixed, mgda, pcgrad, famo and nash_mtl (shared tables): one short epoch each, in
    this process; every task's loss falls and its metrics come out."""
    from hydra import compose, initialize_config_module

    from mtrec.models.mixers import SHARINGS
    from mtrec.train import build

    readme_package(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        cases = [(s, "fixed") for s in SHARINGS]
        cases += [("shared", w) for w in ("mgda", "pcgrad", "famo", "nash_mtl")]
        for sharing, weighting in cases:
            with initialize_config_module("mtrec.conf", version_base="1.3"):
                cfg = compose(
                    "train",
                    [
                        f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
                        "tasks=[interaction,rating,stars]",
                        f"data.path={ratings_folder}",
                        f"paths.data_dir={tmp_path}",
                        f"paths.root_dir={tmp_path}",
                        f"paths.output_dir={tmp_path}",
                        "~logger",
                        f"model.net.sharing={sharing}",
                        f"weighting={weighting}",
                        "model.net.embedding_dim=4",
                        "model.net.layer_sizes=[12,8]",
                        "model.compile=false",
                    ],
                )
            datamodule, module = build(cfg)
            assert list(module.net.heads) == ["interaction", "rating", "stars"]
            batch = next(iter(datamodule.train_dataloader()))[0]
            losses = module.engine.step(batch, torch.Tensor.backward)
            assert {"interaction", "rating", "stars"} <= losses.keys(), (sharing, weighting)
            assert all(torch.isfinite(v) for v in losses.values()), (sharing, weighting)
            stars_head = module.net.heads["stars"]
            assert any(p.grad is not None for p in stars_head.parameters()), (sharing, weighting)
    finally:
        sys.path.remove(str(tmp_path))


@pytest.mark.slow
def test_a_twins_sweep_with_the_readme_task_gives_its_delta_m_and_trade_off(
    ratings_folder, tmp_path, run_cli, monkeypatch
):
    """The new task has its twin, counts in Δm by its own main metric and direction, and is
    among the trade-off figure's axes."""
    names = ("interaction", "rating", "stars")
    import pandas as pd

    from mtrec.runs import figures, tables

    readme_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    status, output = run_cli(
        "-m",
        "hydra/sweeper=twins",
        f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
        "tasks=[interaction,rating,stars]",
        "model.net.sharing=shared,mmoe",
        f"data.path={ratings_folder}",
        "trainer.max_epochs=1",
        "model.compile=false",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert status == 0, output
    sweep = tmp_path / "sweep"
    runs = pd.read_csv(sweep / "summary.csv").set_index("run")
    assert len(runs) == 8 and (runs.status == "completed").all()  # three twins and the run, twice
    run = runs.loc["sharing=shared"]
    twin = {t: runs.loc[f"sharing=shared,weighting=single,task={t}"] for t in names}
    expected = (100 / 3) * (
        (twin["interaction"]["test/mrr"] - run["test/mrr"]) / twin["interaction"]["test/mrr"]
        + (run["test/mse"] - twin["rating"]["test/mse"]) / twin["rating"]["test/mse"]
        + (twin["stars"]["test/accuracy"] - run["test/accuracy"]) / twin["stars"]["test/accuracy"]
    )
    assert run["delta_m"] == pytest.approx(expected, rel=1e-6)
    assert (sweep / "pareto.png").read_bytes().startswith(b"\x89PNG")
    labels = [ax.get_xlabel() for ax in figures.pareto_figure(*tables.read_sweep(sweep)).axes]
    labels += [ax.get_ylabel() for ax in figures.pareto_figure(*tables.read_sweep(sweep)).axes]
    assert "test/accuracy (higher is better)" in labels


class Timestamped(MovieLensDataModule):
    """A data module whose training batches also carry each row's timestamp."""

    batch_fields = (*BATCH_FIELDS, "timestamps")

    def row_fields(self):
        return super().row_fields() | {"timestamps": self.split.train.timestamps}


@dataclass(frozen=True)
class Recent(Task):
    """Whether a rating came after ``cut`` (its timestamp): a task reading a batch field the
    default batches do not carry."""

    name: ClassVar[str] = "recent"
    head_kind: ClassVar[HeadKind] = HeadKind.LOGIT
    fields: ClassVar[tuple[str, ...]] = ("users", "items", "timestamps")
    metrics: ClassVar[tuple[str, ...]] = ("recent_auc",)
    default_weight: ClassVar[float] = 0.1

    cut: float = 0.0

    def loss(self, net, batch, rows=None, user_rows=None):
        labels = (batch["timestamps"] > self.cut).float()
        return F.binary_cross_entropy_with_logits(self.pairs(net, batch, rows), labels)

    def evaluator(self, top_k, device, sync):
        raise NotImplementedError("the held-out rows carry no timestamps")


def test_a_new_batch_field_comes_from_the_data_module_and_reaches_the_task(
    tmp_path, ratings_folder
):
    """Each batch row carries its own row's value, and the task's loss trains its head."""
    from mtrec.models import MultiTaskNet

    data = Timestamped(path=str(ratings_folder), cache_dir=str(tmp_path), batch_size=16)
    data.setup()
    train = data.split.train
    rows = zip(train.users.tolist(), train.items.tolist(), train.timestamps.tolist(), strict=True)
    stamp = {(u, i): t for u, i, t in rows}
    batch = next(iter(data.train_dataloader()))[0]
    carried = (batch[field].tolist() for field in ("users", "items", "timestamps"))
    for u, i, t in zip(*carried, strict=True):
        assert stamp[u, i] == t
    task = Recent(cut=float(train.timestamps.median()))
    net = MultiTaskNet(data.data_info(), 4, (12, 8), tasks=(*tasks_named("interaction"), task))
    task.loss(net, batch).backward()
    assert all(p.grad is not None for p in net.heads["recent"].parameters())


def test_a_task_reading_a_field_no_batch_carries_is_refused_before_any_work():
    from omegaconf import OmegaConf

    from mtrec.errors import ConfigError
    from mtrec.validation import chosen_tasks

    def config(data: str):
        return OmegaConf.create(
            {
                "data": {"_target_": data},
                "tasks": {"recent": {"_target_": f"{__name__}.Recent"}},
            }
        )

    refused = "tasks.recent reads the batch field timestamps, which MovieLensDataModule does not"
    with pytest.raises(ConfigError, match=refused):
        chosen_tasks(config("mtrec.data.datamodule.MovieLensDataModule"), object)
    (task,) = chosen_tasks(config(f"{__name__}.Timestamped"), object)
    assert isinstance(task, Recent)


def test_no_task_is_named_in_the_nets():
    """A net builds a head of the kind each task asks for: no task's name is written in
    ``mtrec.models`` (a string of a built-in task's name would tie a net to that task)."""
    import ast

    import mtrec.models
    from mtrec.mtl.tasks import Interaction, Like, Rating

    names = {task.name for task in (Interaction, Rating, Like)}
    root = Path(mtrec.models.__file__).parent
    found = [
        f"{path.relative_to(root)}:{node.lineno} {node.value!r}"
        for path in sorted(root.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in names
    ]
    assert not found
