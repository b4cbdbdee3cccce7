"""Pure template rendering: {{tables.x}}, {{tables.schema.x}}, {{schema}} and {{schema_name}}."""

from __future__ import annotations

import re
from collections.abc import Sequence

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_PLACEHOLDER = re.compile(r"\{\{(?:(schema)|(schema_name)|tables\.(\w+)(?:\.(\w+))?)\}\}(\.)?")

# (start, end) in the template, then (start, end) of what replaced it in the output.
Replacement = tuple[int, int, int, int]


class TemplateError(ValueError):
    """A schema or table name cannot be used as an identifier."""


def validate_identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` if it is a plain identifier (letter or ``_``, then letters, digits, ``_``).

    >>> validate_identifier("tenant_1", "schema")
    'tenant_1'
    """
    if not IDENTIFIER.fullmatch(name):
        raise TemplateError(
            f"Invalid {what} name {name!r}: use 1 to 63 letters, digits or underscores, "
            "starting with a letter or underscore."
        )
    return name


def quote_identifier(name: str) -> str:
    """Quote an identifier for SQL text: ``users`` -> ``"users"``."""
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value: str) -> str:
    """A string literal safe whatever ``standard_conforming_strings`` says: ``E'...'``."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def render(text: str, schema: str | None) -> str:
    """Render the placeholders of ``text`` for ``schema``, with identifiers quoted.

    ``{{tables.x}}`` -> ``"schema"."x"``, ``{{tables.s.x}}`` -> ``"s"."x"``,
    ``{{schema}}`` -> ``"schema"``. Table names are folded to lower case, as pgdbm's
    unquoted ``"schema".x`` is, so both engines name the same table. With no schema,
    tables stay unqualified and ``{{schema}}.`` disappears (pgdbm's behaviour).
    ``{{schema_name}}`` (ours, for Flyway's ``${flyway:defaultSchema}``) is the bare name,
    usable inside a string literal too; ``public`` without a schema.

    >>> render("SELECT * FROM {{tables.users}} JOIN {{schema}}.t USING (id)", "app")
    'SELECT * FROM "app"."users" JOIN "app".t USING (id)'
    """
    if "{{" not in text:
        return text
    return _PLACEHOLDER.sub(lambda match: _replacement(match, schema), text)


def render_with_map(text: str, schema: str | None) -> tuple[str, tuple[Replacement, ...]]:
    """Like `render`, also returning where each placeholder went (for error positions)."""
    pieces: list[str] = []
    replacements: list[Replacement] = []
    cursor = 0
    out = 0
    for match in _PLACEHOLDER.finditer(text):
        pieces.append(text[cursor : match.start()])
        out += match.start() - cursor
        value = _replacement(match, schema)
        pieces.append(value)
        replacements.append((match.start(), match.end(), out, out + len(value)))
        out += len(value)
        cursor = match.end()
    pieces.append(text[cursor:])
    return "".join(pieces), tuple(replacements)


def source_index(replacements: Sequence[Replacement], index: int) -> int:
    """Map a character index in rendered text back to the template text."""
    shift = 0
    for start, end, out_start, out_end in replacements:
        if index < out_start:
            break
        if index < out_end:
            return start
        shift = end - out_end
    return index + shift


def _replacement(match: re.Match[str], schema: str | None) -> str:
    is_schema, bare, first, second, dot = match.groups()
    dot = dot or ""
    if bare:
        return validate_identifier(schema or "public", "schema") + dot
    if is_schema:
        if schema is None:
            return "" if dot else '"public"'
        return quote_identifier(validate_identifier(schema, "schema")) + dot
    if second is not None:
        owner = quote_identifier(validate_identifier(first, "schema"))
        return f"{owner}.{_table(second)}{dot}"
    if schema is None:
        return _table(first) + dot
    return f"{quote_identifier(validate_identifier(schema, 'schema'))}.{_table(first)}{dot}"


def _table(name: str) -> str:
    return quote_identifier(validate_identifier(name, "table").lower())
