"""Flyway: ``V`` versioned, ``R__`` repeatable and ``U`` undo scripts; ``.conf``; placeholders."""

from __future__ import annotations

import re
from collections.abc import Mapping

from pytest_pgmig.engine.files import MigrationFile, Script, version_key
from pytest_pgmig.engine.formats.common import (
    Entry,
    Listing,
    Texts,
    claim,
    failure,
    migration,
    refused,
)

_NAME = re.compile(r"([VUR])(\d+(?:[._]\d+)*)?__(.+)\.sql")
_PLACEHOLDER = re.compile(r"\$\{([^}\s]+)\}")
_NO_TRANSACTION = re.compile(r"^\s*executeInTransaction\s*=\s*false\s*$", re.MULTILINE | re.I)
# Flyway's built-in placeholders that mean something here; the schema is the test's own,
# known only when the file runs, so it becomes the engine's bare-name template
_BUILT_IN = {
    "flyway:defaultSchema": "{{schema_name}}",
    "flyway:table": "schema_migrations",
    "flyway:environment": "test",
}


def detect(entries: Listing, texts: Texts) -> str | None:
    """Why `entries` is a Flyway folder (a repeatable, an undo, a script's ``.conf``, or a
    ``V`` script with a placeholder), or None: a folder of ``V`` files alone reads the same
    as plain files."""
    for entry in entries:
        match = _NAME.fullmatch(entry.name)
        if match is not None and match.group(1) in "RU":
            return f"{entry.rel} ({'repeatable' if match.group(1) == 'R' else 'undo'} script)"
        if entry.name.endswith(".sql.conf") or entry.name in ("flyway.conf", "flyway.toml"):
            return entry.rel
    for entry in entries:
        match = _NAME.fullmatch(entry.name)
        if match is not None and _PLACEHOLDER.search(texts.peek(entry)):
            return f"a ${{placeholder}} in {entry.rel}"
    return None


def load(
    entries: Listing, texts: Texts, placeholders: Mapping[str, str] | None = None
) -> list[MigrationFile]:
    """Versioned scripts by version, then repeatables by description (Flyway's order);
    ``U`` scripts are the downs of their version."""
    values = {**_BUILT_IN, **(placeholders or {})}
    confs = {e.rel[: -len(".conf")]: e for e in entries if e.name.endswith(".sql.conf")}
    versioned: dict[tuple[int, ...], tuple[Entry, str]] = {}
    undo: dict[tuple[int, ...], Entry] = {}
    repeatable: dict[str, Entry] = {}
    names: dict[str, dict[object, str]] = {"V": {}, "U": {}}
    for entry in entries:
        match = _NAME.fullmatch(entry.name)
        if match is None:
            continue
        kind, raw, description = match.groups()
        if kind == "R":
            if raw:
                raise _refused(entry, "a repeatable script takes no version (R__name.sql)")
            repeatable[f"{description}\0{entry.rel}"] = entry
            continue
        if not raw:
            raise _refused(entry, f"a {kind} script needs a version ({kind}1__name.sql)")
        version = raw.replace("_", ".")
        key = version_key(version)
        claim(names[kind], key, entry.rel, "Flyway", version)
        if kind == "U":
            undo[key] = entry
        else:
            versioned[key] = (entry, version)
    result = []
    for key in sorted(versioned):
        entry, version = versioned[key]
        down = undo.get(key)
        result.append(
            _script_migration(entry, version, texts, values, confs, down=down, repeatable=False)
        )
    for name in sorted(repeatable):
        entry = repeatable[name]
        result.append(_script_migration(entry, "R", texts, values, confs, repeatable=True))
    return result


def _script_migration(
    entry: Entry,
    version: str,
    texts: Texts,
    values: Mapping[str, str],
    confs: Mapping[str, Entry],
    *,
    down: Entry | None = None,
    repeatable: bool,
) -> MigrationFile:
    conf = confs.get(entry.rel)
    reason = None
    if conf is not None and _NO_TRANSACTION.search(texts(conf)):
        reason = f"executeInTransaction=false in {conf.rel}"
    undo = None
    if down is not None:
        undo = Script(down.rel, down.path, _replace(down, texts(down), values))
    up = _replace(entry, texts(entry), values)
    return migration(
        entry.rel, entry.path, version, up, down=undo, no_transaction=reason, repeatable=repeatable
    )


def _replace(entry: Entry, text: str, values: Mapping[str, str]) -> str:
    """``${name}`` replaced as Flyway replaces it; one without a value is an error there too."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "flyway:filename":
            return entry.name
        if name in values:
            return values[name]
        raise failure(
            f"Flyway migration {entry.rel}",
            f"no value for placeholder ${{{name}}} (Flyway would refuse to run it)",
            f"Give it a value: ini pgmig_placeholders = {name}=VALUE (one a line), or env "
            f"PGMIG_PLACEHOLDERS='{name}=VALUE'.",
            file=entry.rel,
        )

    return _PLACEHOLDER.sub(value, text) if "${" in text else text


def _refused(entry: Entry, what: str) -> Exception:
    return refused(
        "Flyway",
        entry.rel,
        what,
        "Rename the script as Flyway's documentation names them: V<version>__<name>.sql, "
        "U<version>__<name>.sql or R__<name>.sql.",
    )
