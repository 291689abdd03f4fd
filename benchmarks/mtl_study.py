"""The README's trade-off study table, from the sweep folder of ``experiment=mtl_study``.

Per architecture and weighting, over the split seeds (mean ± sd): test MRR (per user and per
interaction), test RMSE, the effective rank of the user vectors the interaction head reads (the
last epoch's), Δm against the architecture's single-task twins and ``delta_m_best`` against
the best twin of each task in the sweep (validation metrics, as the summary computes them)
and on how many splits each is below 0; each
architecture's twins as one row (the interaction twin's MRR, the rating twin's RMSE, with
three tasks the like twin's test AUC). Then
the runs that meet the standing goal on test, and the setting with the best mean
``val/combined`` (the checkpoint criterion).

    python benchmarks/mtl_study.py outputs/sweeps/mtl_study/<date_time>_<token>
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from mtrec.runs import tables, twins

SHARING, WEIGHTING, LAMBDA, SPLIT = (
    "model.net.sharing",
    "weighting",
    "model.factorization_weight",
    "data.split_seed",
)
RANK = "mtl/effective_rank/user/interaction"  # the last epoch's, of the selected run
COLUMNS = {
    "test/mrr": ".4f",
    "test/mrr_interaction": ".4f",
    "test/rmse": ".3f",
    RANK: ".1f",
    "delta_m": "+.1f",
    "delta_m_best": "+.1f",
}
GOAL_MRR, GOAL_RMSE = 0.130, 0.880


def runs(sweep: Path) -> pd.DataFrame:
    jobs, keys = tables.read_sweep(sweep)
    table = tables.summary_table(jobs, keys)
    table = table[table["status"] == "completed"].copy()
    table["twin"] = [twins.twin_task(job.overrides) for job in jobs if job.status == "completed"]
    weights = table[LAMBDA] if LAMBDA in table else [None] * len(table)  # one strategy swept
    table["setting"] = [
        "fixed λF=" + str(w) if s == "fixed" else s
        for s, w in zip(table[WEIGHTING], weights, strict=True)
    ]
    return table


def cell(values: pd.Series, spec: str) -> str:
    values = values.dropna()
    if values.empty:
        return ""
    sd = f" ± {values.std(ddof=1):{spec.lstrip('+')}}" if len(values) > 1 else ""
    return f"{values.mean():{spec}}{sd}"


def study_table(table: pd.DataFrame) -> str:
    like = bool("test/auc" in table and table["test/auc"].notna().any())  # tasks=[...,like]
    columns = list(COLUMNS.items())
    columns = dict(columns[:3] + [("test/auc", ".3f")] * like + columns[3:])  # after the RMSE
    lines = [
        "| `model.net.sharing` | weighting | test MRR | test MRR per interaction | test RMSE "
        + ("| test AUC " if like else "")
        + "| effective rank (users) | Δm % (val) | Δm best % (val) | Δm < 0 | Δm best < 0 |",
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if like else ""),
    ]
    for sharing in dict.fromkeys(table[SHARING]):
        mine = table[table[SHARING] == sharing]
        alone = mine[mine["twin"] == "interaction"]
        rating = mine[mine["twin"] == "rating"]
        auc = f"| {cell(mine[mine['twin'] == 'like']['test/auc'], '.3f')} " if like else ""
        lines.append(
            f"| `{sharing}` | *single-task twins* | {cell(alone['test/mrr'], '.4f')} "
            f"| {cell(alone['test/mrr_interaction'], '.4f')} "
            f"| {cell(rating['test/rmse'], '.3f')} {auc}| {cell(alone[RANK], '.1f')} | 0 | | | |"
        )
        multi = mine[mine["twin"].isna()]
        for setting, rows in multi.groupby("setting", sort=False):
            cells = [cell(rows[c], spec) for c, spec in columns.items()]
            below = [
                f"{(rows[c] < 0).sum()} / {rows[c].notna().sum()}"
                for c in ("delta_m", "delta_m_best")
            ]
            lines.append(f"| `{sharing}` | {setting} | {' | '.join(cells + below)} |")
    return "\n".join(lines)


def goal_lines(table: pd.DataFrame) -> str:
    multi = table[table["twin"].isna()]
    met = multi[(multi["test/mrr_interaction"] >= GOAL_MRR) & (multi["test/rmse"] <= GOAL_RMSE)]
    lines = [f"runs meeting MRR per interaction >= {GOAL_MRR} and RMSE <= {GOAL_RMSE} on test:"]
    lines += [
        f"  {r.run}: {r['test/mrr_interaction']:.4f} / {r['test/rmse']:.4f}"
        for _, r in met.iterrows()
    ] or ["  none"]
    means = multi.groupby([SHARING, "setting"], sort=False)[
        ["val/combined", "test/mrr_interaction", "test/rmse"]
    ].agg(["mean", "std"])
    best = means[("val/combined", "mean")].idxmax()
    row = means.loc[best]
    lines.append(
        f"best mean val/combined: {best[0]} {best[1]}: {row[('val/combined', 'mean')]:.3f}; "
        f"test MRR per interaction {row[('test/mrr_interaction', 'mean')]:.4f} ± "
        f"{row[('test/mrr_interaction', 'std')]:.4f}, "
        f"RMSE {row[('test/rmse', 'mean')]:.4f} ± {row[('test/rmse', 'std')]:.4f}"
    )
    top = multi.loc[multi["val/combined"].idxmax()]
    lines.append(
        f"best single run by val/combined: {top.run} (split {top[SPLIT]}): "
        f"{top['val/combined']:.3f}; test {top['test/mrr_interaction']:.4f} / "
        f"{top['test/rmse']:.4f}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    args = parser.parse_args()
    table = runs(args.sweep)
    if table.empty or "delta_m" not in table or not math.isfinite(table["delta_m"].max()):
        raise SystemExit(f"{args.sweep}: no completed runs with a delta_m (a twins sweep?)")
    print(study_table(table))
    print()
    print(goal_lines(table))


if __name__ == "__main__":
    main()
