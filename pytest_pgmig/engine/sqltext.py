"""Pure SQL text handling: statement splitting, transaction planning, error excerpts."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

NO_TRANSACTION_MARKER = re.compile(r"^-- pgdbm:no-transaction(?=\s|$)", re.MULTILINE)

# One token per match. Strings, quoted identifiers, comments and dollar quotes are opened
# here and closed by hand below, so that an unterminated one can be reported precisely.
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<line>--[^\n]*)
  | (?P<block>/\*)
  | (?P<estr>[eE]')
  | (?P<str>')
  | (?P<ident>")
  | (?P<dollar>\$(?:[^\W\d]\w*)?\$)
  | (?P<word>[^\W\d][\w$]*)
  | (?P<semi>;)
  | (?P<open>\()
  | (?P<close>\))
  | (?P<other>[^\s\w;'"$/()\-]+|.)
    """,
    re.VERBOSE | re.DOTALL,
)
_STR_BODY = re.compile(r"(?:[^']+|'')*'")
_ESTR_BODY = re.compile(r"(?:[^'\\]+|\\.|'')*'", re.DOTALL)
_IDENT_BODY = re.compile(r'(?:[^"]+|"")*"')
_BLOCK_EDGE = re.compile(r"/\*|\*/")

_HEAD_WORDS = 6


class ScanError(ValueError):
    """The SQL text has an unterminated string, identifier, comment or dollar quote."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


@dataclass(frozen=True)
class Statement:
    """One top-level statement: ``text[start:end]`` (``end`` includes its ``;``)."""

    start: int
    end: int
    head: tuple[str, ...]
    """The first few words outside quotes and comments, upper-cased."""
    kind: str
    """``"begin"``, ``"commit"``, ``"rollback"``, ``"no_transaction"`` or ``"sql"``."""


@dataclass(frozen=True)
class ScriptPlan:
    """How to run one migration's text.

    ``script`` is the text with top-level ``BEGIN``/``COMMIT`` statements blanked out
    (newlines kept, so positions and line numbers are unchanged): the engine's own
    transaction wraps the file instead. ``transactional`` is false when the file says
    ``-- pgdbm:no-transaction`` or holds a statement PostgreSQL refuses inside a
    transaction block; ``reason`` then says which.
    """

    text: str
    script: str
    statements: tuple[Statement, ...]
    transactional: bool
    reason: str | None


def split(text: str) -> list[Statement]:
    """Split SQL text into top-level statements, honouring quotes and comments.

    Understands ``'...'`` with ``''``, ``E'...'`` with backslash escapes, ``"quoted
    identifiers"``, ``$tag$`` dollar quotes, ``--`` and nested ``/* */`` comments,
    parentheses and ``BEGIN ATOMIC ... END`` bodies. Raises `ScanError` for an
    unterminated construct.

    >>> text = "SELECT ';'; SELECT 2"
    >>> [text[s.start : s.end] for s in split(text)]
    ["SELECT ';';", 'SELECT 2']
    """
    statements: list[Statement] = []
    current: _Reading | None = None
    pos = last_end = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        assert match is not None  # the last alternative matches any character
        kind = match.lastgroup
        end = match.end()
        if kind == "block":
            end = _skip_block_comment(text, pos)
        elif kind not in ("space", "line"):
            if current is None and kind != "semi":  # a lone ; is an empty statement
                current = _Reading(pos)
            if current is not None and kind == "semi" and current.at_top():
                statements.append(current.close(end))
                current = None
            elif current is not None:
                end = last_end = current.see(match, text)
        pos = end
    if current is not None:
        statements.append(current.close(last_end))
    return statements


# the quoted constructs a token opens: the pattern of the rest and its name in errors
_QUOTED = {
    "str": (_STR_BODY, "string literal"),
    "estr": (_ESTR_BODY, "E'' string literal"),
    "ident": (_IDENT_BODY, "quoted identifier"),
}


@dataclass
class _Reading:
    """The statement being read: where it starts and what decides its kind and its end."""

    start: int
    words: list[str] = field(default_factory=list)
    parens: int = 0
    atomic: int = 0  # depth inside a BEGIN ATOMIC ... END body
    concurrently: bool = False
    detach: bool = False

    def at_top(self) -> bool:
        return self.parens == 0 and self.atomic == 0

    def close(self, end: int) -> Statement:
        head = tuple(self.words)
        return Statement(self.start, end, head, _classify(head, self.concurrently, self.detach))

    def see(self, match: re.Match[str], text: str) -> int:
        """Take one token of the statement; where the token really ends."""
        kind, pos, end = match.lastgroup, match.start(), match.end()
        if kind in _QUOTED:
            body, what = _QUOTED[kind]
            return _close(body, text, end, pos, what)
        if kind == "dollar":
            closing = text.find(match.group(), end)
            if closing < 0:
                raise ScanError(f"unterminated dollar-quoted string {match.group()}", pos)
            return closing + len(match.group())
        if kind == "open":
            self.parens += 1
        elif kind == "close":
            self.parens = max(self.parens - 1, 0)
        elif kind == "word":
            self._word(match.group().upper(), text, pos)
        return end

    def _word(self, word: str, text: str, pos: int) -> None:
        if len(self.words) < _HEAD_WORDS:
            self.words.append(word)
        if word == "CONCURRENTLY":
            self.concurrently = True
        elif word == "DETACH":
            self.detach = True
        elif self.atomic:
            if word in ("CASE", "BEGIN"):
                self.atomic += 1
            elif word == "END":
                self.atomic -= 1
        elif word == "ATOMIC" and _previous_word_is_begin(text, pos):
            self.atomic = 1


def _close(body: re.Pattern[str], text: str, pos: int, opened: int, what: str) -> int:
    match = body.match(text, pos)
    if match is None:
        raise ScanError(f"unterminated {what}", opened)
    return match.end()


def _skip_block_comment(text: str, pos: int) -> int:
    depth = 0
    for edge in _BLOCK_EDGE.finditer(text, pos):
        depth += 1 if edge.group() == "/*" else -1
        if depth == 0:
            return edge.end()
    raise ScanError("unterminated /* comment", pos)


def _previous_word_is_begin(text: str, pos: int) -> bool:
    return text[:pos].rstrip().upper().endswith("BEGIN")


def _classify(head: tuple[str, ...], concurrently: bool, detach: bool) -> str:
    first = head[0] if head else ""
    second = head[1] if len(head) > 1 else ""
    if first == "BEGIN" or (first == "START" and second == "TRANSACTION"):
        return "begin"
    if first == "END" or (first == "COMMIT" and second != "PREPARED"):
        return "commit"
    if first in ("ROLLBACK", "ABORT") and "TO" not in head and "PREPARED" not in head:
        return "rollback"
    if _needs_no_transaction(head, concurrently, detach):
        return "no_transaction"
    return "sql"


def _needs_no_transaction(head: tuple[str, ...], concurrently: bool, detach: bool) -> bool:
    first, rest = (head[0], head[1:]) if head else ("", ())
    if first == "VACUUM" or head[:2] == ("ALTER", "SYSTEM"):
        return True
    if first in ("CREATE", "DROP") and rest[:1] in (("DATABASE",), ("TABLESPACE",)):
        return True
    if first == "REINDEX":
        return concurrently or rest[:1] in (("DATABASE",), ("SYSTEM",))
    if first == "CREATE" and concurrently:
        return rest[:2] == ("INDEX", "CONCURRENTLY") or rest[:3] == (
            "UNIQUE",
            "INDEX",
            "CONCURRENTLY",
        )
    if first == "DROP" and concurrently:
        return rest[:2] == ("INDEX", "CONCURRENTLY")
    return head[:2] == ("ALTER", "TABLE") and concurrently and detach


@functools.lru_cache(maxsize=4096)
def analyze(text: str) -> ScriptPlan:
    """Plan how to run a migration's text (cached: files are analysed once).

    Raises `ScanError` for unterminated constructs, and for a top-level ``ROLLBACK``
    in a transactional file (it would end the engine's own transaction).

    >>> plan = analyze("BEGIN;\\nCREATE TABLE t (id int);\\nCOMMIT;")
    >>> plan.transactional, plan.script.split()
    (True, ['CREATE', 'TABLE', 't', '(id', 'int);'])
    """
    statements = tuple(split(text))
    reason: str | None = None
    marker = NO_TRANSACTION_MARKER.search(text)
    if marker is not None:
        reason = f"line {line_of(text, marker.start())}: -- pgdbm:no-transaction"
    else:
        for statement in statements:
            if statement.kind == "no_transaction":
                first_line = text[statement.start : statement.end].split("\n", 1)[0]
                reason = f"line {line_of(text, statement.start)}: {first_line[:60]}"
                break
    if reason is not None:
        return ScriptPlan(text, text, statements, False, reason)
    for statement in statements:
        if statement.kind == "rollback":
            raise ScanError(
                "a top-level ROLLBACK would end the migration's transaction; remove it "
                "(a failing statement already rolls back the whole file)",
                statement.start,
            )
    own = [s for s in statements if s.kind in ("begin", "commit")]
    return ScriptPlan(text, blank(text, own), statements, True, None)


def blank(text: str, statements: Sequence[Statement]) -> str:
    """``text`` with the statements turned to spaces, newlines kept (positions unchanged).

    >>> text = "BEGIN; SELECT 1;"
    >>> blank(text, split(text)[:1])
    '       SELECT 1;'
    """
    pieces: list[str] = []
    cursor = 0
    for statement in sorted(statements, key=lambda s: s.start):
        pieces.append(text[cursor : statement.start])
        pieces.append(re.sub(r"[^\n]", " ", text[statement.start : statement.end]))
        cursor = statement.end
    pieces.append(text[cursor:])
    return "".join(pieces)


def line_of(text: str, index: int) -> int:
    """1-based line number of character ``index`` of ``text``."""
    return text.count("\n", 0, max(index, 0)) + 1


def excerpt(text: str, index: int, *, context: int = 1) -> str:
    """The line holding ``text[index]`` (plus ``context`` lines before) with a caret.

    >>> print(excerpt("SELECT 1;\\nSELEC 2;", 10))
       1 | SELECT 1;
       2 | SELEC 2;
         | ^
    """
    index = min(max(index, 0), len(text))
    line_start = text.rfind("\n", 0, index) + 1
    line_no = line_of(text, index)
    lines = text.split("\n")
    first = max(line_no - 1 - context, 0)
    out = [f"{n + 1:>4} | {lines[n]}" for n in range(first, line_no)]
    column = len(text[line_start:index].expandtabs(1))
    out.append(f"{'':>4} | {' ' * column}^")
    return "\n".join(out)
