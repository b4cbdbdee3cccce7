"""A test module that imports pgdbm's fixtures by name gets ours, once a conftest switched."""

from __future__ import annotations

import sys
import types

OURS = "pytest_pgmig.pgdbm_fixtures"
THEIRS = "pgdbm.fixtures.conftest"


def adopt(module: types.ModuleType) -> list[str]:
    """Replace, in `module`, each of pgdbm's fixtures it imported by name with ours.

    ``from pgdbm.fixtures.conftest import test_db_factory`` in a test module defines that
    fixture for the module, over the conftest's: once a conftest has switched to
    `pytest_pgmig.pgdbm_fixtures`, the module would quietly keep pgdbm's, which connect to
    ``TEST_DB_*``. The names replaced, for the record.
    """
    ours, theirs = sys.modules.get(OURS), sys.modules.get(THEIRS)
    if ours is None or theirs is None or module is ours:
        return []
    replaced = []
    for name in getattr(ours, "__all__", ()):
        found = vars(module).get(name)
        if found is not None and found is getattr(theirs, name, None):
            setattr(module, name, getattr(ours, name))
            replaced.append(name)
    return replaced
