"""Sharing architectures: gates, equivalences, all-items scores, per-task gradients."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import multitask_net, tasks_named
from mtrec.data.info import DataInfo
from mtrec.errors import ConfigError
from mtrec.models import MultiTaskNet
from mtrec.models.mixers import SHARINGS
from mtrec.models.sharing import MMoE, SharedBottom
from mtrec.models.sharing import softmax as sharing_softmax
from mtrec.mtl.objective import Objective
from mtrec.mtl.weighting import FixedWeighting
from mtrec.training.module import RecommenderModule

ARCHITECTURES = [*SHARINGS, "mmoe_mlp+norm", "ple_mlp+residual"]


def settings_of(architecture: str) -> dict:
    """``ple_mlp+residual`` -> sharing ple_mlp with residual=true."""
    sharing, _, fix = architecture.partition("+")
    return (
        {"sharing": sharing}
        | ({"expert_norm": True} if fix == "norm" else {})
        | ({"residual": True} if fix == "residual" else {})
    )


TWO, THREE = ("interaction", "rating"), ("interaction", "rating", "like")
BATCH = {
    "users": torch.tensor([0, 1, 2, 1]),
    "items": torch.tensor([3, 4, 5, 6]),
    "ratings": torch.tensor([4.0, 2.0, 5.0, 3.0]),
    "negatives": torch.tensor([[6, 1], [0, 2], [7, 3], [2, 5]]),
}


def net(sharing: str, seed: int = 0, **settings) -> MultiTaskNet:
    torch.manual_seed(seed)
    settings = settings_of(sharing) | settings
    return multitask_net(DataInfo(5, 9), 4, (12, 8), **settings)


@pytest.mark.parametrize("sharing", ARCHITECTURES)
def test_all_items_scores_equal_the_pairwise_scores(sharing):
    model = net(sharing)
    for p in model.parameters():  # no zero biases: every part shows in the scores
        torch.nn.init.normal_(p, 0, 0.5)
    users = torch.tensor([0, 3, 4])
    every = model.score_all_items(users)
    pairs = model.head("interaction")(users.unsqueeze(-1), torch.arange(9).expand(3, 9))
    torch.testing.assert_close(every, pairs)
    assert every.shape == (3, 9)
    training = model.head("rating")(BATCH["users"], BATCH["items"])
    model.eval()  # evaluation computes each repeated id once: the same values
    torch.testing.assert_close(model.score_all_items(users), every)
    torch.testing.assert_close(model.head("rating")(BATCH["users"], BATCH["items"]), training)


@pytest.mark.parametrize("sharing", ["mmoe", "cgc", "ple", "stem", "mmoe_mlp", "ple_mlp"])
def test_gates_sum_to_one_and_their_use_is_a_distribution(sharing):
    logits = torch.randn(7, 3) * 10
    torch.testing.assert_close(sharing_softmax(logits), torch.softmax(logits, -1))
    model = net(sharing, experts=3)
    sides = (
        (model.mixer.user_mixer, model.mixer.table("user", "interaction")),
        (model.mixer.item_mixer, model.mixer.table("item", "interaction")),
    )
    for mixer, table in sides:
        for probabilities in mixer.gates(torch.randn(6, table.embedding_dim)).values():
            torch.testing.assert_close(probabilities.sum(-1), torch.ones(6))
    use = model.gate_use()
    gates = {name.rsplit("/", 1)[0] for name in use}
    assert gates and all(f"{gate}/entropy" in use for gate in gates)
    for gate in gates:
        shares = [v for k, v in use.items() if k.startswith(gate + "/") and "entropy" not in k]
        assert float(sum(shares)) == pytest.approx(1.0)


def test_mmoe_with_one_expert_is_a_shared_bottom():
    mmoe, bottom = MMoE(4, 1, TWO), SharedBottom(4, TWO)
    bottom.bottom.load_state_dict(mmoe.experts.state_dict())
    bottom.towers.load_state_dict(mmoe.towers.state_dict())
    rows = torch.randn(5, 4)
    for task in ("interaction", "rating"):
        torch.testing.assert_close(
            mmoe.vector(task, rows, mmoe.shared(rows)),
            bottom.vector(task, rows, bottom.shared(rows)),
        )


def test_cross_stitch_from_the_identity_is_separate_embeddings():
    stitched, separate = net("cross_stitch"), net("separate", seed=1)
    separate.load_state_dict(
        {k: v for k, v in stitched.state_dict().items() if "_mixer" not in k}, strict=True
    )
    users, items = BATCH["users"], BATCH["items"]
    torch.testing.assert_close(stitched(users, items)[0], separate(users, items)[0])
    torch.testing.assert_close(stitched(users, items)[1], separate(users, items)[1])


@pytest.mark.parametrize("form", ["", "_mlp"])
def test_ple_with_one_level_is_cgc(form):
    cgc, ple = net("cgc" + form, experts=2), net("ple" + form, seed=1, experts=2, levels=1)
    ple.load_state_dict(cgc.state_dict())
    torch.testing.assert_close(
        cgc(BATCH["users"], BATCH["items"])[1], ple(BATCH["users"], BATCH["items"])[1]
    )
    assert len(net("ple_mlp", levels=3).mixer.user_mixer.levels) == 3


@pytest.mark.parametrize("sharing", ARCHITECTURES)
@pytest.mark.parametrize("tasks", [TWO, THREE], ids=["2 tasks", "3 tasks"])
def test_per_task_copies_give_the_gradients_of_one_backward_pass(sharing, tasks):
    """With fixed weights, taking each task's gradient on what the tasks share and summing
    them changes nothing: every architecture's shared part is wired through the copies."""
    weights = dict(zip(tasks, (0.7, 0.2, 0.1), strict=False))
    grads = []
    for diagnostics in (False, True):
        model = net(sharing, tasks=tasks)
        module = RecommenderModule(
            model,
            objective=Objective(tasks_named(*tasks)),
            weighting=FixedWeighting(weights),
            diagnostics=diagnostics,
        )
        module.engine.step(BATCH, torch.Tensor.backward)
        grads.append({k: p.grad for k, p in model.named_parameters() if p.grad is not None})
        assert module.task_gradients == diagnostics
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


def test_experts_left_null_take_each_architectures_default():
    """An embedding-table row: its experts' rows, then its gates' logits (zero at the start)."""
    dim, tasks = 4, 2
    for sharing, tables, gates in (("mmoe", 2, 2 * 2), ("cgc", 1 + tasks, 2 * 2)):
        model = net(sharing, experts=None)
        assert model.mixer.table("user", "interaction").embedding_dim == dim * tables + gates
        assert model.mixer.table("user", "interaction").weight[:, dim * tables :].abs().sum() == 0
    assert net("mmoe_mlp", experts=None).mixer.user_mixer.experts.count == 4


def test_bad_architecture_settings_are_refused():
    with pytest.raises(ConfigError, match="model.net.sharing=moe is not an architecture"):
        net("moe")
    with pytest.raises(ConfigError, match=r"experts=0 is not valid: .* or null \(the architecture"):
        net("mmoe", experts=0)
    with pytest.raises(ConfigError, match="contradicts model.embedding_sharing=false"):
        multitask_net(DataInfo(5, 9), 4, (12, 8), embedding_sharing=False, sharing="mmoe")


def test_the_study_sweeps_every_architecture_and_each_job_passes_validation():
    from hydra import compose, initialize_config_module
    from omegaconf import open_dict

    from mtrec.models.mixers import SHARINGS
    from mtrec.validation import validate

    with initialize_config_module("mtrec.conf", version_base="1.3"):
        study = compose("train", overrides=["experiment=mtl_study"], return_hydra_config=True)
        swept = study.hydra.sweeper.params["model.net.sharing"].split(",")
        assert set(SHARINGS) - set(swept) == {"items"}  # items: a halfway shared, left out
        for sharing in swept:
            cfg = compose(
                "train",
                overrides=[
                    "experiment=mtl_study",
                    f"model.net.sharing={sharing}",
                    "weighting=upgrad",
                ],
            )
            with open_dict(cfg):
                cfg.paths.output_dir = "unused"
            validate(cfg)
    with initialize_config_module("mtrec.conf", version_base="1.3"):
        bad = compose("train", overrides=["model.net.sharing=moe"])
        with pytest.raises(ConfigError, match="model.net.sharing=moe is not an architecture"):
            validate(bad)


def test_the_dense_experts_fixes_by_hand():
    """HoME's expert normalisation (a layer norm, then Swish) and PEPNet's gate unit
    2 sigmoid(W e) * e, on rows small enough to compute by hand."""
    from mtrec.models.sharing import Experts, GatedResidual

    experts = Experts(2, 1, normalised=True)
    with torch.no_grad():
        experts.layer.weight.copy_(torch.eye(2))
        experts.layer.bias.zero_()
    # (3, 1): mean 2, deviation 1, normalised (1, -1) (eps aside); silu(x) = x sigmoid(x)
    out = experts(torch.tensor([[3.0, 1.0]]))[0, 0]
    silu = [1 / (1 + math.exp(-1)), -1 / (1 + math.exp(1))]
    assert out.tolist() == pytest.approx(silu, abs=1e-4)
    residual = GatedResidual(2, ("interaction",))
    with torch.no_grad():
        residual.gates["interaction"].weight.zero_()
        residual.gates["interaction"].bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    # 2 sigmoid(0) = 1 and 2 sigmoid(log 3) = 2 * 3/4 = 1.5
    assert residual("interaction", torch.tensor([[2.0, 4.0]]))[0].tolist() == pytest.approx(
        [2.0, 6.0]
    )
