"""``torch.compile`` where it works, eager execution where it does not."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


def compile_or_eager(function: Callable, **options) -> Callable:
    """``function`` compiled on first call (with ``torch.compile``'s ``options``); if compiling
    fails (no C compiler, an unsupported operation or platform), a warning names the reason
    and every call runs eagerly instead.

    An error of ``function`` itself is raised again by the eager call, so nothing is hidden.
    """
    compiled = None  # made on first call, so that it sees the compiler settings of then
    eager = False

    def call(*args, **kwargs):
        nonlocal compiled, eager
        if not eager:
            try:
                compiled = compiled or torch.compile(function, **options)
                # sizes known only from the data (a batch's history bags) are traced as such
                with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
                    return compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any compiler failure means: run eagerly
                log.warning(
                    "torch.compile failed (%s: %s); running eagerly. Set model.compile=false "
                    "to skip compiling.",
                    type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "",
                )
                eager = True
        return function(*args, **kwargs)

    return call
