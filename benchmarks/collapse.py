"""Do the mixtures rank? The table of ``experiment=collapse``, and what the collapse
diagnostics cost.

From the sweep folder: per architecture (and fix of the dense experts), trained on
interactions alone for the same number of epochs, the validation per-interaction MRR (the
last epoch's and the best epoch's) and the effective rank of the user and item vectors the
interaction head reads at the last epoch, each as a ratio to ``shared``'s, and whether the
architecture passes: MRR ≥ 0.95 × and effective rank ≥ 0.5 × ``shared``'s. With several
split seeds, the mean over them.

    mtrec-train experiment=collapse
    python benchmarks/collapse.py outputs/sweeps/collapse/<date_time>_<token>
    mtrec-train experiment=collapse name=collapse_fixes model.net.sharing=ple_mlp,mmoe_mlp \
        model.net.expert_norm=true,false model.net.residual=true,false
    python benchmarks/collapse.py outputs/sweeps/collapse/<...> outputs/sweeps/collapse_fixes/<...>
    python benchmarks/collapse.py --cost    # ms per epoch of the diagnostics, per architecture
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from mtrec.data.info import DataInfo
from mtrec.models import MultiTaskNet
from mtrec.models.mixers import SHARINGS
from mtrec.mtl.collapse import collapse
from mtrec.mtl.tasks import reference_tasks
from mtrec.runs import tables

MRR = "val/mrr_interaction"
RANKS = ("mtl/effective_rank/user/interaction", "mtl/effective_rank/item/interaction")
FIXES = ("model.net.expert_norm", "model.net.residual")


def architecture(values: dict[str, str]) -> str:
    name = values.get("model.net.sharing", "shared")
    fixes = [key.rsplit(".", 1)[1] for key in FIXES if values.get(key, "").lower() == "true"]
    return "+".join([name, *fixes])


def rows(sweeps: list[Path]) -> dict[str, list[dict[str, float]]]:
    """Per architecture, one dict of figures per completed run (split seed)."""
    found: dict[str, list[dict[str, float]]] = {}
    for job in (job for sweep in sweeps for job in tables.read_sweep(sweep)[0]):
        history = job.metrics.get("history", [])
        epochs = [epoch for epoch in history if MRR in epoch]
        if not epochs:
            continue
        last = epochs[-1]
        figures = {"epochs": last["epoch"], "mrr": last[MRR]}
        figures["best_mrr"] = max(epoch[MRR] for epoch in epochs)
        figures |= {name: last.get(name, float("nan")) for name in RANKS}
        name = architecture(job.overrides)
        found.setdefault(name, []).append(figures)
    return found


def table(found: dict[str, list[dict[str, float]]]) -> str:
    if "shared" not in found:
        raise SystemExit("no completed run of model.net.sharing=shared to compare with")
    mean = {
        name: {key: statistics.fmean(run[key] for run in runs) for key in runs[0]}
        for name, runs in found.items()
    }
    base = mean["shared"]
    lines = [
        "| architecture | runs | epochs | val MRR per interaction (last) | best | vs shared "
        "| effective rank users | items | vs shared (lower) | passes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(mean, key=lambda n: (n != "shared", -mean[n]["mrr"]))
    for name in order:
        m = mean[name]
        mrr_ratio = m["mrr"] / base["mrr"]
        rank_ratio = min(m[r] / base[r] for r in RANKS)
        passes = mrr_ratio >= 0.95 and rank_ratio >= 0.5
        lines.append(
            f"| `{name}` | {len(found[name])} | {m['epochs']:.0f} | {m['mrr']:.4f} "
            f"| {m['best_mrr']:.4f} | {mrr_ratio:.2f} | {m[RANKS[0]]:.1f} | {m[RANKS[1]]:.1f} "
            f"| {rank_ratio:.2f} | {'yes' if passes else 'no'} |"
        )
    return "\n".join(lines)


def cost(repeats: int = 20) -> str:
    """Milliseconds of one epoch's collapse diagnostics on ML-100K's shape (943 users, 1,682
    items, default sizes), per architecture: median of ``repeats`` calls after a warm-up."""
    torch.set_num_threads(1)
    lines = ["| architecture | diagnostics ms per epoch |", "|---|---|"]
    for sharing in SHARINGS:
        net = MultiTaskNet(DataInfo(943, 1682), sharing=sharing, tasks=reference_tasks())
        collapse(net.vectors())
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            collapse(net.vectors())
            seconds.append(time.perf_counter() - start)
        lines.append(f"| `{sharing}` | {1000 * statistics.median(seconds):.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweeps", nargs="*", type=Path, help="sweep folders (one has shared)")
    parser.add_argument("--cost", action="store_true", help="time the diagnostics instead")
    args = parser.parse_args()
    if args.cost:
        print(cost())
    elif not args.sweeps:
        parser.error("give the sweep folder, or --cost")
    else:
        print(table(rows(args.sweeps)))


if __name__ == "__main__":
    main()
