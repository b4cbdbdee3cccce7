"""``-- pgmig:down-differs``: differences a down file declares on purpose, and matching them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pytest_pgmig.checks.snapshot import Difference
from pytest_pgmig.errors import CheckFailed

_COMMENT = re.compile(r"^\s*--\s*pgmig:down-differs\b(.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Accepted:
    """One declared difference: ``column message.updated_at default`` names the column
    ``updated_at`` of ``message`` and, optionally, what about it may differ."""

    kind: str
    name: str
    aspect: str
    line: int

    @property
    def text(self) -> str:
        return " ".join(part for part in (self.kind, self.name, self.aspect) if part)

    def prefix(self) -> str:
        """The start of the snapshot key of the object it names.

        >>> Accepted("column", "message.updated_at", "", 1).prefix()
        'column "updated_at" of message'
        >>> Accepted("index", "users.users_email", "", 1).prefix()
        'index "users_email" on users'
        >>> Accepted("table", "t", "", 1).prefix()
        'table "t"'
        """
        owner, dot, own = self.name.rpartition(".")
        if not dot:
            return f'{self.kind} "{own}"'
        joint = "of" if self.kind == "column" else "on"
        return f'{self.kind} "{own}" {joint} {owner}'

    def matches(self, difference: Difference) -> bool:
        """Whether `difference` is the one declared (its object, and its aspect if given)."""
        # a kind names the key's last word of kind: "type mood" is `enum type "mood"` too
        if not re.search(rf"(?:^| ){re.escape(self.prefix())}(?:$| |\()", difference.key):
            return False
        if not self.aspect:
            return True
        seen = f"{difference.before or ''}\n{difference.after or ''}".lower()
        return self.aspect.lower() in seen


def declared(text: str, where: str) -> list[Accepted]:
    """The ``-- pgmig:down-differs KIND NAME [ASPECT]`` comments of a down file.

    >>> declared("-- pgmig:down-differs column message.updated_at default\\nDROP ...", "x")
    [Accepted(kind='column', name='message.updated_at', aspect='default', line=1)]
    """
    found = []
    for match in _COMMENT.finditer(text):
        words = match.group(1).split()
        line = text.count("\n", 0, match.start()) + 1
        if len(words) < 2:
            raise CheckFailed(
                f"{where} line {line}: '-- pgmig:down-differs' needs what differs, e.g. "
                "'-- pgmig:down-differs column message.updated_at default' (kind, name, and "
                "optionally the aspect)."
            )
        found.append(Accepted(words[0].lower(), words[1], " ".join(words[2:]), line))
    return found


def split(
    found: list[Difference], accepted: list[Accepted]
) -> tuple[list[Difference], list[tuple[Accepted, Difference]]]:
    """The differences nobody declared, and those declared (each with its declaration)."""
    left, taken = [], []
    for difference in found:
        match = next((a for a in accepted if a.matches(difference)), None)
        if match is None:
            left.append(difference)
        else:
            taken.append((match, difference))
    return left, taken
