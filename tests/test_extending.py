"""The README's "Extending mtrec" examples, run as written: their files are taken from the
README, and each command is run from the command line (with a short training added)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import synthetic_ratings

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


def test_the_readme_shows_a_model_a_weighting_and_a_data_source():
    files, commands = examples()
    assert {"my_package/nets.py", "my_conf/model/two_tower.yaml"} <= files.keys()
    assert {"my_package/weighting.py", "my_conf/weighting/geometric.yaml"} <= files.keys()
    assert {"my_package/data.py", "my_conf/data/jsonl.yaml"} <= files.keys()
    assert len(commands) == 3 and all(c[0] == "mtrec-train" for c in commands)


@pytest.mark.slow
@pytest.mark.parametrize("example", ["model", "weighting", "data"])
def test_each_readme_example_trains_from_the_command_line(tmp_path, ratings_folder, example):
    files, commands = examples()
    for path, body in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(body)
    (tmp_path / "my_package" / "__init__.py").write_text("")
    ratings = synthetic_ratings()
    ratings.to_json(tmp_path / "ratings.jsonl", orient="records", lines=True)
    command = commands[["model", "weighting", "data"].index(example)]
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
    config = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    expected = {
        "model": "my_package.nets.TwoTowerNet",
        "weighting": "my_package.weighting.GeometricWeighting",
        "data": "my_package.data.JsonLinesRatings",
    }[example]
    assert expected in config
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    items = saved["state_dict"]["net.item_embeddings.weight"]
    assert len(items) == ratings["item"].nunique()  # the catalogue of the file read


def readme_net_class():
    """The README's TwoTowerNet, from the README's own text."""
    files, _ = examples()
    namespace: dict = {}
    exec(compile(files["my_package/nets.py"], "my_package/nets.py", "exec"), namespace)
    return namespace["TwoTowerNet"]


def two_head_nets():
    """Every two-head net: the zoo's in each sharing architecture, and the README's."""
    from mtrec.models import MultiTaskNet
    from mtrec.models.sharing import SHARINGS

    nets = {
        f"multitask-{s}": lambda d, s=s: MultiTaskNet(d, 4, (12, 8), sharing=s) for s in SHARINGS
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
