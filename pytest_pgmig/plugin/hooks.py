"""The hooks pytest-pgmig declares for conftests to implement."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec
def pytest_pgmig_alembic_config(config: Any, target: Any) -> None:
    """Adjust Alembic's `Config` before a history is applied to `target`.

    `target` (`pytest_pgmig.alembic.target.Target`) has ``.url(driver)``, ``.host``,
    ``.port``, ``.user``, ``.password``, ``.database`` and ``.schema``. For what
    ``pgmig_alembic_env`` cannot say: an application's settings object, a Flask app
    context. Example::

        def pytest_pgmig_alembic_config(config, target):
            config.attributes["app_settings"] = Settings(database_url=target.url("asyncpg"))
    """
