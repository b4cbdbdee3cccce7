"""SQLAlchemy engines bound to the test's schema (or database), for Alembic projects' tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pytest_pgmig.isolation.base import PgmigSchema
from pytest_pgmig.plugin.fixtures import loop_runner


def _sqlalchemy() -> Any:
    try:
        import sqlalchemy
    except ImportError:
        pytest.fail(
            "pgmig_engine and pgmig_async_engine need SQLAlchemy: pip install "
            "'pytest-pgmig[alembic]'.",
            pytrace=False,
        )
    return sqlalchemy


def _with_driver(dsn: str, driver: str) -> str:
    return f"postgresql+{driver}://{dsn.split('://', 1)[1]}"


def _sync_driver() -> str:
    for driver in ("psycopg", "psycopg2"):
        try:
            __import__(driver)
        except ImportError:
            continue
        return driver
    pytest.fail(
        "pgmig_engine needs a synchronous driver: pip install 'psycopg[binary]' (or psycopg2).",
        pytrace=False,
    )


@pytest.fixture
def pgmig_engine(pgmig_schema: PgmigSchema) -> Iterator[Any]:
    """A SQLAlchemy `Engine` on the test's schema (psycopg, else psycopg2), disposed after.

    Example::

        def test_users(pgmig_engine):
            with Session(pgmig_engine) as session:
                session.add(User(name="ada"))
                session.commit()
    """
    sqlalchemy = _sqlalchemy()
    engine = sqlalchemy.create_engine(_with_driver(pgmig_schema.dsn, _sync_driver()))
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def pgmig_async_engine(request: pytest.FixtureRequest, pgmig_schema: PgmigSchema) -> Iterator[Any]:
    """A SQLAlchemy `AsyncEngine` on asyncpg, on the test's schema and loop, disposed after.

    asyncpg takes no libpq ``options``: the schema's settings go as its server settings.
    """
    _sqlalchemy()
    from sqlalchemy.ext.asyncio import create_async_engine

    settings = dict(pgmig_schema.server_settings)
    engine = create_async_engine(
        _with_driver(pgmig_schema.plain_dsn, "asyncpg"),
        connect_args={"server_settings": settings} if settings else {},
    )
    runner = loop_runner(request, "pgmig_async_engine")
    try:
        yield engine
    finally:
        runner.run(engine.dispose())
