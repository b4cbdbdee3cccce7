"""yoyo-migrations: ``.sql`` files ordered by ``-- depends:``, ``.rollback.sql`` as downs."""

from __future__ import annotations

import re

from pytest_pgmig.engine.files import MigrationFile, Script
from pytest_pgmig.engine.formats.common import Listing, Texts, failure, migration, refused

ROLLBACK = ".rollback.sql"
# yoyo reads directives from the comment lines at the top of the file
_DIRECTIVE = re.compile(r"^--\s*(depends|transactional)\s*:\s*(.*?)\s*$", re.IGNORECASE)


def detect(entries: Listing, texts: Texts) -> str | None:
    """Why `entries` is a yoyo folder (a rollback file, a ``-- depends:`` header, a yoyo
    Python migration), or None."""
    for entry in entries:
        if entry.top and entry.rel.endswith(ROLLBACK):
            return f"{entry.rel} (yoyo rollback)"
    for entry in entries:
        if (
            entry.top
            and entry.rel.endswith(".sql")
            and _directives(texts.peek(entry)).get("depends")
        ):
            return f"'-- depends:' in {entry.rel}"
        if entry.top and entry.rel.endswith(".py") and "from yoyo import" in texts.peek(entry):
            return f"{entry.rel} (a yoyo Python migration)"
    return None


def load(entries: Listing, texts: Texts) -> list[MigrationFile]:
    """The migrations in yoyo's order: by id (the file name without ``.sql``), each moved
    after the migrations it depends on."""
    top = {e.rel: e for e in entries if e.top}
    for entry in top.values():
        if entry.rel.endswith(".py") and "from yoyo import" in texts(entry):
            raise failure(
                f"yoyo migration {entry.path}",
                "it is a Python migration (yoyo's step() in a .py file): pytest-pgmig runs SQL "
                "migrations only, and will not apply the ones after it as if it had run",
                "Write it as a .sql migration (its rollback as .rollback.sql).",
                file=entry.rel,
            )
    ids = sorted(
        rel[: -len(".sql")]
        for rel in top
        if rel.endswith(".sql") and not rel.endswith(ROLLBACK) and not rel.startswith("post-apply")
    )
    depends = {id_: _directives(texts(top[f"{id_}.sql"])).get("depends", "").split() for id_ in ids}
    result = []
    for id_ in _ordered(ids, depends):
        entry = top[f"{id_}.sql"]
        text = texts(entry)
        transactional = _directives(text).get("transactional", "true").lower()
        reason = "-- transactional: false" if transactional in ("false", "no", "0") else None
        rollback = top.get(f"{id_}{ROLLBACK}")
        down = None if rollback is None else Script(rollback.rel, rollback.path, texts(rollback))
        result.append(migration(entry.rel, entry.path, id_, text, down=down, no_transaction=reason))
    return result


def _directives(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break
        match = _DIRECTIVE.match(stripped)
        if match is not None:
            found[match.group(1).lower()] = match.group(2)
    return found


def _ordered(ids: list[str], depends: dict[str, list[str]]) -> list[str]:
    """`ids` in order, each after what it depends on (a depth-first walk, as yoyo's)."""
    done: list[str] = []
    state: dict[str, str] = {}

    def visit(id_: str, path: tuple[str, ...]) -> None:
        if state.get(id_) == "done":
            return
        if state.get(id_) == "visiting":
            cycle = " -> ".join((*path, id_))
            raise _bad(id_, f"its dependencies form a cycle: {cycle}")
        state[id_] = "visiting"
        for dep in depends[id_]:
            if dep not in depends:
                raise _bad(id_, f"it depends on {dep}, which is not in the folder")
            visit(dep, (*path, id_))
        state[id_] = "done"
        done.append(id_)

    for id_ in ids:
        visit(id_, ())
    return done


def _bad(id_: str, what: str) -> Exception:
    return refused(
        "yoyo",
        f"{id_}.sql",
        what,
        "Fix the '-- depends:' line to name migrations of this folder (file names without .sql).",
    )
