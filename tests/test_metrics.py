import math

import pytest
import torch

from mtrec.data.interactions import Interactions, held_out
from mtrec.metrics import average_ranks, evaluate, held_out_ranks, ranking_metrics


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


class FixedScores(torch.nn.Module):
    """A stand-in net whose scores and ratings are given tables."""

    heads = ("interaction", "rating")

    def __init__(self, scores, ratings):
        super().__init__()
        self.scores, self.rating_table = scores, ratings

    def score_all_items(self, users):
        return self.scores[users].clone()

    def ratings(self, users, items):
        return self.rating_table[users, items]


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


def test_evaluation_in_user_chunks_gives_the_same_ranks():
    torch.manual_seed(0)
    scores = torch.randint(0, 4, (20, 15)).float()
    pairs = torch.randperm(300)[:200]
    users, items = pairs // 15, pairs % 15

    def part(rows):
        return Interactions(
            users[rows], items[rows], torch.ones(len(rows)), torch.zeros(len(rows)), 20, 15
        )

    held = held_out("test", part(torch.arange(150, 200)), part(torch.arange(150)))
    net = FixedScores(scores, torch.zeros(20, 15))
    whole = held_out_ranks(net, held)
    for max_scores in (15, 45, 100):  # 1, 3 and 6 users per chunk
        assert torch.equal(held_out_ranks(net, held, max_scores=max_scores), whole)


def test_average_rank_of_ties_and_chunks():
    scores = torch.tensor([[3.0, 1.0, 3.0, 3.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    rows, items = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 4, 2])
    for chunk in (1, 2, 4096):
        ranks = average_ranks(scores, rows, items, chunk_size=chunk)
        assert ranks.tolist() == [2.0, 4.0, 5.0, 3.0]


def test_mrr_averages_over_users_first():
    ranks = torch.tensor([1.0, 4.0, 2.0])  # user 0 has two test items, user 1 one
    metrics = ranking_metrics(ranks, torch.tensor([0, 0, 1]), num_users=2)
    assert metrics["mrr"].item() == pytest.approx(((1 + 0.25) / 2 + 0.5) / 2)
    assert metrics["mrr_interaction"].item() == pytest.approx((1 + 0.25 + 0.5) / 3)
