"""The hooks pytest-pgmig declares for conftests to implement."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import pytest


@pytest.hookspec
def pytest_pgmig_alembic_config(config: Any, target: Any) -> AbstractContextManager[Any] | None:
    """Adjust Alembic's `Config` before a history is applied to `target`; a context manager
    it returns is entered around the run (a Flask app context).

    `target` (`pytest_pgmig.alembic.target.Target`) has ``.url(driver)``, ``.host``,
    ``.port``, ``.user``, ``.password``, ``.database`` and ``.schema``. For what
    ``pgmig_alembic_env`` cannot say: an application's settings object, a Flask app
    context. Examples::

        def pytest_pgmig_alembic_config(config, target):
            config.attributes["app_settings"] = Settings(database_url=target.url("asyncpg"))

        def pytest_pgmig_alembic_config(config, target):  # Flask-Migrate
            return create_app(SQLALCHEMY_DATABASE_URI=target.url("psycopg")).app_context()
    """
