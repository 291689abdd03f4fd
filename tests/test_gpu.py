"""On a GPU (skipped without one; ``benchmarks/gpu_check.sh`` runs them there): the encoders
and the whole compiled run give there what they give on the CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import multitask_net
from mtrec.data.info import DataInfo
from mtrec.data.interactions import Interactions

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def random_train(num_users: int = 50, num_items: int = 30, rows: int = 400) -> Interactions:
    generator = torch.Generator().manual_seed(0)
    users = torch.randint(0, num_users, (rows,), generator=generator)
    items = torch.randint(0, num_items, (rows,), generator=generator)
    ratings = torch.randint(1, 6, (rows,), generator=generator).float()
    return Interactions(users, items, ratings, torch.zeros(rows, dtype=torch.int64),
                        num_users, num_items)  # fmt: skip


@pytest.mark.parametrize("encoder", ["id", "history", "graph"])
def test_the_encoders_give_on_the_gpu_what_they_give_on_the_cpu(encoder):
    train = random_train()
    net = multitask_net(DataInfo(50, 30, None, train), embedding_dim=8, layer_sizes=(24, 8),
                       encoder=encoder)  # fmt: skip
    with torch.no_grad():  # the history's items start at zero: give them something to read
        for parameter in net.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    users, items = torch.tensor([0, 3, 7]), torch.tensor([1, 2, 9])
    before = net.vectors()
    losses = net.head("rating")(users, items).sum()
    losses.backward()
    grads = {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}
    net.zero_grad()
    net.to("cuda")
    after = net.vectors()
    for key, value in before.items():
        torch.testing.assert_close(after[key].cpu(), value, atol=1e-5, rtol=1e-4)
    net.head("rating")(users.cuda(), items.cuda()).sum().backward()
    for name, grad in grads.items():
        found = dict(net.named_parameters())[name].grad
        torch.testing.assert_close(found.to_dense().cpu(), grad.to_dense(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("settings", [[], ["model.net.encoder=history"]])
def test_a_gpu_run_trains_in_the_compiled_step(run_cli, ratings_folder, tmp_path, settings):
    status, output = run_cli(
        f"data.path={ratings_folder}", "trainer=gpu", "trainer.max_epochs=2",
        f"hydra.run.dir={tmp_path / 'run'}", *settings,
    )  # fmt: skip
    assert status == 0, output
    assert "the step runs as with model.compile=loss" not in output
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    assert 0 < final["test/mrr"] <= 1 and math.isfinite(final["test/mse"])
