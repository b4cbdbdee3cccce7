"""The README's usage snippets, run as they stand against the embedded server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
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
