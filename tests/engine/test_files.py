"""Migration file discovery, ordering, decoding and checksums (no server)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pytest_pgmig.engine.files import checksum, parse_version
from pytest_pgmig.engine.formats import load_migrations
from pytest_pgmig.errors import MigrationError


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content if isinstance(content, bytes) else content.encode()
        (folder / name).write_bytes(data)
    return folder


def pgdbm_checksum(content: str) -> str:
    # pgdbm 0.5.0's formula, restated independently.
    return hashlib.sha256(content.replace("\r\n", "\n").strip().encode()).hexdigest()


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("001_users.sql", "001"),
        ("1_users.sql", "1"),
        ("V7__users.sql", "7"),
        ("20251025120000_users.sql", "20251025120000"),
        ("20251025_120000_users.sql", "20251025120000"),
        ("users.sql", None),
        ("V1_users.sql", None),
        ("001-users.sql", None),
        ("001_.sql", None),
        ("V1.2__users.sql", "1.2"),
        ("V1_2__users.sql", "1.2"),
        ("V2.10.3__users.sql", "2.10.3"),
        ("000001_init.up.sql", "000001"),
        ("000001_init.down.sql", None),
        ("V1.__users.sql", None),
    ],
)
def test_accepted_patterns(name: str, version: str | None) -> None:
    assert parse_version(name) == version


def test_order_and_ignored_entries(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "m",
        {
            "002_b.sql": "SELECT 2;",
            "001_a.sql": "SELECT 1;",
            ".003_hidden.sql": "junk",
            "README.md": "junk",
            "notes.txt": "junk",
        },
    )
    (folder / "004_dir.sql").mkdir()
    assert [m.filename for m in load_migrations(folder)] == ["001_a.sql", "002_b.sql"]


def test_create_migration_names_sort_with_compact_timestamps(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "m",
        {"20251024235959_a.sql": "SELECT 1;", "20251025_120000_b.sql": "SELECT 2;"},
    )
    assert [m.version for m in load_migrations(folder)] == ["20251024235959", "20251025120000"]


def test_unknown_sql_name_is_an_error_naming_it_and_the_patterns(tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"001_a.sql": "SELECT 1;", "seed.sql": "SELECT 2;"})
    with pytest.raises(MigrationError) as info:
        load_migrations(folder)
    message = str(info.value)
    assert "'seed.sql'" in message
    assert "001_name.sql, V1__name.sql" in message
    assert "20251025120000_name.sql" in message and "NAME.up.sql / NAME.down.sql" in message
    assert "Rename" in message


def test_versions_are_applied_in_numeric_order_not_name_order(tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"2_a.sql": "SELECT 1;", "10_b.sql": "SELECT 2;"})
    assert [m.filename for m in load_migrations(folder)] == ["2_a.sql", "10_b.sql"]


def test_flyway_dotted_versions_compare_as_numbers(tmp_path: Path) -> None:
    names = [
        "V1__init.sql",
        "V1.1__a.sql",
        "V1_2__b.sql",
        "V1.10__c.sql",
        "V2__d.sql",
        "V2.9.1__e.sql",
        "V2.10__f.sql",
        "V10__g.sql",
        "V12__h.sql",
    ]
    folder = write(tmp_path / "m", {name: "SELECT 1;" for name in reversed(names)})
    loaded = load_migrations(folder)
    assert [m.filename for m in loaded] == names
    assert [m.version for m in loaded][:4] == ["1", "1.1", "1.2", "1.10"]


def test_flyway_trailing_zero_is_the_same_version(tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"V1__a.sql": "SELECT 1;", "V1.0__b.sql": "SELECT 2;"})
    with pytest.raises(MigrationError, match=r"'V1.0__b.sql' and 'V1__a.sql' share version 1"):
        load_migrations(folder)


def test_up_files_are_migrations_and_down_files_their_reverse(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "m",
        {
            "20220123205937_initial.up.sql": "CREATE TABLE t (id int);",
            "20220123205937_initial.down.sql": "DROP TABLE t;",
            "20220125145204_keys.up.sql": "ALTER TABLE t ADD PRIMARY KEY (id);",
            "20220125145204_keys.down.sql": "ALTER TABLE t DROP CONSTRAINT t_pkey;",
            "20220301000000_no_down.up.sql": "SELECT 1;",
            "20220302000000_plain.sql": "SELECT 2;",
        },
    )
    loaded = load_migrations(folder)
    assert [m.filename for m in loaded] == [
        "20220123205937_initial.up.sql",
        "20220125145204_keys.up.sql",
        "20220301000000_no_down.up.sql",
        "20220302000000_plain.sql",
    ]
    assert [m.down.name if m.down else None for m in loaded] == [
        "20220123205937_initial.down.sql",
        "20220125145204_keys.down.sql",
        None,
        None,
    ]


def test_down_file_without_its_up_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "m",
        {"001_a.up.sql": "SELECT 1;", "001_a.down.sql": "SELECT 2;", "002_b.down.sql": "x"},
    )
    with pytest.raises(MigrationError) as info:
        load_migrations(folder)
    assert "'002_b.down.sql'" in str(info.value) and "'002_b.up.sql'" in str(info.value)
    assert info.value.migration_file == "002_b.down.sql"


def test_shared_version_is_an_error(tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"001_a.sql": "SELECT 1;", "1_b.sql": "SELECT 2;"})
    with pytest.raises(MigrationError, match=r"'001_a.sql' and '1_b.sql' share version 1"):
        load_migrations(folder)


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="does not exist") as info:
        load_migrations(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


def test_bom_is_dropped_and_crlf_normalised(tmp_path: Path) -> None:
    body = "CREATE TABLE t (id int);\nSELECT 1;\n"
    folder = write(
        tmp_path / "m",
        {
            "001_lf.sql": body,
            "002_crlf.sql": body.replace("\n", "\r\n").encode(),
            "003_bom.sql": b"\xef\xbb\xbf" + body.encode(),
        },
    )
    lf, crlf, bom = load_migrations(folder)
    assert lf.checksum == crlf.checksum == bom.checksum == pgdbm_checksum(body)
    assert crlf.content == body
    assert bom.content == body
    assert crlf.checksum == pgdbm_checksum(body.replace("\n", "\r\n"))


def test_non_utf8_is_an_error_with_the_byte_offset(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "m", {"001_latin1.sql": "SELECT 1;\nSELECT 'café';".encode("latin-1")}
    )
    with pytest.raises(MigrationError) as info:
        load_migrations(folder)
    assert info.value.migration_file == "001_latin1.sql"
    assert "byte offset 21" in str(info.value) and "line 2" in str(info.value)
    assert "UTF-8" in str(info.value)


def test_unterminated_sql_is_an_error_with_the_line(tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"001_a.sql": "SELECT 1;\nSELECT 'oops;\n"})
    with pytest.raises(MigrationError, match="line 2: unterminated string literal") as info:
        load_migrations(folder)
    assert info.value.line == 2
    assert info.value.excerpt is not None and "^" in info.value.excerpt


def test_cache_is_reused_and_notices_changes(tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"001_a.sql": "SELECT 1;"})
    old = (folder / "001_a.sql").stat().st_mtime_ns - 10_000_000_000
    os.utime(folder / "001_a.sql", ns=(old, old))
    first = load_migrations(folder)
    assert load_migrations(folder) is first
    # Same size, rewritten at once: caught because the file is fresh.
    (folder / "001_a.sql").write_text("SELECT 2;")
    assert load_migrations(folder)[0].checksum == checksum("SELECT 2;")
    write(folder, {"002_b.sql": "SELECT 3;"})
    assert [m.filename for m in load_migrations(folder)] == ["001_a.sql", "002_b.sql"]
