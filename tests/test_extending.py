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
