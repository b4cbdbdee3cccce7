"""Fixtures for the plugin's pytester tests (helpers live in plugin_support.py)."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

# Imported before any test: pytester drops from sys.modules what a test imported first, and
# importing asyncpg's compiled protocol module a second time in one process crashes it
# (a test that starts a server through the plugin's probe would otherwise be the first).
import asyncpg  # type: ignore[import-untyped]  # noqa: F401
import pytest
from plugin_support import REAL_CACHE, drop_database, run_dirs, sql

from pytest_pgmig.servers import runfolders


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """An admin DSN on an embedded server of these tests' own, shared by the inner runs.

    Inner runs given `--pgmig-dsn` skip the server start-up; the plugin's registry keeps
    concurrent runs on one server apart.
    """
    from pytest_pgmig.servers.sources import start_server

    handle = start_server(requested="local", max_connections=200)
    try:
        yield handle.info.dsn
    finally:
        handle.stop()


@pytest.fixture
def fresh_database(server_dsn: str) -> Iterator[str]:
    """A new, empty database on the tests' server, as a CI service container's first run has."""
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    sql(server_dsn, f'CREATE DATABASE "{name}"')
    try:
        yield server_dsn.replace("@/postgres?", f"@/{name}?")
    finally:
        drop_database(server_dsn, name)


@pytest.fixture
def run_base(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private run base for inner runs' embedded servers (short: socket paths are limited)."""
    folder = Path(tempfile.mkdtemp(prefix="pgm-", dir="/tmp"))
    # the plugin leaves a PGMIG_RUN_BASE as it is: make it passable for the cluster account
    folder.chmod(0o711)
    monkeypatch.setenv("PGMIG_RUN_BASE", str(folder))
    monkeypatch.setenv("PGMIG_CACHE_DIR", REAL_CACHE)
    try:
        yield folder
    finally:
        for entry in run_dirs(folder):
            runfolders.stop_run_dir(entry)
        runfolders.remove_tree(folder)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plugin tests must not inherit PGMIG_* settings from the shell that runs them."""
    for name in list(os.environ):
        if name.startswith("PGMIG_") and name not in ("PGMIG_PG_BINDIR",):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PGMIG_CACHE_DIR", REAL_CACHE)


def pytest_report_header(config: pytest.Config) -> str:
    """Which PostgreSQL the suite's servers run (CI runs it on 15 and on 18)."""
    import subprocess

    from pytest_pgmig.servers import binaries

    bindir = binaries.find_bindir()
    if bindir is None:
        return "pgmig tests: no local PostgreSQL server binaries"
    version = subprocess.run(
        [str(bindir / "postgres"), "-V"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return f"pgmig tests: {version} from {bindir}"
