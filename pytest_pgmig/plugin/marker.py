"""The pgmig marker: checked against its signature, and merged into one test's plan."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pytest_pgmig.engine.formats import Reading
from pytest_pgmig.isolation.base import MigrationSet, Sets
from pytest_pgmig.plugin import settings
from pytest_pgmig.plugin.state import state_of

_PLAN = pytest.StashKey[tuple[Sets, str]]()


def pgmig(
    *,
    migrations: Any = None,
    module: str | None = None,
    scope: str | None = None,
    format: str | None = None,
) -> None:
    """The marker's signature: ``@pytest.mark.pgmig(migrations=..., module=..., scope=...,
    format=...)``.

    ``migrations``: a folder (``PATH`` or ``NAME=PATH``, relative to the test file) or a
    list of them; ``module``: the ``<lib>`` of module_name; ``scope``: ``test`` or
    ``worker``; ``format``: how its folders are read (``--pgmig-format``'s values).
    """


def _check(marker: pytest.Mark) -> None:
    """Fail the test clearly when its marker does not fit `pgmig`'s signature."""
    if marker.args:
        first = marker.args[0]
        pytest.fail(
            f"pgmig marker: takes keyword arguments only (migrations=, module=, scope=, format=), "
            f"got the positional argument {first!r}; write "
            f"@pytest.mark.pgmig(migrations={first!r})",
            pytrace=False,
        )
    try:
        pgmig(**marker.kwargs)
    except TypeError:
        unknown = sorted(set(marker.kwargs) - {"migrations", "module", "scope", "format"})
        pytest.fail(
            f"pgmig marker: unknown argument(s) {unknown}; it takes migrations=, module=, "
            "scope= and format=",
            pytrace=False,
        )


def plan(request: pytest.FixtureRequest) -> tuple[Sets, str]:
    """The migration sets and scope for this test, worked out once per test."""
    stash: pytest.Stash = request.node.stash
    found = stash.get(_PLAN, None)
    if found is None:
        found = stash[_PLAN] = _marker_plan(request, state_of(request.config).settings)
    return found


def _marker_plan(request: pytest.FixtureRequest, opts: settings.Settings) -> tuple[Sets, str]:
    """The migration sets and scope for this test: the configuration, or its pgmig marker."""
    sets: Sets = opts.migrations.value
    scope = opts.scope.value
    kwargs: dict[str, Any] = {}
    for marker in request.node.iter_markers("pgmig"):  # closest first
        _check(marker)
        for key, value in marker.kwargs.items():
            kwargs.setdefault(key, value)
    if not kwargs:
        return sets, scope
    try:
        fmt = kwargs.get("format")
        reading = opts.reading(None if fmt is None else settings.format_type(str(fmt)))
        if "migrations" in kwargs:
            sets = parse_migrations(
                kwargs["migrations"],
                Path(request.node.path).parent,
                state_of(request.config).checked_folders,
                reading,
            )
        elif fmt is not None:
            sets = tuple(dataclasses.replace(m, reading=reading) for m in sets)
            _check_folders(sets, state_of(request.config).checked_folders)
        if kwargs.get("module") is not None:
            sets = with_module(sets, str(kwargs["module"]), "pgmig marker")
        if kwargs.get("scope") is not None:
            scope = settings.scope_type(str(kwargs["scope"]))
    except settings.BadValue as exc:
        raise pytest.fail.Exception(f"pgmig marker: {exc}", pytrace=False) from None
    return sets, scope


def with_module(sets: Sets, module: str, who: str) -> Sets:
    """The one migrations folder of `sets` named `module` (the marker's and
    `pgmig_factory`'s ``module=``, as ``--pgmig-module``): with several folders, which one
    it names is not for us to guess."""
    try:
        lib = settings.module_type(module)
    except settings.BadValue as exc:
        raise pytest.fail.Exception(f"{who}: {exc}", pytrace=False) from None
    if len(sets) != 1:
        raise pytest.fail.Exception(
            f"{who}: module={module!r} needs exactly one migrations folder, this test has "
            f"{len(sets)}; name each folder as NAME=PATH in migrations= instead",
            pytrace=False,
        )
    return (dataclasses.replace(sets[0], module=lib),)


def parse_migrations(value: Any, base: Path, checked: set[MigrationSet], reading: Reading) -> Sets:
    """Migration sets from a marker's or `pgmig_factory`'s ``migrations=`` value."""
    specs = [value] if isinstance(value, (str, Path)) else list(value)
    sets = tuple(settings.parse_migration_spec(str(spec), base, reading) for spec in specs)
    _check_folders(sets, checked)
    return sets


def _check_folders(sets: Sets, checked: set[MigrationSet]) -> None:
    """Check each folder once a run: a bad one fails the test that names it."""
    for mset in sets:
        if mset not in checked:
            try:
                settings.check_migrations_folder(
                    mset.path, source="pgmig marker", reading=mset.reading
                )
            except pytest.UsageError as exc:
                raise pytest.fail.Exception(str(exc), pytrace=False) from None
            checked.add(mset)
