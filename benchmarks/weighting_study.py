"""The README's weighting-study table, from the sweep folders of ``experiment=weighting``.

Per strategy, over its seeds (mean ± sd): final and best test MRR and MSE (and the like
task's final AUC where the runs trained it: ``tasks=[interaction,rating,like]``), the last
epoch's gradient cosine, and over the run the share of conflicting steps and the ratio of the
rating to the interaction gradient norm; with ``--bench``, seconds per epoch relative to ``fixed``
from a saved ``make bench`` output (its weighting rows, each against ``fixed`` run just before).

    python benchmarks/weighting_study.py outputs/sweeps/weighting/<date> [...] [--bench FILE]

Diagnostics come from ``metrics.json``, or from the TensorBoard events of runs made before
they were written there.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pandas as pd

from mtrec.runs.tables import (
    Job,
    markdown_table,
    mean_sd_table,
    over_seeds,
    read_sweep,
    summary_table,
)


def diagnostics(job: Job) -> dict[str, list[float]]:
    """Each ``mtl/`` value per epoch, from metrics.json, else from the event files."""
    history = job.metrics.get("history", [])
    names = sorted({k for h in history for k in h if k.startswith("mtl/")})
    if names:
        return {n: [h[n] for h in history if n in h] for n in names}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(job.folder), size_guidance={"scalars": 0})
    events.Reload()
    return {
        n: [e.value for e in events.Scalars(n)]
        for n in events.Tags()["scalars"]
        if n.startswith("mtl/")
    }


def job_rows(sweep: Path) -> pd.DataFrame:
    jobs, keys = read_sweep(sweep)
    table = summary_table(jobs, keys)
    extra = []
    for job in jobs:
        values = diagnostics(job)
        pair = "interaction-rating"  # the reference's pair (runs before per-pair names: plain)
        cosine = values.get(f"mtl/grad_cosine/{pair}", values.get("mtl/grad_cosine", [math.nan]))
        conflict = values.get(
            f"mtl/grad_conflict_share/{pair}", values.get("mtl/grad_conflict_share", [math.nan])
        )
        rating = values.get("mtl/grad_norm/rating", [math.nan])
        interaction = values.get("mtl/grad_norm/interaction", [math.nan])
        ratios = [r / i for r, i in zip(rating, interaction, strict=True) if i > 0]
        extra.append(
            {
                "final cosine": cosine[-1],
                "conflicting steps": sum(conflict) / len(conflict),
                "rating / interaction norm": sum(ratios) / len(ratios) if ratios else math.nan,
            }
        )
    return pd.concat([table, pd.DataFrame(extra)], axis=1), keys


def bench_ratios(path: Path) -> dict[str, float]:
    """``name -> s / epoch vs fixed`` from the weighting rows of a ``make bench`` output: in
    the block whose header starts with ``weighting``, each row's third number (its training
    epoch's seconds, ``fixed``'s measured just before, their ratio)."""
    ratios, block = {"fixed": 1.0}, None
    for line in path.read_text().splitlines():
        # blocks are separated by blank lines, each named by its header's first word
        fields = line.split()
        block = (block or fields[0]) if fields else None
        numbers = [f for f in fields[1:] if re.fullmatch(r"[\d.]+", f)]
        if block == "weighting" and len(numbers) >= 3:
            ratios[fields[0]] = float(numbers[2])
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--bench", type=Path, help="a saved output of make bench")
    args = parser.parse_args()
    tables, keys = zip(*(job_rows(sweep) for sweep in args.sweeps), strict=True)
    table = pd.concat(tables, ignore_index=True)
    seeds = over_seeds(table, list(keys[0]))
    seeds = seeds.sort_values("test/mrr", ascending=False)
    like = {"test/auc": "final AUC (like)"} if "test/auc" in seeds else {}  # three tasks
    columns = {
        "weighting": "`weighting=`",
        "runs": "seeds",
        "test/mrr": "final MRR",
        "test/mrr best": "best MRR",
        "test/mse": "final MSE",
        "test/mse best": "best MSE",
        **like,
        "final cosine": "cosine, last epoch",
        "conflicting steps": "conflicting steps",
        "rating / interaction norm": "rating / interaction gradient norm",
    }
    formats = {"test/mrr": ".4f", "test/mrr best": ".4f", "test/mse": ".3f"}
    formats |= {"test/mse best": ".3f", "final cosine": "+.4f", "conflicting steps": ".2f"}
    formats |= {"rating / interaction norm": ".0f", "test/auc": ".4f"}
    shown = mean_sd_table(seeds, formats)[list(columns)].rename(columns=columns)
    shown["`weighting=`"] = [f"`{name}`" for name in shown["`weighting=`"]]
    if args.bench:
        ratios = bench_ratios(args.bench)
        shown["s / epoch vs fixed"] = [
            f"{ratios[name]:.2f}" if name in ratios else "" for name in seeds["weighting"]
        ]
    print(markdown_table(shown))


if __name__ == "__main__":
    main()
