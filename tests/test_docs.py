"""The documentation says what the code does: README snippets run as they stand, and every
option, fixture and check item is in the docs."""

from __future__ import annotations

import ast
import importlib
import re
import textwrap
import typing
from pathlib import Path

import pytest

from pytest_pgmig.plugin.checks import Kind
from pytest_pgmig.plugin.options import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PACKAGE = ROOT / "pytest_pgmig"
_SNIPPET = re.compile(r"<!-- readme-test: (\S+) -->\n```\w*\n(.*?)```", re.DOTALL)


def snippets() -> dict[str, str]:
    return dict(_SNIPPET.findall(README.read_text(encoding="utf-8")))


def test_readme_has_usage_snippets() -> None:
    found = snippets()
    assert "test_usage.py" in found
    assert any(name.startswith("migrations/") for name in found)


def test_readme_usage_snippets_pass(pytester: pytest.Pytester) -> None:
    for name, text in snippets().items():
        path = pytester.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    result = pytester.runpytest_subprocess(
        "--pgmig-migrations=migrations",
        "-p",
        "no:cacheprovider",
        "-W",
        "ignore::DeprecationWarning",
    )
    tests = sum(
        code.count("\ndef test_") + code.count("\nasync def test_")
        for name, code in snippets().items()
        if name.startswith("test_")
    )
    result.assert_outcomes(passed=tests)
    result.stdout.fnmatch_lines(["*pgmig: server auto*migrations *=*migrations [[]cli[]]*"])


def docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md")))


def fixtures() -> list[str]:
    """The public fixtures the plugin and its pgdbm layer define."""
    found = []
    for path in [*sorted((PACKAGE / "plugin").glob("*.py")), PACKAGE / "pgdbm_fixtures.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef
            ) and not node.name.startswith("_"):
                marks = [ast.unparse(d) for d in node.decorator_list]
                if any(m.startswith("pytest.fixture") for m in marks):
                    found.append(node.name)
    return found


def test_every_option_is_in_the_docs() -> None:
    text = docs_text()
    missing = [name for option in OPTIONS for name in option.names if name not in text]
    assert missing == []


def test_every_fixture_is_in_the_docs() -> None:
    names = fixtures()
    assert {"pgmig_schema", "pgmig_psycopg_tx", "test_db_factory"} <= set(names)
    text = docs_text()
    assert [name for name in names if f"`{name}`" not in text] == []


def test_every_check_item_is_in_the_docs() -> None:
    text = (ROOT / "docs" / "checks.md").read_text(encoding="utf-8")
    assert [kind for kind in typing.get_args(Kind) if f"pgmig.{kind}[" not in text] == []


_DOC_SNIPPET = re.compile(r"<!-- docs-test: (\w+) -->\n```python\n(.*?)```", re.DOTALL)


def doc_snippets(kind: str) -> list[str]:
    """The docs' Python examples of one kind, in page order: ``engine`` (run in order as one
    program), ``fixture`` (run in a test, then the `engine` it makes is used), ``conftest``
    (hooks and imports a conftest.py holds)."""
    pages = sorted((ROOT / "docs").glob("*.md"))
    found = [m for p in pages for m in _DOC_SNIPPET.findall(p.read_text(encoding="utf-8"))]
    return [code for k, code in found if k == kind]


def test_every_python_example_in_the_docs_is_run() -> None:
    text = docs_text()
    assert text.count("```python") == len(_DOC_SNIPPET.findall(text)) > 0


@pytest.mark.asyncio
async def test_the_engine_examples_run(
    fresh_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pytest_pgmig

    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001_users.sql").write_text(snippets()["migrations/001_users.sql"])
    monkeypatch.chdir(tmp_path)
    code = "\n".join(doc_snippets("engine"))
    program = "async def main(dsn):\n" + textwrap.indent(code, "    ") + "\n    return db"
    namespace = {name: getattr(pytest_pgmig, name) for name in pytest_pgmig.__all__}
    exec(compile(program, "docs/engine.md", "exec"), namespace)
    db = await namespace["main"](fresh_database)
    try:
        assert await db.fetch_value("SELECT count(*) FROM app.users") == 1
    finally:
        await db.disconnect()


def test_the_fixture_examples_run(pytester: pytest.Pytester, server_dsn: str) -> None:
    tests = [
        f"@pytest.mark.asyncio\nasync def test_example_{n}(pgmig_dsn, pgmig_schema):\n"
        + textwrap.indent(code, "    ")
        + "    async with engine.connect() as conn:\n"
        + '        assert (await conn.execute(text("SELECT count(*) FROM users"))).scalar() == 1\n'
        + "    await engine.dispose()\n"
        for n, code in enumerate(doc_snippets("fixture"))
    ]
    assert tests
    pytester.makepyfile(
        "import pytest\nfrom sqlalchemy import text\n"
        "from sqlalchemy.ext.asyncio import create_async_engine\n\n\n" + "\n\n".join(tests)
    )
    folder = pytester.mkdir("migrations")
    (folder / "001_users.sql").write_text(snippets()["migrations/001_users.sql"])
    result = pytester.runpytest_subprocess(
        f"--pgmig-dsn={server_dsn}", "--pgmig-migrations=migrations", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=len(tests))


def test_the_conftest_examples_name_real_hooks_and_modules() -> None:
    from pytest_pgmig.plugin import hooks

    for code in doc_snippets("conftest"):
        tree = ast.parse(code)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("pytest_pgmig_"):
                assert hasattr(hooks, node.name), node.name
            if isinstance(node, ast.ImportFrom) and node.module:
                assert importlib.import_module(node.module)
            if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "pytest_plugins":
                for name in ast.literal_eval(node.value):
                    assert importlib.import_module(name)
