"""The docs' table of ``experiment=best`` beside the single-task anchors, from sweep folders.

One row per setting of each sweep (its runs over the split seeds as mean ± sd): test MRR per
interaction, HR@10 and NDCG@10 (the interaction head), test RMSE (the rating head), and for
multi-task runs Δm against their own single-task twins and ``delta_m_best`` against the best
twins of the sweep (validation metrics, as the sweep summary computes them); like's AUC for
runs with the like task. Then whether a multi-task setting meets the goal on test (mean over
its splits), each setting split by split, and each multi-task setting against the anchors of
the same splits (EASE's MRR per interaction, biased MF's RMSE).

    python benchmarks/best.py outputs/sweeps/best/<date_time>_<token> \
        outputs/sweeps/best_anchors/<date_time>_<token> ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from mtl_study import cell  # the benchmarks folder is on the path of its scripts
from mtrec.runs import tables, twins

GOAL_MRR, GOAL_RMSE = 0.130, 0.880
COLUMNS = {
    "test/mrr_interaction": ".4f",
    "test/hr@10": ".4f",
    "test/ndcg@10": ".4f",
    "test/rmse": ".4f",
    "test/auc": ".4f",
    "delta_m": "+.1f",
    "delta_m_best": "+.1f",
}

TWIN_COLUMNS = {"interaction": list(COLUMNS)[:3], "rating": ["test/rmse"], "like": ["test/auc"]}
PER_SPLIT = {
    "test/mrr_interaction": ".4f",
    "test/rmse": ".4f",
    "test/auc": ".4f",
    "delta_m_best": "+.2f",
}
ANCHORS = {  # each head's anchor, and the side of it a win is on
    "test/mrr_interaction": ("model=ease", "above"),
    "test/rmse": ("model=biased_mf", "below"),
}


def settings(sweep: Path) -> list[tuple[str, pd.DataFrame]]:
    """Each setting of a sweep (its swept keys but the split seed, and the model) with the
    final metrics of its completed runs, one row per split."""
    jobs, keys = tables.read_sweep(sweep)
    deltas = {"delta_m": tables.delta_ms(jobs), "delta_m_best": tables.delta_ms_best(jobs)}
    found: dict[str, list[dict]] = {}
    for position, job in enumerate(jobs):
        if job.status != "completed":
            continue
        swept = [k for k in keys if not tables.is_seed(k) and not twins.is_weighting_key(k)]
        setting = [f"{k}={job.overrides[k]}" for k in ["model", *swept] if k in job.overrides]
        twin = twins.twin_task(job.overrides)
        label = ", ".join([*setting, f"{twin} twin"] if twin else setting)
        final = job.metrics.get("final", {})
        if twin:  # a twin's other heads are untrained: their metrics say nothing
            final = {k: v for k, v in final.items() if k in TWIN_COLUMNS.get(twin, ())}
        split = [job.overrides[k] for k in keys if tables.is_seed(k) and k in job.overrides]
        row = {**final, "twin": twin, "split": ",".join(map(str, split))}
        row |= {column: values[position] for column, values in deltas.items()}
        found.setdefault(f"{sweep.parent.name}: {label or 'multi-task'}", []).append(row)
    return [(label, pd.DataFrame(rows)) for label, rows in found.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", type=Path, nargs="+")
    args = parser.parse_args()
    found = [setting for sweep in args.sweeps for setting in settings(sweep)]
    heads = ["setting", "splits", *COLUMNS]
    print("| " + " | ".join(heads) + " |")
    print("|" + "---|" * len(heads))
    goal = []
    for label, rows in found:
        cells = [cell(rows[c], s) if c in rows else "" for c, s in COLUMNS.items()]
        print(f"| {label} | {len(rows)} | " + " | ".join(cells) + " |")
        multi = rows["twin"].isna().all()
        if multi and "test/rmse" in rows and "test/mrr_interaction" in rows:
            mrr, rmse = rows["test/mrr_interaction"].mean(), rows["test/rmse"].mean()
            if pd.notna(mrr) and pd.notna(rmse):
                met = mrr >= GOAL_MRR and rmse <= GOAL_RMSE
                goal.append(f"{label}: {mrr:.4f} / {rmse:.4f} ({'met' if met else 'not met'})")
    print(f"\ngoal, MRR per interaction >= {GOAL_MRR} and RMSE <= {GOAL_RMSE} (test means):")
    print("\n".join(f"  {line}" for line in goal) or "  no multi-task setting")
    per_split(found)


def per_split(found: list[tuple[str, pd.DataFrame]]) -> None:
    """Each setting's values split by split, and each multi-task setting against the
    anchors of the same splits (EASE on ranking, biased MF on ratings)."""
    print("\n| setting | split | " + " | ".join(PER_SPLIT) + " |")
    print("|" + "---|" * (len(PER_SPLIT) + 2))
    by_split = {}
    for label, rows in found:
        for _, row in rows.sort_values("split").iterrows():
            values = [
                format(row[c], f) if pd.notna(row.get(c)) else "" for c, f in PER_SPLIT.items()
            ]
            print(f"| {label} | {row['split']} | " + " | ".join(values) + " |")
        by_split[label] = rows.set_index("split")
    anchors = {
        metric: next((rows for label, rows in by_split.items() if name in label), None)
        for metric, (name, _) in ANCHORS.items()
    }
    for label, rows in by_split.items():
        if not rows["twin"].isna().all() or any(name in label for name, _ in ANCHORS.values()):
            continue
        for metric, (name, side) in ANCHORS.items():
            anchor = anchors[metric]
            if anchor is None or metric not in rows or metric not in anchor:
                continue
            ours, theirs = rows[metric].align(anchor[metric], join="inner")
            wins = (ours > theirs) if side == "above" else (ours < theirs)
            print(
                f"{label}: {metric} {side} {name}'s on {int(wins.sum())} of {len(ours)} splits; "
                f"mean {ours.mean():.4f} against {theirs.mean():.4f}"
            )


if __name__ == "__main__":
    main()
