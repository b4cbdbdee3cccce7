"""PostgreSQL in a Docker container through testcontainers (extra docker)."""

from __future__ import annotations

import contextlib
import os
import secrets
from urllib.parse import quote

from pytest_pgmig.errors import ServerError
from pytest_pgmig.servers.dsn import scrub
from pytest_pgmig.servers.info import ServerHandle, ServerInfo
from pytest_pgmig.servers.probe import probe

DOCKER_IMAGE = "postgres:16-alpine"


def docker_available(timeout: float = 2.0) -> bool:
    """True when the docker extra is installed and a Docker engine answers a ping quickly."""
    try:
        import docker  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=timeout)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def start_docker(*, max_connections: int = 100, image: str | None = None) -> ServerHandle:
    """Start PostgreSQL in a container through testcontainers (extra ``docker``)."""
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        try:
            from testcontainers.postgres import PostgresContainer
        except ImportError:
            raise ServerError(
                "--pgmig-server=docker needs testcontainers: pip install 'pytest-pgmig[docker]'"
            ) from None
    image = image or os.environ.get("PGMIG_DOCKER_IMAGE") or DOCKER_IMAGE
    password = secrets.token_urlsafe(16)
    container = PostgresContainer(
        image, username="postgres", password=password, dbname="postgres", driver=None
    )
    container.with_command(
        "postgres -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        f"-c max_connections={max_connections}"
    )
    try:
        container.start()
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(5432))
    except Exception as exc:
        with contextlib.suppress(Exception):
            container.stop()
        raise ServerError(
            f"could not start PostgreSQL in Docker (image {image}): {type(exc).__name__}: "
            f"{scrub(str(exc), f'postgresql://postgres:{password}@x/')}.\n"
            "Fix: check `docker info` and that the image can be pulled, or use local "
            "binaries / --pgmig-dsn instead."
        ) from None
    dsn = f"postgresql://postgres:{quote(password, safe='')}@{host}:{port}/postgres"
    try:
        version = probe(dsn, timeout=10.0)
    except ServerError:
        container.stop()
        raise
    info = ServerInfo(dsn, host, port, "postgres", "postgres", version, "docker")
    wrapped = container.get_wrapped_container()
    spec = {"kind": "docker", "container_id": getattr(wrapped, "id", "")}
    return ServerHandle(info, spec, container.stop)
