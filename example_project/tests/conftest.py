"""Fixtures of the example suite, built on pytest-pgmig's (configured in pyproject.toml)."""

from __future__ import annotations

import pytest
from pytest_pgmig import AsyncDatabaseManager

from taskq import TaskQueue


@pytest.fixture
def tq(pgmig_db: AsyncDatabaseManager) -> TaskQueue:
    """The application's queue on the test's migrated schema (one connection, pgmig_conn's)."""
    return TaskQueue(pgmig_db)
