"""Which isolation strategy a run uses: ``auto``, ``schema`` or ``database``."""

from __future__ import annotations

from collections.abc import Callable

from pytest_pgmig.isolation.auto import AutoIsolation
from pytest_pgmig.isolation.base import Context, Isolation
from pytest_pgmig.isolation.databases import DatabaseIsolation
from pytest_pgmig.isolation.schemas import SchemaIsolation

STRATEGIES: dict[str, Callable[[Context], Isolation]] = {
    "auto": AutoIsolation,
    "schema": SchemaIsolation,
    "database": DatabaseIsolation,
}


def isolation(kind: str, context: Context) -> Isolation:
    """The strategy `kind` (``--pgmig-isolation``) working in `context`, not yet started."""
    return STRATEGIES[kind](context)
