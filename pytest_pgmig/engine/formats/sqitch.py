"""sqitch: the order of ``sqitch.plan``, ``deploy/`` as ups, ``revert/`` as downs, ``verify/``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pytest_pgmig.engine.files import MigrationFile, Script
from pytest_pgmig.engine.formats.common import Listing, Texts, failure, migration
from pytest_pgmig.engine.sqltext import line_of, split

PLAN = "sqitch.plan"
# a change: its name, optional [dependencies], then the planner's timestamp and name
_CHANGE = re.compile(r"^([+-]?)([^\s@#\[\]:]+)\s*(?:\[([^\]]*)\])?\s+\d{4}-\d\d-\d\dT")
_TAG = re.compile(r"^@(\S+)\s")


_TOP_DIR = re.compile(r"^\s*top_dir\s*=\s*(\S+)\s*$", re.MULTILINE)


def root(folder: Path) -> Path | None:
    """The sqitch project a folder belongs to: itself, the parent of its ``deploy/``, or the
    ``top_dir`` its ``sqitch.conf`` names."""
    conf = folder / "sqitch.conf"
    if conf.is_file():  # sqitch reads its conf first: a plan beside it may be a stale copy
        top = _TOP_DIR.search(conf.read_text(encoding="utf-8", errors="replace"))
        if top is not None and (folder / top.group(1) / PLAN).is_file():
            return (folder / top.group(1)).resolve()
    for candidate in (folder, folder.parent):
        if (candidate / PLAN).is_file() and (candidate == folder or folder.name == "deploy"):
            return candidate
    return None


def detect(entries: Listing, texts: Texts) -> str | None:
    """Why `entries` is a sqitch project (its plan file), or None."""
    return PLAN if any(e.rel == PLAN for e in entries) else None


@dataclass(frozen=True)
class _Change:
    name: str  # as tracked: "users", or "users@v1.0" for a reworked change's earlier version
    line: int
    requires: tuple[str, ...]


def load(entries: Listing, texts: Texts) -> list[MigrationFile]:
    """The plan's changes in plan order, each deploy script with its revert and verify."""
    by_rel = {e.rel: e for e in entries}
    plan = by_rel.get(PLAN)
    if plan is None:
        raise failure(
            "sqitch project",
            f"no {PLAN} beside deploy/",
            f"Point the option at the folder that holds {PLAN}.",
        )
    result = []
    for change in _changes(texts(plan), plan.path):
        deploy = by_rel.get(f"deploy/{change.name}.sql")
        if deploy is None:
            raise failure(
                f"sqitch change {change.name} ({PLAN} line {change.line})",
                f"deploy/{change.name}.sql does not exist",
                "Restore the deploy script, or remove the change from the plan.",
                file=f"deploy/{change.name}.sql",
            )
        scripts = {}
        for kind in ("revert", "verify"):
            entry = by_rel.get(f"{kind}/{change.name}.sql")
            if entry is not None:
                scripts[kind] = Script(entry.rel, entry.path, texts(entry))
        _no_psql(deploy.rel, texts(deploy))
        result.append(
            migration(
                change.name,
                deploy.path,
                change.name,
                texts(deploy),
                down=scripts.get("revert"),
                verify=scripts.get("verify"),
            )
        )
    return result


def _no_psql(name: str, text: str) -> None:
    """Refuse a psql meta-command (``\\set``, ``\\i``): sqitch runs scripts through psql,
    which reads them; the server, which pytest-pgmig sends scripts to, does not."""
    for statement in split(text):
        if text.startswith("\\", statement.start):
            command = text[statement.start :].split(None, 1)[0]
            line = line_of(text, statement.start)
            raise failure(
                f"sqitch script {name} line {line}",
                f"{command} is a psql meta-command: sqitch runs its scripts through psql, "
                "pytest-pgmig sends them to the server, which knows no such command",
                "Write the line as SQL (a \\set variable as a literal, a \\i file inlined), or "
                "apply this project in a fixture of your own through psql.",
                file=name,
            )


def _changes(text: str, where: Path) -> list[_Change]:
    """The plan's changes; a change reworked later is named ``name@tag`` by the first tag
    after it, as sqitch names its scripts; dependencies must come earlier in the plan."""
    changes: list[tuple[str, int, tuple[str, ...]]] = []
    untagged: dict[str, int] = {}  # change -> index in `changes`, since the last tag
    renamed: dict[int, str] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", "%")):
            continue
        tag = _TAG.match(line)
        if tag is not None:
            for index in untagged.values():
                renamed.setdefault(index, tag.group(1))
            untagged.clear()
            continue
        match = _CHANGE.match(line)
        if match is None:
            raise failure(
                f"{where} line {number}",
                f"cannot read {raw.strip()!r} as a change or a tag",
                "Fix the line as sqitch writes it: 'name [deps] 2024-01-01T00:00:00Z planner "
                "<email> # note'.",
                file=PLAN,
            )
        if match.group(1) == "-":
            raise failure(
                f"{where} line {number}",
                f"the plan reverts {match.group(2)} ('-' change), which pytest-pgmig does not run",
                "Deploy the plan to a tag before the revert, or drop the '-' line.",
                file=PLAN,
            )
        requires = tuple(
            dep
            for dep in (match.group(3) or "").split()
            if not dep.startswith("!") and ":" not in dep
        )
        untagged[match.group(2)] = len(changes)
        changes.append((match.group(2), number, requires))
    result = []
    seen: set[str] = set()
    for index, (name, number, requires) in enumerate(changes):
        for dep in requires:
            if dep.split("@", 1)[0] not in seen:
                raise failure(
                    f"{where} line {number}",
                    f"change {name} requires {dep}, which the plan does not deploy before it",
                    "Move the required change above it in the plan, as sqitch requires.",
                    file=PLAN,
                )
        seen.add(name)
        tracked = (
            f"{name}@{renamed[index]}" if index in renamed and _reworked(changes, index) else name
        )
        result.append(_Change(tracked, number, requires))
    return result


def _reworked(changes: list[tuple[str, int, tuple[str, ...]]], index: int) -> bool:
    """Whether the change at `index` appears again later in the plan (sqitch rework)."""
    return any(name == changes[index][0] for name, _, _ in changes[index + 1 :])
