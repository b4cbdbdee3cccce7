"""Measure the embedded server's start-up: find binaries, initdb (or cached copy), start, connect.

Usage: python bench/server_startup.py [N]   (default N=10; prints each start and the median)

The first start of a fresh cache pays for initdb once; later starts copy the cached cluster.
Pass --cold to disable the cache (PGMIG_INITDB_CACHE=0) and time initdb on every start.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if "--cold" in sys.argv:
        os.environ["PGMIG_INITDB_CACHE"] = "0"
    runs = int(args[0]) if args else 10

    from pytest_pgmig.servers.sources import start_server

    times, cpu_times = [], []
    for i in range(runs):
        cpu_before = _cpu_seconds()
        began = time.perf_counter()
        handle = start_server(requested="local")
        elapsed = time.perf_counter() - began
        # CPU of this process and its finished children (initdb, cp): less sensitive than
        # wall time to a busy machine; the postmaster's own CPU is not included.
        cpu = _cpu_seconds() - cpu_before
        times.append(elapsed)
        cpu_times.append(cpu)
        print(
            f"start {i + 1:2d}: {elapsed * 1000:7.1f} ms (cpu {cpu * 1000:6.1f} ms)  {handle.info}"
        )
        stopped = time.perf_counter()
        handle.stop()
        print(f"          stop: {(time.perf_counter() - stopped) * 1000:7.1f} ms")
    print(
        f"median start over {runs}: {statistics.median(times) * 1000:.1f} ms "
        f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}); "
        f"median cpu {statistics.median(cpu_times) * 1000:.1f} ms"
    )


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
