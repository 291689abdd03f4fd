"""Errors caused by what the user gave (config values, data files): reported as one message."""

from __future__ import annotations

from typing import Any


def shown(value: Any) -> str:
    """``value`` as it would be typed on the command line, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(shown(v) for v in value) + "]"
    return str(value)


class UserError(Exception):
    """A mistake in the input. ``mtrec-train`` prints its message alone and exits with status 2;
    ``HYDRA_FULL_ERROR=1`` shows the stack trace as well."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work: the message names the key, the value and the fix."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: the message names the step and the likely cause."""


def instantiate_as_raised(config: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, with a constructor's own :class:`UserError` raised as it
    was (Hydra wraps it in an ``InstantiationException`` that names the target first)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(config, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, UserError):
            raise error.__cause__ from None
        raise
