"""Checks of the composed config before any work starts: one clear message per mistake.

Every rule lives once. A setting that some code needs checks itself there (the net's
``check_settings``, ``Objective.check_settings``, ``losses.factorization_loss``,
``embedding_size``, ``movielens.check_variant``), when that code runs; :func:`validate`
gathers those checks and runs them on the config's values before any data is read.
Settings no code checks on its own (sizes, fractions, learning rates) have their rule in
:data:`RULES` here. The first problem raises a :class:`~mtrec.errors.ConfigError` naming the
key as typed on the command line, its value and what is allowed. A key the config lacks
(``model.net.layer_sizes`` of a model without an MLP, ``data.shape`` of real data) is skipped.
To add a rule, add one line to :data:`RULES`, or a check to the code that needs the setting
and one line to :data:`CHECKS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mtrec.data.datamodule import MovieLensDataModule
from mtrec.data.movielens import check_variant
from mtrec.data.synthetic import SHAPES
from mtrec.errors import ConfigError, instantiate_as_raised, shown
from mtrec.models.embeddings import embedding_size
from mtrec.models.protocol import ChecksSettings, Recommender, SharesRows
from mtrec.mtl.losses import factorization_loss
from mtrec.mtl.objective import check_settings
from mtrec.mtl.tasks import Task, check_names
from mtrec.mtl.weighting import FixedWeighting
from mtrec.mtl.weighting.gradient import check_aggregator
from mtrec.reference_keys import ALIASES, apply_reference_keys
from mtrec.runs.trackers import check_trackers
from mtrec.training.module import check_parts
from mtrec.training.optim import check_sparse_ddp, check_sparse_optimizer, check_sparse_rows
from mtrec.training.selection import check_targets
from mtrec.training.task_stopping import check_task_stopping

ABSENT = object()  # the key is not in the config (or cannot be resolved: left to its user)


def number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def positive_int(v: Any) -> bool:
    return integer(v) and v >= 1


def non_negative(v: Any) -> bool:
    return number(v) and v >= 0


def fraction(zero_ok: bool = False) -> Callable[[Any], bool]:
    return lambda v: number(v) and (v >= 0 if zero_ok else v > 0) and v < 1


def one_of(choices) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in choices


def listing(choices) -> str:
    return "one of " + ", ".join(choices)


def real_data(cfg: DictConfig) -> bool:
    """Not ``data=synthetic``, which generates its ratings and ignores ``data.variant``."""
    return lookup(cfg, "data.shape") is ABSENT


REGRESSION_WEIGHT = (
    "a number >= 0; unless set it is 1 - model.factorization_weight, so keep "
    "model.factorization_weight <= 1 or set model.regression_weight as well"
)


def unset_or(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or ok(v)


class Rule(NamedTuple):
    key: str  # as typed on the command line
    ok: Callable[[Any], bool]  # True for an allowed value
    allowed: str  # shown after "use"
    when: Callable[[DictConfig], bool] | None = None  # checked only for configs where this holds


RULES: list[Rule] = [
    Rule("data.shape", one_of(SHAPES), listing(SHAPES)),
    Rule("data.test_fraction", fraction(), "a number between 0 and 1, both excluded, e.g. 0.05"),
    Rule("data.val_fraction", fraction(zero_ok=True), "a number in [0, 1), 0 for no carve-out"),
    Rule("data.batch_size", positive_int, "a positive integer, e.g. 256"),
    Rule("data.batches_per_chunk", positive_int, "a positive integer, e.g. 64"),
    Rule("data.num_negatives", positive_int, "an integer >= 1, e.g. 1"),
    Rule("data.negative_alpha", non_negative, "a number >= 0: 0 uniform, e.g. 0.75"),
    Rule("model.net.hidden_size", positive_int, "a positive integer, e.g. 64"),
    Rule("model.net.genre_dim", positive_int, "a positive integer, e.g. 8"),
    Rule("model.history_length", positive_int, "a positive integer, e.g. 10"),
    Rule("model.factorization_weight", unset_or(non_negative), "a number >= 0, e.g. 0.99"),
    Rule("model.regression_weight", unset_or(non_negative), REGRESSION_WEIGHT),
    Rule("model.negative_rating_ratio", lambda v: integer(v) and v >= 0, "an integer >= 0"),
    Rule("model.net.dropout", fraction(zero_ok=True), "a number in [0, 1), 0 for none"),
    Rule("model.net.reg", non_negative, "a number >= 0, e.g. 250"),
    Rule("model.l1", non_negative, "a number >= 0 (0: no penalty)"),
    Rule("model.l2", non_negative, "a number >= 0 (0: no penalty)"),
    Rule(
        "model.embedding_l2",
        lambda v: non_negative(v) or (isinstance(v, dict) and all(map(non_negative, v.values()))),
        "a number >= 0 (0: no penalty), or one per task, e.g. {interaction:0.001,rating:0.1}",
    ),
    Rule("optimizer.lr", lambda v: number(v) and v > 0, "a number > 0, e.g. 1e-3"),
    Rule("trainer.max_epochs", positive_int, "an integer >= 1"),
]


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first value of ``cfg`` that cannot work (after the
    reference's weight keys are applied: :mod:`mtrec.reference_keys`)."""
    apply_reference_keys(cfg)
    for rule in RULES:
        value = lookup(cfg, rule.key)
        if value is ABSENT or (rule.when is not None and not rule.when(cfg)):
            continue
        if not rule.ok(value):
            key = typed_key(cfg, rule.key)
            raise ConfigError(f"{key}={shown(value)} is not valid: use {rule.allowed}.")
    for check in CHECKS:
        check(cfg)


def fractions_leave_training_rows(cfg: DictConfig) -> None:
    test, val = lookup(cfg, "data.test_fraction"), lookup(cfg, "data.val_fraction")
    if number(test) and number(val) and test + val >= 1:
        raise ConfigError(
            f"data.test_fraction={shown(test)} and data.val_fraction={shown(val)} add up to "
            f"{test + val:g}, which leaves no ratings for training: keep their sum below 1, "
            "e.g. data.test_fraction=0.05 data.val_fraction=0.05."
        )


def owners_checks(cfg: DictConfig) -> None:
    """The checks of the code that uses these settings, run on the config's values."""
    variant = lookup(cfg, "data.variant")
    if variant is not ABSENT and real_data(cfg):
        check_variant(variant)
    dim = lookup(cfg, "model.net.embedding_dim")
    if dim is not ABSENT:
        embedding_size(dim, 1)
    loss = lookup(cfg, "model.factorization_loss")
    if loss is not ABSENT:
        factorization_loss(loss)
    embedding_l2 = lookup(cfg, "model.embedding_l2")
    if number(embedding_l2) or isinstance(embedding_l2, dict):
        check_settings(embedding_l2, net_class(cfg))
    tasks = chosen_tasks(cfg, net_class(cfg))
    targets = lookup(cfg, "callbacks.selection_score.targets")
    if isinstance(targets, dict):
        check_targets(targets, tasks, "callbacks.selection_score.targets")
    strategy = weighting_checks(cfg, tasks)
    stopping = lookup(cfg, "callbacks.task_stopping")
    if isinstance(stopping, dict):
        val_fraction = lookup(cfg, "data.val_fraction")
        check_task_stopping(stopping.get("patience", 5), val_fraction, net_class(cfg), strategy)
    if lookup(cfg, "model.sparse_rows") is True:
        sparse_rows_checks(cfg, strategy)
    parts = lookup(cfg, "model.parts")
    if isinstance(parts, dict) and parts:
        check_parts(parts, net_class(cfg), tuple(task.name for task in tasks))
        optimizer_settings(cfg, parts)
    settings = lookup(cfg, "model.net")
    if issubclass(net_class(cfg), ChecksSettings) and isinstance(settings, dict):
        net_class(cfg).check_settings(settings)  # the net's own rules, on the config's values


def optimizer_settings(cfg: DictConfig, parts: dict) -> None:
    """Each part's settings are the optimizer's own (``lr``, ``weight_decay``, ...): a key the
    optimizer does not take would be kept and ignored by it."""
    optimizer = cfg.get("optimizer")
    if optimizer is None:
        return
    probe = instantiate_as_raised(optimizer)([torch.zeros(1, requires_grad=True)])
    for name, settings in parts.items():
        unknown = [key for key in settings if key not in probe.defaults]
        if unknown:
            raise ConfigError(
                f"model.parts.{name}.{unknown[0]}: {type(probe).__name__} has no setting "
                f"{unknown[0]}; its settings are {', '.join(probe.defaults)}."
            )


def weighting_checks(cfg: DictConfig, tasks: tuple[Task, ...]):
    """The weighting's own checks: its solver installed, its parameters (its constructor),
    whether it can serve these tasks (and the net's sharing), each task's weight. Returns
    the strategy (None without one)."""
    weighting = cfg.get("weighting")
    if weighting is None:
        return None
    aggregator = lookup(cfg, "weighting.aggregator._target_")
    if isinstance(aggregator, str):
        check_aggregator(aggregator)
    strategy = instantiate_as_raised(weighting)  # a constructor's ConfigError, as raised
    names = tuple(task.name for task in tasks)
    strategy.check(names, len(names) >= 2 and issubclass(net_class(cfg), SharesRows))
    if tasks:
        strategy.bind(tasks)  # a trained task without a weight: its message
        if isinstance(strategy, FixedWeighting):
            some_loss_weighs(cfg, strategy.effective_weights())
    return strategy


def chosen_tasks(cfg: DictConfig, net: type) -> tuple[Task, ...]:
    """The tasks the run trains (``tasks=[...]``), each built by its config (its own checks
    of its settings) under its own name, and the ``net`` class's checks that it can serve
    them, before any work. Empty for a config without the tasks group (a custom one)."""
    tasks = cfg.get("tasks")
    if tasks is None:
        return ()
    if not tasks:
        raise ConfigError("tasks=[] trains nothing: give at least one, e.g. tasks=[rating].")
    built = {}
    for name, task in tasks.items():
        try:
            built[name] = instantiate_as_raised(task)
        except InstantiationException as error:
            raise ConfigError(f"tasks.{name}: {error}") from None
    check_names(built)
    data = target_class(cfg, "data")
    fields = data.batch_fields if issubclass(data, MovieLensDataModule) else None
    for name, task in built.items():
        missing = [field for field in task.fields if fields is not None and field not in fields]
        if missing:
            raise ConfigError(
                f"tasks.{name} reads the batch field {missing[0]}, which {data.__name__} does "
                f"not give (its batches carry {', '.join(fields)}). Fix: a data module that "
                "adds it (its batch_fields and row_fields), or tasks=[...] without "
                f"{name}."
            )
    if issubclass(net, Recommender):
        net.check_tasks(tuple(built.values()))
        for task in built.values():
            task.check_net(net)
    return tuple(built.values())


def sparse_rows_checks(cfg: DictConfig, strategy) -> None:
    """What sparse row updates cannot take: another optimizer than Adam, penalties on all
    parameters, per-task gradients (``strategy``'s or the diagnostics') under DDP."""
    check_sparse_rows(lookup(cfg, "model.l1") or 0, lookup(cfg, "model.l2") or 0)
    optimizer = lookup(cfg, "optimizer._target_")
    if isinstance(optimizer, str):
        check_sparse_optimizer(optimizer)
    task_gradients = getattr(strategy, "task_gradients", False)
    task_gradients = task_gradients or lookup(cfg, "model.diagnostics") is True
    if task_gradients and str(lookup(cfg, "trainer.strategy")).startswith("ddp"):
        aggregator = lookup(cfg, "weighting.aggregator._target_")
        named = aggregator if isinstance(aggregator, str) else type(strategy).__name__
        check_sparse_ddp(named.rsplit(".", 1)[-1])


def typed_key(cfg: DictConfig, key: str) -> str:
    """The key a weight was given by: the reference's alias where one set it (or, for the
    rating task's weight, λF it derives from), else the key itself."""
    aliases = {weight: alias for alias, weight in ALIASES.items()}
    alias = aliases.get(key)
    if alias is None:
        return key
    if lookup(cfg, alias) not in (None, ABSENT):
        return alias
    factorization = lookup(cfg, "model.factorization_weight") not in (None, ABSENT)
    return alias if alias == "model.regression_weight" and factorization else key


def weights_valid(cfg: DictConfig) -> None:
    """Each fixed weight given is a number >= 0 (null: 1 minus the others)."""
    weights = lookup(cfg, "weighting.weights")
    if not isinstance(weights, dict):
        return
    for name, value in weights.items():
        if value is None or non_negative(value):
            continue
        key = typed_key(cfg, f"weighting.weights.{name}")
        derived = key == "model.regression_weight" and lookup(cfg, key) in (None, ABSENT)
        allowed = REGRESSION_WEIGHT if derived else "a number >= 0, e.g. 0.01"
        raise ConfigError(f"{key}={shown(value)} is not valid: use {allowed}.")


def some_loss_weighs(cfg: DictConfig, weights: dict[str, float]) -> None:
    """With fixed ``weights`` (each trained task's), at least one is positive: otherwise
    nothing trains."""
    if not weights or any(w != 0 for w in weights.values()):
        return
    parts = []
    for name, weight in weights.items():
        key = typed_key(cfg, f"weighting.weights.{name}")
        typed = lookup(cfg, key)
        derived = key == "model.regression_weight" and typed in (None, ABSENT)
        value = shown(typed if typed not in (None, ABSENT) else weight)
        parts.append(f"{key}={value}" + (" (1 - model.factorization_weight)" * derived))
    first = typed_key(cfg, f"weighting.weights.{next(iter(weights))}")
    fix = "model.factorization_weight=0.99" if first.startswith("model.") else f"{first}=1"
    raise ConfigError(
        f"{' and '.join(parts)}: every loss of model={lookup(cfg, 'model.name')} has weight 0, "
        f"so nothing would be trained. Give one of its {', '.join(weights)} tasks a positive "
        f"weight, e.g. {fix}."
    )


def enough_negatives(cfg: DictConfig) -> None:
    """The rating loss takes its negatives from the ``data.num_negatives`` sampled per pair."""
    ratio, drawn = lookup(cfg, "model.negative_rating_ratio"), lookup(cfg, "data.num_negatives")
    if integer(ratio) and integer(drawn) and ratio > drawn:
        raise ConfigError(
            f"model.negative_rating_ratio={ratio} is more than data.num_negatives={drawn}, the "
            f"negatives sampled per rating, so only {drawn} would be used: use "
            f"model.negative_rating_ratio={drawn} or less, or data.num_negatives={ratio}."
        )


def trackers_installed(cfg: DictConfig) -> None:
    loggers = cfg.get("logger") or {}
    check_trackers({name: str(logger.get("_target_")) for name, logger in loggers.items()})


# The checks that relate several keys, run after RULES, in this order.
CHECKS = (
    trackers_installed,
    fractions_leave_training_rows,
    weights_valid,
    owners_checks,
    enough_negatives,
)


def lookup(cfg: DictConfig, key: str) -> Any:
    """The resolved value at ``key`` (lists and dicts as plain ones), or :data:`ABSENT`."""
    try:
        value = OmegaConf.select(cfg, key, default=ABSENT)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
    except OmegaConfBaseException:  # e.g. an interpolation that fails: reported where it is used
        return ABSENT
    return value


def net_class(cfg: DictConfig) -> type:
    """The class ``model.net`` builds, or ``object`` where there is none to find."""
    return target_class(cfg, "model.net")


def target_class(cfg: DictConfig, key: str) -> type:
    """The class the config at ``key`` builds, or ``object`` where there is none to find."""
    target = lookup(cfg, f"{key}._target_")
    try:
        return get_class(target) if isinstance(target, str) else object
    except Exception:  # a wrong target: instantiating it reports that in Hydra's own words
        return object
