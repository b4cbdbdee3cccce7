"""Migration file discovery, ordering, decoding and checksums (no server)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pytest_pgmig.errors import MigrationError
from pytest_pgmig.files import checksum, load_migrations, parse_version


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
    assert "001_name.sql, V1__name.sql, 20251025120000_name.sql" in message
    assert "Rename" in message


def test_version_and_name_order_disagreeing_is_an_error(tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"2_a.sql": "SELECT 1;", "10_b.sql": "SELECT 2;"})
    with pytest.raises(MigrationError) as info:
        load_migrations(folder)
    message = str(info.value)
    assert "'2_a.sql'" in message and "'10_b.sql'" in message
    assert "Zero-pad" in message and "02_name.sql" in message


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
