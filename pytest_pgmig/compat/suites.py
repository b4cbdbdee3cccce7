"""Migrations a suite applies in its own fixtures, learned from one test and served to the next.

A pgdbm suite migrates each test's database itself, in a fixture: the same set, into a new
database, for every test. The first test of a given set of fixtures applies it for real;
what its set-up applied (which folder, module, schema and tracking table, in order, and the
status dicts returned) is kept. The next tests with the same fixtures get a copy of a
template database already holding those sets, and their set-up's calls are answered with
the same status dicts, without touching the database. A call in the test's body, a set-up
that applies something else, or changed files never meet a stale answer.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_pgmig.engine.files import fingerprint
from pytest_pgmig.engine.formats import load_migrations
from pytest_pgmig.errors import MigrationError
from pytest_pgmig.isolation.base import MigrationSet, Sets

TRACKING = "schema_migrations"  # pgdbm's default table, the engine's too


@dataclass(frozen=True)
class Call:
    """One ``apply_pending_migrations()``: what it applies, and where."""

    path: Path
    module: str
    schema: str | None
    table: str

    def migration_set(self) -> MigrationSet:
        return MigrationSet(
            self.module,
            self.path,
            schema=self.schema,
            table=None if self.table == TRACKING else self.table,
        )

    def describe(self) -> str:
        where = f" into schema {self.schema}" if self.schema else ""
        return f"{self.path} as module {self.module}{where}"


@dataclass(frozen=True)
class Learned:
    """What a test's set-up applied, with the status dicts it got and the files' state."""

    calls: tuple[Call, ...]
    results: tuple[dict[str, Any], ...]
    fingerprints: tuple[str, ...]
    schema: str | None = None  # the schema the fixture made for its manager

    def sets(self) -> Sets:
        made = (MigrationSet("", Path(), schema=self.schema),) if self.schema else ()
        return made + tuple(call.migration_set() for call in self.calls)

    def current(self) -> bool:
        """Whether every folder still holds the files it held (else: apply afresh)."""
        try:
            return self.fingerprints == _fingerprints(self.calls)
        except MigrationError:
            return False


@dataclass
class Place:
    """A database the test's fixtures made (``test_db``, each ``create_db``)."""

    database: str | None = None
    schema: str | None = None  # the schema made for its manager (``create_db(schema=)``)
    served: Learned | None = None  # what it already holds
    answered: int = 0
    calls: list[Call] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Active:
    """The test whose databases the suite's calls may meet."""

    key: Hashable
    nodeid: str
    in_body: bool = False
    places: dict[tuple[str, int], Place] = field(default_factory=dict)


@dataclass
class Suites:
    """This process's learned set-ups: by the fixtures (and fixture parameters) that ran,
    and which of the test's databases (``test_db``, the n-th ``create_db``)."""

    learned: dict[Hashable, Learned] = field(default_factory=dict)
    varying: set[Hashable] = field(default_factory=set)
    active: Active | None = None

    def place(self, item: pytest.Item, kind: str) -> tuple[tuple[str, int], Sets]:
        """A test's database of `kind` is being made: its name among the test's places, and
        the sets it should already hold."""
        if self.active is None or self.active.nodeid != item.nodeid:
            self.active = Active(setup_key(item), item.nodeid)
        active = self.active
        name = (kind, sum(1 for k, _ in active.places if k == kind))
        place = active.places[name] = Place()
        learned = self.learned.get((active.key, name))
        if learned is None or active.key in self.varying or active.in_body:
            return name, ()
        if not learned.current():
            del self.learned[(active.key, name)]
            return name, ()
        place.served = learned
        return name, learned.sets()

    def bind(self, name: tuple[str, int], database: str | None, schema: str | None = None) -> None:
        """The database the place got (None: a schema, where nothing is served), and the
        schema the fixture makes in it for its manager."""
        if self.active is not None and name in self.active.places:
            place = self.active.places[name]
            place.database, place.schema = database, schema
            if database is None:
                place.served = None

    async def apply(
        self,
        call: Call,
        database: Callable[[], Awaitable[str]],
        original: Callable[[], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """One suite call of ``apply_pending_migrations()``: answered from what its database
        already holds, or applied (and learned, in a set-up)."""
        active = self.active
        if active is None or active.in_body:
            return await original()
        current = await database()
        place = next((p for p in active.places.values() if p.database == current), None)
        if place is None:
            return await original()
        served = place.served
        if served is not None and place.answered < len(served.calls):
            expected = served.calls[place.answered]
            if expected != call:
                self.varying.add(active.key)
                raise MigrationError(
                    f"pytest-pgmig: {active.nodeid}'s database already holds what earlier "
                    f"tests with the same fixtures applied in their set-up "
                    f"({expected.describe()}), but this set-up applies {call.describe()}. "
                    "Its fixtures apply different migrations from test to test, so they are "
                    "no longer served from a template: the next tests migrate their own "
                    "databases.",
                    hint="Run this test again; it gets an empty database.",
                )
            place.answered += 1
            return copy.deepcopy(served.results[place.answered - 1])
        result = await original()
        if served is None and result.get("status") == "success":
            place.calls.append(call)
            place.results.append(copy.deepcopy(result))
        return result

    def setup_done(self, item: pytest.Item) -> None:
        """The test's body starts: learn its set-up, and check it met what was served."""
        active = self.active
        if active is None or active.nodeid != item.nodeid:
            return
        active.in_body = True
        for name, place in active.places.items():
            served = place.served
            if served is not None and place.answered < len(served.calls):
                self.varying.add(active.key)
                pytest.fail(
                    f"pytest-pgmig: {active.nodeid}'s database holds the migrations earlier "
                    f"tests with the same fixtures applied in their set-up "
                    f"({served.calls[0].describe()}), but this test's set-up did not apply "
                    "them. Its fixtures apply different migrations from test to test, so "
                    "they are no longer served from a template; run this test again: it "
                    "gets an empty database.",
                    pytrace=False,
                )
            made = place.calls or place.schema
            if served is None and made and (active.key, name) not in self.learned:
                try:
                    prints = _fingerprints(place.calls)
                except MigrationError:
                    continue
                self.learned[(active.key, name)] = Learned(
                    tuple(place.calls), tuple(place.results), prints, place.schema
                )

    def end(self, item: pytest.Item) -> None:
        if self.active is not None and self.active.nodeid == item.nodeid:
            self.active = None


def _fingerprints(calls: tuple[Call, ...] | list[Call]) -> tuple[str, ...]:
    return tuple(fingerprint(load_migrations(call.path)) for call in calls)


def setup_key(item: pytest.Item) -> Hashable:
    """What decides a test's set-up: its fixtures, and the parameters of those fixtures (a
    test's own ``parametrize`` arguments do not change what its fixtures do)."""
    own: set[str] = set()
    for mark in item.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if isinstance(names, str):
            names = [name.strip() for name in names.split(",")]
        indirect = mark.kwargs.get("indirect", False)
        for name in names:
            if indirect is True or (isinstance(indirect, (list, tuple)) and name in indirect):
                continue
            own.add(name)
    fixtures = tuple(name for name in getattr(item, "fixturenames", ()) if name not in own)
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    chosen = tuple(sorted((k, repr(v)) for k, v in params.items() if k not in own))
    return (fixtures, chosen)


SUITES = pytest.StashKey[Suites]()
