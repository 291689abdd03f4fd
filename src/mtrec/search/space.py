"""A search space written in Hydra's sweep syntax, as Optuna's distributions.

``hydra.sweeper.params`` maps each key to ``choice(...)``, ``range(...)``, ``interval(a, b)``
(a float, or an integer when both ends are), ``tag(log, interval(a, b))`` (sampled on a log
scale) or a plain value, fixed for every trial: the syntax of Hydra's earlier Optuna sweeper,
so existing search configs keep working.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from mtrec.errors import ConfigError


def search_space(
    params: Mapping[str, Any], arguments: Sequence[str] = ()
) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The distribution of each searched key, and the overrides every trial shares.

    The command line's ``arguments`` come after ``params``: a sweep there (``optimizer.lr=
    interval(1e-4, 1e-2)``) is searched too, and a plain value fixes its key for every trial.
    """
    parser = OverridesParser.create()
    lines = [f"{key}={written}" for key, written in (params or {}).items()] + list(arguments)
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for line, parsed in zip(lines, parser.parse_overrides(lines), strict=True):
        key = parsed.key_or_group
        space.pop(key, None)
        fixed.pop(key, None)
        if parsed.is_sweep_override():
            space[key] = distribution(key, parsed)
        else:
            fixed[key] = line
    return space, list(fixed.values())


def distribution(key: str, parsed: Override) -> BaseDistribution:
    sweep = parsed.value()
    if isinstance(sweep, ChoiceSweep | RangeSweep):  # their values, as Hydra enumerates them
        return CategoricalDistribution(list(parsed.sweep_iterator()))
    if isinstance(sweep, IntervalSweep):
        log = "log" in sweep.tags
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    raise ConfigError(
        f"hydra.sweeper.params.{key}: {sweep} cannot be searched: use choice(...), "
        "range(...), interval(a, b) or tag(log, interval(a, b))."
    )


def override(key: str, value: Any) -> str:
    """``key=value`` as a command-line override: floats in full, booleans as Hydra reads them."""
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, float):
        return f"{key}={value!r}"
    return f"{key}={value}"
