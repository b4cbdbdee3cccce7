"""Resolve the plugin's settings from the command line, the environment and the ini file."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

from pytest_pgmig.engine import formats
from pytest_pgmig.errors import MigrationError
from pytest_pgmig.isolation.base import MigrationSet
from pytest_pgmig.servers.info import SOURCES

T = TypeVar("T")

SCOPES = ("test", "worker")
ISOLATIONS = ("auto", "schema", "database")
DEFAULT_STATEMENT_TIMEOUT = 60.0
# pgdbm 0.5.0 stores module_name in VARCHAR(100); the schema name takes up to 63 of those.
MAX_MODULE_LEN = 36


@dataclass(frozen=True)
class Setting(Generic[T]):
    """A resolved value and where it came from, for the report header."""

    value: T
    source: str

    def __str__(self) -> str:
        return f"{self.value} [{self.source}]"


@dataclass(frozen=True)
class Settings:
    """Everything the plugin was told, each with its source."""

    migrations: Setting[tuple[MigrationSet, ...]]
    dsn: Setting[str | None]
    server: Setting[str]
    scope: Setting[str]
    keep: Setting[bool]
    statement_timeout: Setting[float]
    lock: bool = False
    module: Setting[str | None] = field(default_factory=lambda: Setting(None, "default"))
    ddl_log: Setting[bool] = field(default_factory=lambda: Setting(False, "default"))
    keep_registry: Setting[bool] = field(default_factory=lambda: Setting(False, "default"))
    isolation: Setting[str] = field(default_factory=lambda: Setting("auto", "default"))
    check_down: Setting[bool] = field(default_factory=lambda: Setting(True, "default"))
    check_idempotent: Setting[bool] = field(default_factory=lambda: Setting(False, "default"))
    check_models: Setting[bool] = field(default_factory=lambda: Setting(False, "default"))
    format: Setting[str] = field(default_factory=lambda: Setting("auto", "default"))
    alembic_env: Setting[tuple[tuple[str, str], ...]] = field(
        default_factory=lambda: Setting((), "default")
    )
    placeholders: Setting[tuple[tuple[str, str], ...]] = field(
        default_factory=lambda: Setting((), "default")
    )

    def reading(self, format: str | None = None) -> formats.Reading:
        """How to read a migrations folder: the configured format (or `format`), and the
        placeholders."""
        return formats.Reading(format or self.format.value, self.placeholders.value)


def scope_type(value: str) -> str:
    """argparse `type=` converter: reject an unknown scope with the accepted ones."""
    return _choice("--pgmig-scope", value, SCOPES)


def isolation_type(value: str) -> str:
    """argparse `type=` converter for --pgmig-isolation."""
    return _choice("--pgmig-isolation", value, ISOLATIONS)


def format_type(value: str) -> str:
    """argparse `type=` converter for --pgmig-format."""
    return _choice("--pgmig-format", value, formats.FORMATS)


def placeholders_type(value: str) -> tuple[tuple[str, str], ...]:
    """``NAME=VALUE`` pairs, one a line (ini) or ``;``-separated (env), for ``${NAME}``.

    >>> placeholders_type("owner=app; region = eu")
    (('owner', 'app'), ('region', 'eu'))
    """
    pairs = []
    for item in re.split(r"[;\n]", value):
        if not item.strip():
            continue
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise _bad(f"invalid placeholder {item.strip()!r}: write NAME=VALUE")
        pairs.append((name.strip(), text.strip()))
    return tuple(pairs)


def server_type(value: str) -> str:
    """argparse `type=` converter for --pgmig-server."""
    return _choice("--pgmig-server", value, SOURCES)


_ON = ("on", "1", "true", "yes")
_OFF = ("off", "0", "false", "no")


def switch_type(value: str) -> bool:
    """An on/off setting's value from the environment or the ini file.

    >>> switch_type("Off"), switch_type("yes")
    (False, True)
    """
    normalised = value.strip().lower()
    if normalised not in _ON + _OFF:
        raise _bad(f"invalid value {value!r}: use on or off")
    return normalised in _ON


def timeout_type(value: str) -> float:
    """argparse `type=` converter for a timeout in seconds (0 turns it off)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds < 0:
        raise _bad(f"invalid timeout {value!r}: give a number of seconds, e.g. 30 (0 means none)")
    return seconds


def module_type(value: str) -> str:
    """Normalise a module name to a lower-case identifier, or reject what cannot be one."""
    name = _identifier(value)
    if not name:
        raise _bad(f"invalid module name {value!r}: use letters, digits and underscores")
    if len(name) > MAX_MODULE_LEN:
        raise _bad(
            f"module name {value!r} is {len(name)} characters long; "
            f"use at most {MAX_MODULE_LEN} (it is followed by the schema name in module_name)"
        )
    return name


def _choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    normalised = value.strip().lower()
    if normalised not in choices:
        raise _bad(f"invalid {option} value {value!r}: choose one of {', '.join(choices)}")
    return normalised


class BadValue(argparse.ArgumentTypeError):
    """A bad option or marker value; argparse shows its text after the option name."""


def _bad(message: str) -> BadValue:
    return BadValue(message)


def default_module(path: Path) -> str:
    """The `<lib>` for a migrations folder: the name of the folder that holds it.

    A default must never fail: a long or odd folder name is shortened, not rejected.
    """
    name = _identifier(path.resolve().parent.name)
    return name[:MAX_MODULE_LEN].rstrip("_") or "app"


def _identifier(value: str) -> str:
    """`value` as a lower-case SQL identifier ("" when nothing of it is usable)."""
    name = re.sub(r"[^0-9a-z_]+", "_", value.strip().lower()).strip("_")
    return f"m_{name}" if name[:1].isdigit() else name


def parse_migration_spec(
    spec: str, base: Path, reading: formats.Reading = formats.DEFAULT_READING
) -> MigrationSet:
    """Read `PATH` or `NAME=PATH`; relative paths count from `base`."""
    name, sep, raw = spec.partition("=")
    if not sep or "/" in name or os.sep in name:
        name, raw = "", spec
    path = Path(os.path.expanduser(raw.strip()))
    if not path.is_absolute():
        path = base / path
    path = path.resolve()
    module = module_type(name) if name.strip() else default_module(path)
    return MigrationSet(module=module, path=path, reading=reading)


def check_migrations_folder(
    path: Path, *, source: str, reading: formats.Reading = formats.DEFAULT_READING
) -> formats.Detection:
    """Fail with the fix when a configured migrations folder cannot serve; its format."""
    if reading.alembic:
        return _check_alembic(path, source)
    where = f"pgmig migrations folder {str(path)!r} (from {source})"
    if not path.exists():
        raise pytest.UsageError(
            f"{where} does not exist. Fix the path, or create the folder and put your "
            "NNN_name.sql migrations in it."
        )
    if not path.is_dir():
        raise pytest.UsageError(f"{where} is not a folder: point it at the folder of .sql files.")
    try:
        found = formats.detect(path, reading)
        if found.format != "files":
            # what the tool itself would refuse fails the run now (a plain folder's bad
            # files fail its tests, naming file and line, as they always have)
            formats.load_migrations(path, reading)
        has_sql = any(p.suffix == ".sql" and p.is_file() for p in found.root.iterdir())
    except OSError as exc:
        raise pytest.UsageError(
            f"{where} cannot be read ({exc.strerror}): check its permissions."
        ) from None
    except MigrationError as exc:
        raise pytest.UsageError(f"{where}: {exc}") from None
    if found.format == "files" and not has_sql:
        raise pytest.UsageError(
            f"{where} holds no .sql files. Add migrations such as 001_create_users.sql, "
            "or point the option at the folder that holds them."
        )
    return found


def _check_alembic(ini: Path, source: str) -> formats.Detection:
    """An Alembic history's ``alembic.ini`` must be there, and Alembic installed."""
    where = f"pgmig Alembic history {str(ini)!r} (from {source})"
    if not ini.is_file():
        raise pytest.UsageError(
            f"{where} does not exist: point --pgmig-alembic at your alembic.ini, or the folder "
            "that holds it."
        )
    try:
        import alembic  # noqa: F401
    except ImportError:
        raise pytest.UsageError(
            f"{where}: Alembic is not installed. Install it: pip install 'pytest-pgmig[alembic]'."
        ) from None
    return formats.Detection(formats.ALEMBIC, ini.name, ini.parent)


def _ini_source(config: pytest.Config) -> str:
    inipath = config.inipath
    return f"ini {inipath.name}" if inipath is not None else "ini"


class _Sources:
    """Where a setting `pgmig_x` can come from: option `pgmig_x`, env `PGMIG_X`, ini `pgmig_x`."""

    def __init__(self, config: pytest.Config, env: Mapping[str, str]) -> None:
        self.config = config
        self.env = env
        self.ini = _ini_source(config)

    def pick(self, name: str, convert: Any, default: Any, *, env: bool = True) -> Setting[Any]:
        """The setting from the first source that gives it; an ini list is read as lines,
        an ini switch as on."""
        cli = self.config.getoption(name, None)
        if cli is not None:
            return Setting(cli, "cli")
        env_name = name.upper()
        if env and self.env.get(env_name, "").strip():
            return Setting(_convert(convert, self.env[env_name], env_name), f"env {env_name}")
        raw = self.config.getini(name)
        if raw is True:
            return Setting(True, self.ini)
        if isinstance(raw, list):
            raw = "\n".join(raw)
        if isinstance(raw, str) and raw.strip():
            return Setting(_convert(convert, raw, name), self.ini)
        return Setting(default, "default")


def resolve(config: pytest.Config, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve every setting, CLI first, then environment, then ini, then the default."""
    sources = _Sources(config, os.environ if environ is None else environ)
    module = sources.pick("pgmig_module", module_type, None)
    fmt = sources.pick("pgmig_format", format_type, "auto")
    placeholders = sources.pick("pgmig_placeholders", placeholders_type, ())
    reading = formats.Reading(fmt.value, placeholders.value)
    migrations = _resolve_migrations(sources, reading)
    alembic = _resolve_migrations(sources, formats.Reading(formats.ALEMBIC), "pgmig_alembic")
    alembic = Setting(
        tuple(dataclasses.replace(m, path=_alembic_ini(m.path)) for m in alembic.value),
        alembic.source,
    )
    if alembic.value:
        source = migrations.source if migrations.value else alembic.source
        if migrations.value and alembic.source != migrations.source:
            source = f"{migrations.source}, {alembic.source}"
        migrations = Setting(migrations.value + alembic.value, source)
    migrations = _checked_migrations(migrations, module)
    return Settings(
        migrations=migrations,
        module=module,
        dsn=sources.pick("pgmig_dsn", str, None),
        server=sources.pick("pgmig_server", server_type, "auto"),
        scope=sources.pick("pgmig_scope", scope_type, "test"),
        keep=sources.pick("pgmig_keep", switch_type, False, env=False),
        statement_timeout=sources.pick(
            "pgmig_statement_timeout", timeout_type, DEFAULT_STATEMENT_TIMEOUT
        ),
        lock=bool(config.getoption("pgmig_lock")),
        ddl_log=sources.pick("pgmig_ddl_log", switch_type, False),
        keep_registry=sources.pick("pgmig_keep_registry", switch_type, False),
        isolation=sources.pick("pgmig_isolation", isolation_type, "auto"),
        check_down=sources.pick("pgmig_check_down", switch_type, True),
        check_idempotent=sources.pick("pgmig_check_idempotent", switch_type, False),
        check_models=sources.pick("pgmig_check_models", switch_type, False),
        format=fmt,
        placeholders=placeholders,
        alembic_env=sources.pick("pgmig_alembic_env", placeholders_type, ()),
    )


def _checked_migrations(
    migrations: Setting[tuple[MigrationSet, ...]], module: Setting[str | None]
) -> Setting[tuple[MigrationSet, ...]]:
    """Apply --pgmig-module to the one folder, check every folder and that modules differ."""
    if module.value is not None:
        if len(migrations.value) > 1:
            raise pytest.UsageError(
                f"--pgmig-module {module.value!r} ({module.source}) names one module, but "
                f"{len(migrations.value)} migrations folders are configured: name each one "
                "as NAME=PATH instead."
            )
        migrations = Setting(
            tuple(dataclasses.replace(m, module=module.value) for m in migrations.value),
            migrations.source,
        )
    for mset in migrations.value:
        check_migrations_folder(mset.path, source=migrations.source, reading=mset.reading)
    modules = [m.module for m in migrations.value]
    if len(set(modules)) != len(modules):
        raise pytest.UsageError(
            f"two migrations folders share the module name among {modules}: give each its own "
            "name with NAME=PATH."
        )
    return migrations


def _alembic_ini(path: Path) -> Path:
    return path / "alembic.ini" if path.is_dir() else path


def _convert(convert: Any, raw: str, where: str) -> Any:
    try:
        return convert(raw.strip())
    except BadValue as exc:
        raise pytest.UsageError(f"{exc} (from {where})") from None


def _resolve_migrations(
    sources: _Sources, reading: formats.Reading, name: str = "pgmig_migrations"
) -> Setting[tuple[MigrationSet, ...]]:
    """The sets of `--pgmig-migrations` (or `--pgmig-alembic`, with `name`), CLI first."""
    config, env = sources.config, sources.env
    rootdir = config.inipath.parent if config.inipath is not None else config.rootpath
    cwd = Path(config.invocation_params.dir)

    def parse_all(specs: list[str], base: Path, source: str) -> Setting[tuple[MigrationSet, ...]]:
        try:
            return Setting(tuple(parse_migration_spec(s, base, reading) for s in specs), source)
        except BadValue as exc:
            raise pytest.UsageError(f"{name}: {exc} (from {source})") from None

    cli: list[str] | None = config.getoption(name)
    if cli:
        return parse_all(cli, cwd, "cli")
    raw_env = env.get(name.upper(), "").strip()
    if raw_env:
        specs = [s for s in raw_env.split(os.pathsep) if s.strip()]
        return parse_all(specs, cwd, f"env {name.upper()}")
    lines = [line.strip() for line in config.getini(name) if line.strip()]
    if lines:
        return parse_all(lines, rootdir, sources.ini)
    return Setting((), "default")
