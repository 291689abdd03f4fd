"""The table mixtures (``mmoe``, ``cgc``, ``ple``, ``stem``) against their first form, kept
here as the reference: each gate's experts concatenated and reduced over, the softmax's
shift by the row's maximum inside autograd, held-out ids mixed once each. The same vectors,
gradients, training steps (eager, per-task copies, compiled whole) and evaluation."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from conftest import tasks_named
from mtrec.data.info import DataInfo
from mtrec.models import MultiTaskNet
from mtrec.models.embedding_experts import EmbeddingExperts
from mtrec.models.mixers.mixtures import TableMixture
from mtrec.models.sharing import softmax
from mtrec.mtl.objective import Objective
from mtrec.mtl.step import LOSS, StepEngine
from mtrec.mtl.weighting import FixedWeighting, PCGrad
from mtrec.training.compiled_step import CompiledStep

USERS, ITEMS, BATCH = 30, 40, 16
TWO, THREE = ("interaction", "rating"), ("interaction", "rating", "like")


class ConcatenatedExperts(EmbeddingExperts):
    """The first form of the mixing: a gate's experts concatenated, then reduced over."""

    def _seen_rows(self, task, rows, shared):
        def own(t):
            start = (self.shared_count + self.tasks.index(t) * self.own_count) * self.dim
            return rows[..., start : start + self.own_count * self.dim]

        if not self.stop_gradient:
            return torch.cat([shared, own(task)], -1)
        return torch.cat(
            [shared, *(own(t) if t == task else own(t).detach() for t in self.tasks)], -1
        )

    def _reduced(self, gate, rows, seen):
        shares = softmax(rows[..., self.gate_columns[gate]])
        experts = seen.unflatten(-1, (shares.shape[-1], self.dim))
        return shares, (shares.unsqueeze(-1) * experts).sum(-2)

    def vector(self, task, rows, shared=None):
        shared = self.shared(rows) if shared is None else shared
        if self.levels == 1:
            return self._reduced(task, rows, self._seen_rows(task, rows, shared))[1]
        return self._every_level(rows, shared)[1][task]

    def _every_level(self, rows, shared):
        gates, outputs = {}, {}
        for task in self.tasks:
            name = f"level0/{task}"
            seen = self._seen_rows(task, rows, shared)
            gates[name], outputs[task] = self._reduced(name, rows, seen)
        tables = rows[..., self.shared_count * self.dim : self.experts * self.dim]
        every = torch.cat([shared, tables], -1)
        gates["level0/shared"], common = self._reduced("level0/shared", rows, every)
        for number in range(1, self.levels):
            below = dict(outputs)
            for task in self.tasks:
                name = f"level{number}/{task}"
                seen = torch.cat([below[task], common], -1)
                gates[name], outputs[task] = self._reduced(name, rows, seen)
            if number < self.levels - 1:
                name = f"level{number}/shared"
                stacked = torch.cat([*below.values(), common], -1)
                gates[name], common = self._reduced(name, rows, stacked)
        return gates, outputs

    def gates(self, rows):
        shared = self.shared(rows)
        if self.levels > 1:
            return self._every_level(rows, shared)[0]
        return {
            task: self._reduced(task, rows, self._seen_rows(task, rows, shared))[0]
            for task in self.tasks
        }


class FirstTableMixture(TableMixture):
    """The mixture as first written: the reference experts, held-out ids mixed once each."""

    def __init__(self, *args, **settings):
        super().__init__(*args, **settings)
        new = self.user_mixer
        self.user_mixer = self.item_mixer = ConcatenatedExperts(
            new.dim, new.shared_count, new.own_count, new.tasks, new.levels, new.stop_gradient
        )

    def vector(self, side, task, ids, rows=None):
        unique = not self.training and rows is None
        if unique:
            ids, position = ids.unique(return_inverse=True)
        copy = rows[side] if rows is not None and side in rows else None
        vectors = self.side_mixer(side).vector(task, self.lookup(side, task, ids), copy)
        return vectors[position] if unique else vectors


KINDS = {  # sharing -> the mixture's settings (as mixer_factory gives them)
    "mmoe": {"experts": 2},
    "cgc": {"experts": 1, "task_experts": 2},
    "ple": {"experts": 1, "levels": 3},
    "stem": {"experts": 1, "task_experts": 2},
}


def nets(sharing: str, tasks=TWO) -> tuple[MultiTaskNet, MultiTaskNet]:
    """The mixture ``sharing`` and its first form, with the same parameters."""
    made = []
    for mixture in (TableMixture, FirstTableMixture):
        torch.manual_seed(0)
        factory = partial(mixture, kind=sharing, **KINDS[sharing])
        net = MultiTaskNet(
            DataInfo(USERS, ITEMS), 4, (12, 8), sharing=factory, tasks=tasks_named(*tasks)
        )
        made.append(net)
    new, first = made
    first.load_state_dict(new.state_dict())
    assert type(first.mixer.user_mixer) is ConcatenatedExperts
    return new, first


def batches(count: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "users": torch.randint(0, USERS, (BATCH,), generator=generator),
            "items": torch.randint(0, ITEMS, (BATCH,), generator=generator),
            "negatives": torch.randint(0, ITEMS, (BATCH, 2), generator=generator),
            "ratings": torch.randint(1, 6, (BATCH,), generator=generator).float(),
        }
        for _ in range(count)
    ]


def engine_and_adam(net, tasks, weighting):
    engine = StepEngine(net, Objective(tasks_named(*tasks)), weighting)
    return engine, torch.optim.Adam(net.parameters(), lr=0.01)


def separate_step(engine, optimizer, batch):
    optimizer.zero_grad()
    losses = engine.step(batch, torch.Tensor.backward)
    optimizer.step()
    return losses


def assert_same_parameters(net, first):
    for (name, p), q in zip(net.named_parameters(), first.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def assert_same_evaluation(net, first):
    """Every held-out output the runs log: the ranking, each head, the gates, the vectors."""
    net.eval(), first.eval()
    users = torch.arange(USERS).repeat(2)  # held-out rows repeat ids
    items = torch.randint(0, ITEMS, users.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(net.score_all_items(users), first.score_all_items(users))
        for task in net.tasks:
            torch.testing.assert_close(net.head(task)(users, items), first.head(task)(users, items))
        torch.testing.assert_close(net.gate_use(), first.gate_use())
        torch.testing.assert_close(net.vectors(), first.vectors())


SETTINGS = [  # (dim, shared, own, tasks, levels, stop_gradient)
    (3, 2, 0, TWO, 1, False),  # mmoe
    (3, 1, 2, THREE, 1, False),  # cgc
    (3, 2, 1, THREE, 1, True),  # stem
    (3, 1, 1, TWO, 2, False),  # ple
    (3, 2, 1, THREE, 3, False),  # ple, three levels: a shared gate above level 0
]


@pytest.mark.parametrize("settings", SETTINGS, ids=["mmoe", "cgc", "stem", "ple", "ple3"])
@pytest.mark.parametrize("copy", [False, True], ids=["rows", "a task's copy"])
def test_each_vector_and_its_gradients_equal_the_first_forms(settings, copy):
    new, first = EmbeddingExperts(*settings), ConcatenatedExperts(*settings)
    rows = torch.randn(5, 2, new.columns, generator=torch.Generator().manual_seed(0))
    rows.requires_grad_()
    for task in new.tasks:
        received = []
        for mixture in (new, first):
            shared = new.shared(rows).detach().clone().requires_grad_() if copy else None
            vector = mixture.vector(task, rows, shared)
            weights = torch.linspace(-1, 1, vector.numel()).view_as(vector)
            inputs = [rows, shared] if copy else [rows]
            received.append((vector, *torch.autograd.grad((vector * weights).sum(), inputs)))
        for got, expected in zip(*received, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=task)
    torch.testing.assert_close(new.gates(rows), first.gates(rows))


@pytest.mark.parametrize("sharing", list(KINDS))
@pytest.mark.parametrize("weighting", ["fixed", "pcgrad"])
def test_training_steps_and_evaluation_equal_the_first_forms(sharing, weighting):
    """Eager steps: one backward pass (fixed weights), or each task's gradient on its own
    copy of the shared experts' rows, combined (PCGrad)."""
    tasks = THREE if weighting == "pcgrad" else TWO
    make = PCGrad if weighting == "pcgrad" else partial(FixedWeighting, {"interaction": 0.9})
    net, first = nets(sharing, tasks)
    losses = []
    for model in (net, first):
        engine, optimizer = engine_and_adam(model, tasks, make())
        torch.manual_seed(1)  # PCGrad's order of the tasks: the same draws for both
        losses.append([separate_step(engine, optimizer, batch)[LOSS] for batch in batches(5)])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    assert_same_parameters(net, first)
    assert_same_evaluation(net, first)


@pytest.fixture
def compiler(monkeypatch):
    """The compiler on (tests run eagerly otherwise: tests/conftest.py), its caches fresh."""
    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)
    torch.compiler.reset()


@pytest.mark.parametrize(("sharing", "weighting"), [("stem", "fixed"), ("ple", "pcgrad")])
def test_the_compiled_step_equals_the_first_forms_separate_steps(compiler, sharing, weighting):
    make = PCGrad if weighting == "pcgrad" else FixedWeighting
    steps = batches(5)
    net, first = nets(sharing)
    reference, reference_optimizer = engine_and_adam(first, TWO, make())
    torch.manual_seed(1)  # PCGrad's order of the tasks: the same draws for both
    for batch in steps:
        expected = separate_step(reference, reference_optimizer, batch)
    engine, optimizer = engine_and_adam(net, TWO, make())
    torch.manual_seed(1)
    separate_step(engine, optimizer, steps[0])  # builds Adam's state, as in a run
    step = CompiledStep(engine, optimizer)
    torch._dynamo.utils.counters.clear()
    for batch in steps[1:]:
        losses = step.step(batch)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # compiled, no breaks
    assert not torch._dynamo.utils.counters["graph_break"]
    torch.testing.assert_close(losses[LOSS], expected[LOSS].detach(), rtol=1e-5, atol=1e-6)
    assert_same_parameters(net, first)
