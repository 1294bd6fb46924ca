"""Temporarily switch a flag on a set of modules (fast path on / off)."""
from contextlib import contextmanager
from typing import Iterable

from torch import nn


@contextmanager
def set_module_flag(modules: Iterable[nn.Module], name: str, value):
    """Set ``module.<name> = value`` on every module inside the context; the
    old values are restored on exit, also after an exception.

    Yields:
        int: how many modules were switched.
    """
    saved = [(m, getattr(m, name)) for m in modules]
    for m, _ in saved:
        setattr(m, name, value)
    try:
        yield len(saved)
    finally:
        for m, old in saved:
            setattr(m, name, old)


__all__ = ['set_module_flag']
