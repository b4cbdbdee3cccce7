"""Helpers shared by the server-layer tests (not a test module)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pytest_pgmig.servers import runfolders


@contextmanager
def short_base() -> Iterator[Path]:
    """A private run base under /tmp: short, as unix socket paths are limited to ~107 bytes.

    Whatever runs are left in it at the end are stopped and the folder is deleted.
    """
    folder = Path(tempfile.mkdtemp(prefix="pgm-", dir="/tmp"))
    # the plugin leaves a PGMIG_RUN_BASE as it is: make it passable for the cluster account
    folder.chmod(0o711)
    try:
        yield folder
    finally:
        if folder.exists():
            for entry in folder.glob("*"):
                runfolders.stop_run_dir(entry)
        runfolders.remove_tree(folder)
