"""What the embedded server adds to a one-test run: the same run with and without a pgmig fixture.

Both runs are the whole `pytest` command in a fresh process; the first test asks for
`pgmig_schema` (so the run finds the binaries, creates the cluster, starts it, connects,
migrates one file and drops the schema), the second asks for nothing. Runs alternate, and the
figure is the difference of the medians.

    python bench/one_test_bench.py            # 15 runs of each
    python bench/one_test_bench.py 30
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(folder: Path, test: str) -> float:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"run failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    with tempfile.TemporaryDirectory(prefix="pgmig-one-") as tmp:
        folder = Path(tmp)
        (folder / "migrations").mkdir()
        (folder / "migrations" / "001_users.sql").write_text(
            "CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE NOT NULL);\n"
        )
        (folder / "pytest.ini").write_text("[pytest]\npgmig_migrations = migrations\n")
        (folder / "test_with.py").write_text("def test_one(pgmig_schema):\n    pass\n")
        (folder / "test_without.py").write_text("def test_one():\n    pass\n")
        with_server, without = [], []
        for _ in range(runs):
            with_server.append(timed(folder, "test_with.py"))
            without.append(timed(folder, "test_without.py"))
    a, b = statistics.median(with_server), statistics.median(without)
    print(f"cores: {os.cpu_count()}; {runs} runs of each, medians")
    print(f"one test with pgmig_schema (embedded server): {a:.2f} s")
    print(f"one test without a pgmig fixture:            {b:.2f} s")
    print(f"added by the embedded server and one schema:  {a - b:.2f} s")


if __name__ == "__main__":
    main()
