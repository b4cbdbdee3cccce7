"""Unit tests of the pure DSN helpers: parse, redact, scrub, normalize, socket and search_path."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from pytest_pgmig.servers.dsn import (
    DsnParts,
    normalize,
    parse,
    password_of,
    redact,
    scrub,
    socket_dsn,
    with_search_path,
)

NASTY = "p@ss/w%rd:x?y"


@pytest.fixture(autouse=True)
def _no_pg_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://app:secret@db:5432/app", "postgresql://app:***@db:5432/app"),
        (
            "postgres://app:secret@db/app?sslmode=require",
            "postgres://app:***@db/app?sslmode=require",
        ),
        ("postgresql://app:s%40c%2Fr%3At@db/app", "postgresql://app:***@db/app"),
        (f"postgresql://app:{NASTY}@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("postgresql://app@db/app?password=secret&x=1", "postgresql://app@db/app?password=***&x=1"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        (
            "postgresql://u:pw@h/d?application_name=a@b",
            "postgresql://u:***@h/d?application_name=a@b",
        ),
        ("postgresql:///app?host=/tmp", "postgresql:///app?host=/tmp"),
        ("host=db password=secret dbname=app", "host=db password=*** dbname=app"),
        ("host=db password='se cr\\'et' dbname=app", "host=db password=*** dbname=app"),
        ("host=db PASSWORD = secret", "host=db PASSWORD = ***"),
        ("host=db dbname=app", "host=db dbname=app"),
    ],
)
def test_redact(dsn: str, expected: str) -> None:
    assert redact(dsn) == expected


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://app:{NASTY}@db:5432/app",
        "postgresql://app:" + "p%40ss%2Fw%25rd%3Ax%3Fy" + "@db/app",
        "postgresql://app@db/app?password=" + "p%40ss%2Fw%25rd%3Ax%3Fy",
        "host=db user=app password='p@ss/w%rd:x?y'",
    ],
)
def test_redacted_and_scrubbed_text_never_holds_the_password(dsn: str) -> None:
    assert password_of(dsn) == NASTY
    assert NASTY not in redact(dsn)
    message = f"failed for {dsn}: server said {NASTY!r}"
    cleaned = scrub(message, dsn)
    assert NASTY not in cleaned
    assert "p%40ss" not in cleaned


def test_parse_url() -> None:
    assert parse("postgresql://app:pw@db.example:5433/shop") == DsnParts(
        "db.example", 5433, "shop", "app"
    )
    assert parse(f"postgresql://app:{NASTY}@db:5433/shop") == DsnParts("db", 5433, "shop", "app")
    assert parse("postgresql://u@[::1]:6000/d").host == "::1"
    assert parse("postgresql://u@[::1]:6000/d").port == 6000
    assert parse("postgresql://u@h1:1,h2:2/d") == DsnParts("h1", 1, "d", "u")


def test_parse_socket_forms() -> None:
    parts = parse("postgresql://postgres@/postgres?host=%2Ftmp%2Fpg&port=5433")
    assert parts == DsnParts("/tmp/pg", 5433, "postgres", "postgres")
    assert parts.is_socket
    assert parts.address == "/tmp/pg/.s.PGSQL.5433"
    assert parse("postgresql:///db?host=/run/x").host == "/run/x"
    assert parse("host=/run/x dbname=d user=u").address == "/run/x/.s.PGSQL.5432"


def test_parse_key_value() -> None:
    dsn = "host=db port=6543 dbname='my db' user=app password='x y'"
    assert parse(dsn) == DsnParts("db", 6543, "my db", "app")
    assert password_of(dsn) == "x y"


def test_parse_defaults_follow_libpq_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOST", "envhost")
    monkeypatch.setenv("PGPORT", "7777")
    monkeypatch.setenv("PGUSER", "envuser")
    assert parse("postgresql://") == DsnParts("envhost", 7777, "envuser", "envuser")
    monkeypatch.setenv("PGDATABASE", "envdb")
    assert parse("").database == "envdb"
    assert parse("postgresql://u@h:1/d") == DsnParts("h", 1, "d", "u")


def test_parse_defaults_without_environment() -> None:
    parts = parse("postgresql://")
    assert parts.port == 5432
    assert parts.database == parts.user
    assert parts.host  # a socket folder or localhost, as libpq would pick


def test_parse_rejects_bad_port_without_leaking_password() -> None:
    with pytest.raises(ValueError, match="invalid port") as info:
        parse("postgresql://u:secret@h:port/d")
    assert "secret" not in str(info.value)


def test_normalize_encodes_credentials_once() -> None:
    assert normalize(f"postgresql://app:{NASTY}@db:5432/app") == (
        "postgresql://app:p%40ss%2Fw%25rd%3Ax%3Fy@db:5432/app"
    )
    encoded = "postgresql://app:p%40ss@db/app"
    assert normalize(encoded) == encoded
    assert normalize("postgresql://db/app") == "postgresql://db/app"
    assert normalize("host=db") == "postgresql:///?host=db"


def test_socket_dsn_round_trips_through_parse() -> None:
    dsn = socket_dsn("/tmp/pytest-pgmig-0/1-ab/pg", port=5432, user="postgres", database="postgres")
    assert (
        dsn == "postgresql://postgres@/postgres?host=%2Ftmp%2Fpytest-pgmig-0%2F1-ab%2Fpg&port=5432"
    )
    assert parse(dsn) == DsnParts("/tmp/pytest-pgmig-0/1-ab/pg", 5432, "postgres", "postgres")


def _options(dsn: str) -> list[str]:
    return parse_qs(urlsplit(dsn).query)["options"]


def test_with_search_path_url_keeps_other_parameters() -> None:
    dsn = with_search_path("postgresql://u:pw@h:1/d?sslmode=disable&application_name=x", "t_1")
    query = parse_qs(urlsplit(dsn).query)
    assert query["sslmode"] == ["disable"]
    assert query["application_name"] == ["x"]
    assert query["options"] == ['-c search_path="t_1"']
    assert dsn.startswith("postgresql://u:pw@h:1/d?")


def test_with_search_path_appends_to_existing_options_and_escapes() -> None:
    base = "postgresql://u@/d?host=%2Ftmp&options=-c%20statement_timeout%3D5000"
    assert _options(with_search_path(base, "t_1")) == [
        '-c statement_timeout=5000 -c search_path="t_1"'
    ]
    assert _options(with_search_path("postgresql://u@h/d", 'a b"c')) == [
        '-c search_path="a\\ b""c"'
    ]


def test_with_search_path_key_value() -> None:
    dsn = with_search_path("host=/tmp dbname=d options='-c work_mem=4MB'", "t_1")
    assert dsn == "host=/tmp dbname=d options='-c work_mem=4MB -c search_path=\"t_1\"'"
    assert parse(dsn) == DsnParts("/tmp", 5432, "d", parse(dsn).user)


def test_normalize_turns_a_keyword_dsn_into_a_url() -> None:
    url = normalize("host=/tmp/pg port=5433 dbname=app user=me password='p@ss w:rd%'")
    assert url == "postgresql://me:p%40ss%20w%3Ard%25@/app?host=%2Ftmp%2Fpg&port=5433"
    parts = parse(url)
    assert (parts.host, parts.port, parts.database, parts.user) == ("/tmp/pg", 5433, "app", "me")
    assert password_of(url) == "p@ss w:rd%"
