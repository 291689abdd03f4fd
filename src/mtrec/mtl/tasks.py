"""The two tasks, declared once: their names, the head each reads, its loss and its metrics.

Every part that speaks of tasks (the objective, the weighting, metrics, config validation,
the sweep summary, HParams) takes names and directions from here, so a task is spelled one
way in code, logs and docs. The reference's config keys keep their names:
``model.factorization_weight`` is the interaction task's weight, ``model.regression_weight``
the rating task's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str  # as logs and docs call it: train/<name>_loss, mtl/.../<name>
    head: str  # the head of the net it reads (an entry of ``net.heads``)
    loss: str  # the config key choosing its loss, or the loss itself when it is fixed
    weight_key: str  # the config key of its weight in the weighted sum of losses
    metrics: tuple[str, ...]  # held-out metrics it reports, the main one first
    higher_is_better: bool  # for every metric of the task

    def metric_names(self, top_k: int = 10) -> tuple[str, ...]:
        return tuple(name.format(k=top_k) for name in self.metrics)


INTERACTION = Task(
    name="interaction",
    head="interaction",
    loss="model.factorization_loss",
    weight_key="model.factorization_weight",
    metrics=("mrr", "mrr_interaction", "hr@{k}", "ndcg@{k}"),
    higher_is_better=True,
)
RATING = Task(
    name="rating",
    head="rating",
    loss="mse",
    weight_key="model.regression_weight",
    metrics=("mse", "rmse"),
    higher_is_better=False,
)
TASKS: tuple[Task, ...] = (INTERACTION, RATING)


def tasks_of(heads) -> tuple[Task, ...]:
    """The tasks a net with these ``heads`` trains, in :data:`TASKS` order."""
    return tuple(task for task in TASKS if task.head in heads)


def metric_names(heads=(INTERACTION.head, RATING.head), top_k: int = 10) -> tuple[str, ...]:
    """Every held-out metric a net with these heads reports, in table order."""
    return tuple(name for task in tasks_of(heads) for name in task.metric_names(top_k))


def task_of_metric(metric: str) -> Task | None:
    """The task a metric belongs to, from its name with or without a prefix (``test/mse``)."""
    bare = metric.rsplit("/", 1)[-1]
    for task in TASKS:
        if any(
            bare == name or (("{k}" in name) and bare.startswith(name.split("{")[0]))
            for name in task.metrics
        ):
            return task
    return None


def lower_is_better(metric: str) -> bool:
    """True for the rating task's errors; every other metric is better when higher."""
    task = task_of_metric(metric)
    return task is not None and not task.higher_is_better
