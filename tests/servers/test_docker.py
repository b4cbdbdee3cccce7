"""The Docker source through testcontainers: one real start, skipped where no engine answers."""

from __future__ import annotations

import pytest

from pytest_pgmig import errors
from pytest_pgmig.servers import docker, probe, sources


def test_docker_server_starts_probes_and_stops() -> None:
    if not docker.docker_available():
        pytest.skip("no Docker engine answers (docker info fails) or the docker extra is missing")
    handle = sources.start_server(requested="docker", max_connections=50)
    try:
        info = handle.info
        assert info.source == "docker"
        assert info.version >= info.MIN_VERSION
        assert probe.probe(info.dsn) == info.version
        password = info.dsn.split("@")[0].rsplit(":", 1)[1]
        assert password not in repr(info) and password not in str(info)
    finally:
        handle.stop()
    with pytest.raises(errors.ServerError):
        probe.probe(info.dsn, timeout=2)


def test_docker_absent_is_reported_quickly() -> None:
    if docker.docker_available():
        pytest.skip("a Docker engine answers here")
    with pytest.raises(errors.ServerError, match="no Docker engine answers"):
        sources.start_server(requested="docker")
