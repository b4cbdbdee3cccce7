"""``alembic upgrade heads`` into a target with Alembic's command API, ``env.py`` untouched."""

from __future__ import annotations

import configparser
import os
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from pytest_pgmig.alembic.listen import OutsideWrite, Watch, watching
from pytest_pgmig.alembic.target import Target, render
from pytest_pgmig.errors import MigrationError, OutsideSchemaError

INI = "alembic.ini"
# env.py reads settings from the environment; one run sets them at a time
_ENV_LOCK = threading.Lock()

# the conftests' hook: it may change the Config, and give a context to run Alembic in
Adjust = Callable[[Any, Target], AbstractContextManager[Any] | None]


def revision_count(config: Any) -> int:
    """How many revisions the history of `config` has."""
    _, _, script_type = _alembic()
    return sum(1 for _ in script_type.from_config(config).walk_revisions())


def run_command(
    ini: Path,
    target: Target,
    env: Sequence[tuple[str, str]],
    command_name: str,
    revision: str,
    adjust: Adjust | None = None,
    watch: Watch | None = None,
) -> Any:
    """Run ``alembic <command_name> <revision>`` on `target`; its Config.

    Each ``VAR=TEMPLATE`` of `env` is set in the environment while Alembic runs (see
    `pytest_pgmig.alembic.target.render`), the ini's ``sqlalchemy.url`` points at `target`
    with the driver it named, ``config.attributes["connection"]`` holds a connection there
    when a synchronous driver is installed, and `adjust(config, target)` may change the rest;
    `watch` (a run in a test's schema) leaves installed extensions alone and checks each
    transaction for writes outside the schema. Applications cache their settings per
    process: `pytest_pgmig.alembic.runs` decides where each run goes.
    """
    command, _, _ = _alembic()
    config = _config(ini)
    config.set_main_option("sqlalchemy.url", _url(config, target).replace("%", "%%"))
    _paths_from_the_ini_folder(config, ini)
    with _environment(env, target), _adjusted(adjust, config, target), watching(watch or Watch()):
        try:
            with _connection(target) as connection:
                if connection is not None:
                    config.attributes["connection"] = connection
                run = getattr(command, command_name)
                run(config, revision) if revision else run(config)
        except Exception as exc:
            raise _failed(ini, config, exc, command_name) from None
    return config


def _config(ini: Path) -> Any:
    """Alembic's Config of `ini`; without ``script_location`` (Flask-Migrate's ini, which
    sits in the migrations folder beside env.py), that folder."""
    _, config_type, _ = _alembic()
    config = config_type(str(ini))
    if not config.get_main_option("script_location") and (ini.parent / "env.py").is_file():
        config.set_main_option("script_location", str(ini.parent))
    return config


@contextmanager
def _adjusted(adjust: Adjust | None, config: Any, target: Target) -> Iterator[None]:
    """The conftest's hook, its context (a Flask app context) around the run."""
    context = adjust(config, target) if adjust is not None else None
    if context is None:
        yield
        return
    with context:
        yield


def _paths_from_the_ini_folder(config: Any, ini: Path) -> None:
    """``prepend_sys_path = .`` names the folder `alembic` is run from, the ini's: pytest
    runs elsewhere, so its relative entries are made absolute."""
    get = getattr(config, "get_prepend_sys_paths_list", None)
    if get is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # a legacy separator, Alembic's say
        paths = get()
    if paths:
        absolute = [str((ini.parent / p).resolve()) for p in paths if p]
        config.set_main_option("prepend_sys_path", os.pathsep.join(absolute))
        config.set_main_option("path_separator", "os")


def history(ini: Path) -> list[tuple[str, str | None, str, bool]]:
    """A linear history's revisions from the base: (revision, its down revision, its file,
    whether its downgrade does anything); [] for a branched one."""
    import ast

    _, _, script_type = _alembic()
    script = script_type.from_config(_config(ini))
    revisions = list(reversed(list(script.walk_revisions())))
    if (
        any(isinstance(r.down_revision, (tuple, list)) for r in revisions)
        or len(script.get_heads()) != 1
    ):
        return []
    found = []
    for rev in revisions:
        tree = ast.parse(Path(rev.path).read_text(encoding="utf-8"))
        body = next(
            (n.body for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "downgrade"),
            [],
        )
        acts = any(
            not isinstance(n, ast.Pass)
            and not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
            for n in body
        )
        found.append((rev.revision, rev.down_revision, rev.path, acts))
    return found


def _alembic() -> tuple[Any, Any, Any]:
    try:
        from alembic import command
        from alembic.config import Config
        from alembic.script import ScriptDirectory
    except ImportError:
        raise MigrationError(
            "pytest-pgmig applies Alembic histories with Alembic, which is not installed.",
            hint="Install it: pip install 'pytest-pgmig[alembic]'.",
        ) from None
    return command, Config, ScriptDirectory


def _url(config: Any, target: Target) -> str:
    """The target's URL, with the driver the ini's own ``sqlalchemy.url`` named."""
    try:
        current = config.get_main_option("sqlalchemy.url") or ""
    except configparser.InterpolationError:
        current = ""
    scheme = current.split("://", 1)[0]
    driver = scheme.split("+", 1)[1] if "+" in scheme else None
    return target.url(driver)


@contextmanager
def _environment(env: Sequence[tuple[str, str]], target: Target) -> Iterator[None]:
    with _ENV_LOCK:
        saved = {name: os.environ.get(name) for name, _ in env}
        os.environ.update({name: render(template, target) for name, template in env})
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@contextmanager
def _connection(target: Target) -> Iterator[Any]:
    """A SQLAlchemy connection to the target, committed at the end, for ``env.py`` files
    that take ``config.attributes["connection"]``; None without a synchronous driver."""
    try:
        import sqlalchemy
    except ImportError:
        yield None
        return
    for driver, module in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        try:
            __import__(module)
        except ImportError:
            continue
        engine = sqlalchemy.create_engine(target.url(driver), poolclass=sqlalchemy.pool.NullPool)
        try:
            # not begun: env.py's context then runs the transactions itself, so that an
            # autocommit_block() (CREATE INDEX CONCURRENTLY) can end them
            with engine.connect() as connection:
                yield connection
                connection.commit()
        finally:
            engine.dispose()
        return
    yield None


def _failed(ini: Path, config: Any, exc: Exception, command_name: str) -> MigrationError:
    """The failure, naming the revision file it happened in when the traceback shows it."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OutsideWrite):
            return outside_error(ini, cause.what, cause.detail)
        cause = cause.__cause__ or cause.__context__
    script = str(Path(ini.parent, str(config.get_main_option("script_location") or "")).resolve())
    frames = list(reversed(traceback.extract_tb(exc.__traceback__)))
    revision = next(
        (
            f.filename
            for f in frames
            if f.filename.startswith(script + os.sep) and not f.filename.endswith(f"{os.sep}env.py")
        ),
        None,
    )
    # else the project's own code it failed in (env.py, the models it imports)
    project = str(ini.parent.resolve()) + os.sep
    own = next((f for f in frames if f.filename.startswith(project)), None)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = f" in {revision}" if revision else ""
    if revision is None and own is not None:
        where = f" in {own.filename} line {own.lineno}"
    return MigrationError(
        f"Alembic {command_name} of {ini} failed{where}: {type(exc).__name__}: {first}",
        migration_file=os.path.relpath(revision, ini.parent) if revision else INI,
        sql_error=str(exc),
        hint="Fix the revision (or env.py) and run the tests again.",
    )


def revision_files(ini: Path) -> list[Path]:
    """The files of every revision of the history of `ini`."""
    _, _, script_type = _alembic()
    script = script_type.from_config(_config(ini))
    return [Path(rev.path) for rev in script.walk_revisions()]


def heads(ini: Path) -> list[str]:
    """The heads of the history of `ini`, each with the file it is in."""
    _, _, script_type = _alembic()
    script = script_type.from_config(_config(ini))
    return [f"{rev.revision} ({Path(rev.path).name})" for rev in script.get_revisions("heads")]


def outside_error(ini: Path, what: str, detail: str) -> OutsideSchemaError:
    """A transaction of the history wrote outside the test's schema (and was rolled back)."""
    return OutsideSchemaError(
        f"Alembic upgrade of {ini} writes outside the schema it migrates: {what} ({detail}). "
        "That revision's transaction was rolled back.",
        INI,
        what=f"{what} ({detail})",
        cluster=what.startswith("role "),
        hint="A history that names schemas of its own (schema=..., version_table_schema=...) "
        "runs under database isolation: pgmig_isolation = auto (the default) moves it there.",
    )
