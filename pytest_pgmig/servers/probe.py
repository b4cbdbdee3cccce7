"""Connecting once to a server: its version, or one clear error naming the cause and the fix."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from pytest_pgmig.errors import ServerError
from pytest_pgmig.runtime import Runtime
from pytest_pgmig.servers.dsn import DsnParts, normalize, parse, redact, scrub
from pytest_pgmig.servers.info import MIN_VERSION, version_text


def _version_tuple(num: int) -> tuple[int, ...]:
    if num >= 100000:
        return (num // 10000, num % 10000)
    return (num // 10000, num // 100 % 100, num % 100)


async def _fetch(dsn: str, timeout: float) -> tuple[int, bool]:
    """The server's version number, and whether the DSN's role is a superuser."""
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    conn = await asyncio.wait_for(asyncpg.connect(dsn, timeout=timeout), timeout + 1)
    try:
        row = await conn.fetchrow(
            "SELECT current_setting('server_version_num')::int, "
            "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
        )
        return int(row[0]), bool(row[1])
    finally:
        await asyncio.wait_for(conn.close(), timeout)


def _cause_and_fix(exc: BaseException, parts: DsnParts, timeout: float) -> tuple[str, str]:
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    where = "socket folder" if parts.is_socket else "host and port"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return (
            f"no answer within {timeout:g} s",
            f"check the {where} and that no firewall drops the connection",
        )
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return (
            f"password authentication failed for user {parts.user!r}",
            "check the user name and password in the DSN",
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return (
            f"database {parts.database!r} does not exist",
            f"create it (createdb {parts.database}) or name an existing database in the DSN",
        )
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return str(exc), "check the user name in the DSN and the server's pg_hba.conf"
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc), "see the server's message above"
    if isinstance(exc, FileNotFoundError) or (
        parts.is_socket and isinstance(exc, ConnectionRefusedError)
    ):
        if not Path(parts.host).is_dir():
            cause = f"the socket folder {parts.host} does not exist"
        else:
            cause = f"no server listens on the socket {parts.address}"
        return cause, "start the server, or fix host= / port= in the DSN"
    if isinstance(exc, ConnectionRefusedError):
        return (
            "connection refused: nothing listens on that port",
            "start the server, or fix the host and port in the DSN",
        )
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name {parts.host!r}", "fix the host name in the DSN"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc), f"check the {where} in the DSN"
    return f"{type(exc).__name__}: {exc}", "check the DSN"


def probe(dsn: str, *, timeout: float = 5.0) -> tuple[int, ...]:
    """Connect once to ``dsn`` and return the server's version, e.g. ``(16, 4)``
    (see :func:`probe_role` for the role too).

    Sync (it runs its own short event loop), bounded by ``timeout`` seconds. Any failure
    (unreachable, refused, bad password, missing database, a server older than
    ``MIN_VERSION``) raises :class:`ServerError` naming host, port, database and the cause,
    with the password redacted.

    Example::

        >>> probe("postgresql://postgres@/postgres?host=/tmp/pg")
        (15, 18)
    """
    return probe_role(dsn, timeout=timeout)[0]


def probe_role(dsn: str, *, timeout: float = 5.0) -> tuple[tuple[int, ...], bool]:
    """As :func:`probe`, with whether the DSN's role is a superuser."""
    try:
        parts = parse(dsn)
    except ValueError as exc:
        raise ServerError(scrub(f"invalid DSN {redact(dsn)}: {exc}", dsn)) from None
    try:
        # its own loop, in a thread: this may be called from inside a running event loop
        runtime = Runtime()
        try:
            num, superuser = runtime.run(_fetch(normalize(dsn), timeout))
        finally:
            runtime.close()
    except Exception as exc:
        cause, fix = _cause_and_fix(exc, parts, timeout)
        message = (
            f"cannot connect to PostgreSQL at {parts.address} (database {parts.database!r}, "
            f"user {parts.user!r}; DSN {redact(dsn)}): {cause}.\nFix: {fix}."
        )
        raise ServerError(scrub(message, dsn)) from None
    version = _version_tuple(num)
    if version[: len(MIN_VERSION)] < MIN_VERSION:
        raise ServerError(
            f"PostgreSQL {version_text(version)} at {parts.address} (database "
            f"{parts.database!r}) is older than {version_text(MIN_VERSION)}, the oldest "
            "version pytest-pgmig supports. Use a newer server."
        )
    return version, superuser
