import math

import pytest
import torch

import mtrec.mtl.metrics
from conftest import tasks_named
from mtrec.data.interactions import Interactions, held_out
from mtrec.models.protocol import Ranker, Recommender
from mtrec.mtl import evaluation
from mtrec.mtl.metrics import average_ranks, held_out_ranks, ranking_metrics, user_chunks
from mtrec.mtl.tasks import metric_names


def brute_force(scores, test_pairs, seen_pairs, k=10):
    """Reference: loops over users and items, ranks with ties at their average rank."""
    scores = scores.clone()
    for u, i in seen_pairs:
        scores[u, i] = float("-inf")
    ranks, by_user = [], {}
    for u, i in test_pairs:
        row, target = scores[u].tolist(), scores[u, i].item()
        higher = sum(s > target for s in row)
        tied = sum(s == target for s in row)
        rank = higher + (tied + 1) / 2
        ranks.append(rank)
        by_user.setdefault(u, []).append(1 / rank)
    return {
        "mrr": sum(sum(v) / len(v) for v in by_user.values()) / len(by_user),
        "mrr_interaction": sum(1 / r for r in ranks) / len(ranks),
        "hr@10": sum(r <= k for r in ranks) / len(ranks),
        "ndcg@10": sum(1 / math.log2(r + 1) for r in ranks if r <= k) / len(ranks),
    }


def evaluate(net, held, *args, **kwargs):
    """The held-out metrics of the built-in tasks the test net serves (``net.heads``)."""
    return evaluation.evaluate(net, held, *args, tasks=tasks_named(*net.tasks), **kwargs)


class FixedScores(Recommender, Ranker):
    """A stand-in net whose scores and ratings are given tables."""

    head_kinds = ("ranking", "score")
    heads = ("interaction", "rating")

    def __init__(self, scores, ratings, heads=heads):
        super().__init__()
        self.scores, self.rating_table, self.built = scores, ratings, heads

    @property
    def tasks(self):
        return self.built

    def head(self, task):
        return self.ratings

    def score_all_items(self, users):
        return self.scores[users].clone()

    def ratings(self, users, items, rows=None, history=None):
        return self.rating_table[users, items]

    def item_vectors(self):
        return self.scores.T


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_brute_force_with_ties(seed):
    torch.manual_seed(seed)
    num_users, num_items = 12, 30
    scores = torch.randint(0, 6, (num_users, num_items)).float()  # many ties
    pairs = torch.randperm(num_users * num_items)[:150]
    users, items = pairs // num_items, pairs % num_items
    ratings = torch.randint(1, 6, (150,)).float()

    def part(rows):
        return Interactions(
            users[rows], items[rows], ratings[rows], torch.zeros(len(rows)), num_users, num_items
        )

    train, test = part(torch.arange(0, 120)), part(torch.arange(120, 150))
    rating_table = torch.rand(num_users, num_items) * 5
    held = held_out("test", test, train)
    metrics = evaluate(FixedScores(scores, rating_table), held)

    expected = brute_force(
        scores,
        list(zip(test.users.tolist(), test.items.tolist(), strict=True)),
        list(zip(train.users.tolist(), train.items.tolist(), strict=True)),
    )
    for name, value in expected.items():
        assert metrics[name].item() == pytest.approx(value, rel=1e-5), name
    mse = ((rating_table[test.users, test.items] - test.ratings) ** 2).mean().item()
    assert metrics["mse"].item() == pytest.approx(mse, rel=1e-5)
    assert metrics["rmse"].item() == pytest.approx(math.sqrt(mse), rel=1e-5)


def random_held_out(num_users=20, num_items=15, seed=0, heads=FixedScores.heads):
    """A net with tied scores and random ratings, and a held-out set with its known rows."""
    torch.manual_seed(seed)
    scores = torch.randint(0, 4, (num_users, num_items)).float()
    pairs = torch.randperm(num_users * num_items)[:200]
    users, items = pairs // num_items, pairs % num_items
    ratings = torch.randint(1, 6, (200,)).float()

    def part(rows):
        return Interactions(
            users[rows], items[rows], ratings[rows], torch.zeros(len(rows)), num_users, num_items
        )

    held = held_out("test", part(torch.arange(150, 200)), part(torch.arange(150)))
    return FixedScores(scores, torch.rand(num_users, num_items) * 5, heads), held


def test_evaluation_in_user_chunks_gives_the_same_ranks():
    net, held = random_held_out()
    whole = held_out_ranks(net, held)
    for max_scores in (15, 45, 100):  # 1, 3 and 6 users per chunk
        assert torch.equal(held_out_ranks(net, held, max_scores=max_scores), whole)


def test_average_rank_of_ties_and_chunks():
    scores = torch.tensor([[3.0, 1.0, 3.0, 3.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    rows, items = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 4, 2])
    for chunk in (1, 2, 4096):
        ranks = average_ranks(scores, rows, items, chunk_size=chunk)
        assert ranks.tolist() == [2.0, 4.0, 5.0, 3.0]


def test_the_compiled_ranking_pass_gives_the_same_ranks(monkeypatch):
    """Large chunks take one compiled pass (no copy of each row's scores): the same ranks,
    ties and filtered items included, as the eager chunked pass."""
    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)  # set for all tests in conftest
    torch.compiler.reset()
    torch._dynamo.utils.counters.clear()
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (40, 300), generator=generator).float()  # many ties
    scores[torch.rand(40, 300, generator=generator) < 0.1] = float("-inf")  # known items
    rows = torch.sort(torch.randint(40, (200,), generator=generator)).values
    items = torch.randint(300, (200,), generator=generator)
    eager = average_ranks(scores, rows, items, chunk_size=7)
    monkeypatch.setattr(mtrec.mtl.metrics, "FUSED_ABOVE", 0)
    fused = average_ranks(scores, rows, items)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert torch.equal(fused, eager)


def test_mrr_averages_over_users_first():
    ranks = torch.tensor([1.0, 4.0, 2.0])  # user 0 has two test items, user 1 one
    metrics = ranking_metrics(ranks, torch.tensor([0, 0, 1]), num_users=2)
    assert metrics["mrr"].item() == pytest.approx(((1 + 0.25) / 2 + 0.5) / 2)
    assert metrics["mrr_interaction"].item() == pytest.approx((1 + 0.25 + 0.5) / 3)


def test_metrics_accumulated_over_user_chunks_equal_one_chunk():
    net, held = random_held_out()
    whole = evaluate(net, held)
    assert len(list(user_chunks(held))) == 1
    for max_scores in (15, 45, 100):  # 1, 3 and 6 users per chunk
        assert len(list(user_chunks(held, max_scores))) > 1
        chunked = evaluate(net, held, max_scores=max_scores)
        assert chunked.keys() == whole.keys()
        for name, value in whole.items():
            assert chunked[name].item() == pytest.approx(value.item(), rel=1e-6), name


def test_chunks_cover_every_user_row_and_known_item_once():
    _, held = random_held_out()
    for world_size in (1, 2, 3):
        shares = [list(user_chunks(held, 45, r, world_size)) for r in range(world_size)]
        assert all(shares)  # every rank has work
        chunks = sorted((c for share in shares for c in share), key=lambda c: c.users.start)
        for name, length in (
            ("users", len(held.eval_users)),
            ("rows", len(held.items)),
            ("seen", len(held.seen_items)),
        ):
            spans = [getattr(c, name) for c in chunks]
            assert spans[0].start == 0 and spans[-1].stop == length
            assert all(a.stop == b.start for a, b in zip(spans, spans[1:], strict=False))


class FromHistory(Recommender):
    """A rating-only stand-in whose rating reads the row's history of items."""

    head_kinds = ("score",)
    heads = tasks = ("rating",)

    def head(self, task):
        return self.ratings

    def ratings(self, users, items, rows=None, history=None):
        return history.float().mean(1) + items

    def item_vectors(self):
        return torch.zeros(1, 1)


def test_histories_follow_their_rows_into_the_chunks():
    torch.manual_seed(0)
    users, items = torch.randint(0, 20, (200,)), torch.randint(0, 15, (200,))
    train, test = (
        Interactions(users[r], items[r], torch.rand(len(r)) * 5, r.float(), 20, 15)
        for r in (torch.arange(150), torch.arange(150, 200))
    )
    held = held_out("test", test, train, history_length=3)
    expected = ((held.history.float().mean(1) + held.items - held.ratings) ** 2).mean()
    for max_scores in (15, 45, 1 << 25):
        metrics = evaluate(FromHistory(), held, max_scores=max_scores)
        assert metrics["mse"].item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("heads", [("interaction", "rating"), ("interaction",), ("rating",)])
def test_metric_names_are_those_of_the_tasks(heads):
    net, held = random_held_out(heads=heads)
    metrics = evaluate(net, held, k=5)
    assert tuple(metrics) == metric_names(tasks_named(*heads), top_k=5)


def test_a_share_of_the_chunks_needs_a_process_group():
    net, held = random_held_out()
    with pytest.raises(ValueError, match="torch.distributed"):
        evaluate(net, held, rank=0, world_size=2)


def evaluate_on_rank(rank, world_size, store, out, net, held):
    """One DDP rank: its share of the chunks, metrics of the whole set after the sync."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world_size
    )
    try:
        runs = {
            max_scores: evaluate(net, held, max_scores=max_scores, rank=rank, world_size=world_size)
            for max_scores in (15, 45, 1 << 25)
        }
        torch.save(runs, f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.xdist_group("gloo")  # process groups one at a time: their sockets never meet
def test_ranks_sharing_the_chunks_give_the_metrics_of_one_process(tmp_path):
    net, held = random_held_out()
    one_process = evaluate(net, held)
    world_size = 2
    torch.multiprocessing.spawn(
        evaluate_on_rank,
        args=(world_size, tmp_path / "store", tmp_path / "metrics", net, held),
        nprocs=world_size,
    )
    for rank in range(world_size):
        runs = torch.load(tmp_path / f"metrics.{rank}")
        for max_scores, metrics in runs.items():
            assert metrics.keys() == one_process.keys()
            for name, value in one_process.items():
                assert metrics[name].item() == pytest.approx(value.item(), rel=1e-6), (
                    max_scores,
                    name,
                )
