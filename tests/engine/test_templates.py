"""Template rendering (no server)."""

from __future__ import annotations

import pytest

from pytest_pgmig.engine.templates import TemplateError, render, render_with_map, source_index


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{tables.users}}", '"app"."users"'),
        ("{{tables.Users}}", '"app"."users"'),
        ("{{tables.other.users}}", '"other"."users"'),
        ("{{schema}}.f()", '"app".f()'),
        ("{{schema}}", '"app"'),
        ("no placeholders {{x}}", "no placeholders {{x}}"),
    ],
)
def test_render_quotes_identifiers(template: str, expected: str) -> None:
    assert render(template, "app") == expected


def test_render_without_schema_follows_pgdbm() -> None:
    assert render("{{tables.users}} {{schema}}.f() {{schema}}", None) == '"users" f() "public"'


@pytest.mark.parametrize("template", ["{{tables.1abc}}", "{{tables.x.9}}", "{{tables.a_b.c1}}"])
def test_invalid_names_are_refused(template: str) -> None:
    if template == "{{tables.a_b.c1}}":
        assert render(template, "s") == '"a_b"."c1"'
        return
    with pytest.raises(TemplateError, match="Invalid"):
        render(template, "s")


def test_invalid_schema_is_refused() -> None:
    with pytest.raises(TemplateError, match="schema"):
        render("{{tables.t}}", 'bad"name')


def test_positions_map_back_to_the_template() -> None:
    template = "SELECT * FROM {{tables.users}} WHERE {{schema}}.f(x) AND bogus"
    rendered, replacements = render_with_map(template, "tenant_1")
    assert rendered == render(template, "tenant_1")
    assert template[source_index(replacements, rendered.index("bogus"))] == "b"
    assert source_index(replacements, rendered.index('"tenant_1"."users"') + 3) == template.index(
        "{{tables"
    )
    assert source_index(replacements, 0) == 0
