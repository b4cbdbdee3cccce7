"""The documentation says what the code does: README snippets run as they stand, and every
option, fixture and check item is in the docs."""

from __future__ import annotations

import ast
import re
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
    tests = snippets()["test_usage.py"].count("\ndef test_") + snippets()["test_usage.py"].count(
        "\nasync def test_"
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
