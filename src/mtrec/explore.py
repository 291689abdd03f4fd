"""``mtrec-explore``: look inside a trained model, with movie titles.

    mtrec-explore <checkpoint> biases [--k 10]          items with the largest and smallest bias
    mtrec-explore <checkpoint> similar "Star Wars"      nearest items by cosine similarity
    mtrec-explore <checkpoint> recommend 42             a user's top items, unrated ones only

Movies are given by MovieLens id or by a piece of their title; users by MovieLens id. Add
``--json`` for machine-readable output.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from mtrec.evaluate import run_config, run_folder
from mtrec.train import build


class ExploreError(SystemExit):
    """A bad argument: the message says what was wrong and what would work."""


@dataclass
class Trained:
    """A trained net with the id maps and titles of the data it was trained on."""

    net: torch.nn.Module
    datamodule: object
    tasks: tuple = ()  # the Task objects it was trained on

    @classmethod
    def load(cls, checkpoint: Path) -> Trained:
        if not checkpoint.is_file():
            raise ExploreError(f"mtrec-explore: checkpoint {checkpoint} is not a file.")
        cfg = run_config(run_folder(checkpoint), [])
        datamodule, module = build(cfg)
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        module.on_load_checkpoint(saved)  # what Lightning runs before loading: old key names
        module.load_state_dict(saved["state_dict"])
        return cls(module.net.eval(), datamodule, module.tasks)

    @property
    def raw_item_ids(self):
        return self.datamodule.vocabulary.item_ids

    @cached_property
    def titles(self) -> list[str]:
        metadata = self.datamodule.item_metadata.set_index("item").title
        return [str(metadata.get(i, f"item {i}")) for i in self.raw_item_ids]

    def find_item(self, query: str) -> int:
        """The index of a movie given by MovieLens id or by a piece of its title."""
        titles = self.titles
        if query.isdigit():
            matches = [int(i) for i in (self.raw_item_ids == int(query)).nonzero()[0]]
        else:
            exact = [i for i, t in enumerate(titles) if t.lower() == query.lower()]
            matches = exact or [i for i, t in enumerate(titles) if query.lower() in t.lower()]
        if not matches:
            raise ExploreError(
                f"mtrec-explore: no movie matches {query!r}. Fix: give a MovieLens "
                "id or a piece of the title, e.g. 'Star Wars'."
            )
        counts = torch.bincount(self.datamodule.split.train.items, minlength=len(titles))
        return max(matches, key=lambda i: int(counts[i]))  # the most rated of the matches

    def find_user(self, query: str) -> int:
        users = self.datamodule.vocabulary.user_ids
        found = (users == int(query)).nonzero()[0] if query.isdigit() else []
        if len(found) == 0:
            raise ExploreError(
                f"mtrec-explore: user {query!r} is not in the data. "
                f"Fix: give a MovieLens user id ({users.min()}..{users.max()})."
            )
        return int(found[0])


def item_rows(trained: Trained, indices, values, value_name: str) -> list[dict]:
    titles, genres = trained.titles, trained.datamodule.item_metadata.set_index("item").genres
    return [
        {
            "id": int(trained.raw_item_ids[i]),
            "title": titles[i],
            "genres": "|".join(genres.get(trained.raw_item_ids[i], ())),
            value_name: round(float(v), 4),
        }
        for i, v in zip(indices, values, strict=True)
    ]


@torch.no_grad()
def biases(trained: Trained, k: int) -> dict:
    table = getattr(trained.net, "item_biases", None)
    if table is None:
        raise ExploreError(
            f"mtrec-explore: {type(trained.net).__name__} has no item bias. "
            "Fix: use a model with item biases (model=multitask or biased_dot)."
        )
    values = table.weight.squeeze(-1)
    top, bottom = values.topk(k), values.topk(k, largest=False)
    return {
        "largest": item_rows(trained, top.indices.tolist(), top.values.tolist(), "bias"),
        "smallest": item_rows(trained, bottom.indices.tolist(), bottom.values.tolist(), "bias"),
    }


@torch.no_grad()
def similar(trained: Trained, query: str, k: int) -> dict:
    item = trained.find_item(query)
    vectors = torch.nn.functional.normalize(trained.net.item_vectors(), dim=-1)
    similarity = vectors @ vectors[item]
    similarity[item] = float("-inf")
    top = similarity.topk(k)
    return {
        "movie": item_rows(trained, [item], [1.0], "similarity")[0],
        "similar": item_rows(trained, top.indices.tolist(), top.values.tolist(), "similarity"),
    }


@torch.no_grad()
def recommend(trained: Trained, query: str, k: int) -> dict:
    user, net = trained.find_user(query), trained.net
    kinds = {task.head_kind.name: task.name for task in reversed(trained.tasks)}
    if "ranking" in kinds:
        scores = net.score_all_items(torch.tensor([user]))[0]
        value_name = "score"
    elif "score" in kinds and not net.needs_history:
        items = torch.arange(trained.datamodule.num_items)
        scores = net.head(kinds["score"])(torch.full_like(items, user), items)
        value_name = "predicted rating"
    else:
        raise ExploreError(
            "mtrec-explore: recommend needs a model that scores items without a "
            "history (any model but sequence_lstm)."
        )
    split = trained.datamodule.split
    parts = [p for p in (split.train, split.val, split.test) if p is not None]
    rated = torch.cat([p.items[p.users == user] for p in parts])
    scores[rated] = float("-inf")  # rated: not recommended
    top = scores.topk(k)
    return {
        "user": int(trained.datamodule.vocabulary.user_ids[user]),
        "rated": len(rated),
        "recommendations": item_rows(
            trained, top.indices.tolist(), top.values.tolist(), value_name
        ),
    }


def print_rows(title: str, rows: list[dict]) -> None:
    print(title)
    value = [key for key in rows[0] if key not in ("id", "title", "genres")][0] if rows else ""
    for rank, row in enumerate(rows, 1):
        print(f"  {rank:>2}. {row['title'][:48]:<48} {row[value]:>8.4f}   {row['genres']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="mtrec-explore",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="a checkpoint written by mtrec-train")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("biases", help="items with the largest and smallest learned bias")
    by_movie = commands.add_parser("similar", help="the most similar items (cosine similarity)")
    by_movie.add_argument("movie", help="MovieLens id or a piece of the title")
    by_user = commands.add_parser("recommend", help="a user's top items, excluding rated ones")
    by_user.add_argument("user", help="MovieLens user id")
    for command in commands.choices.values():
        command.add_argument("--k", type=int, default=10, help="how many items (default 10)")
        command.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)

    trained = Trained.load(args.checkpoint)
    if args.command == "biases":
        result = biases(trained, args.k)
    elif args.command == "similar":
        result = similar(trained, args.movie, args.k)
    else:
        result = recommend(trained, args.user, args.k)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    elif args.command == "biases":
        print_rows("Largest item biases:", result["largest"])
        print_rows("Smallest item biases:", result["smallest"])
    elif args.command == "similar":
        print_rows(f"Most similar to {result['movie']['title']}:", result["similar"])
    else:
        print_rows(
            f"Top {args.k} for user {result['user']} ({result['rated']} rated movies left out):",
            result["recommendations"],
        )


if __name__ == "__main__":
    main()
