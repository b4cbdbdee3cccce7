"""A private event loop in a daemon thread for the plugin's own database work."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Runtime:
    """Runs the plugin's coroutines on a loop of its own, whatever loop a test uses.

    Sync fixtures, hooks and async tests on pytest-asyncio's loops all reach the server
    through this one loop, so the plugin's control connection outlives every test's loop.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pytest-pgmig", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the plugin's loop and wait for its result."""
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("pytest-pgmig's runtime is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except BaseException:
            # Ctrl-C (or a timeout) stops the wait, not the work: cancel it too, so that the
            # connection it runs on is free for the clean-up that follows.
            future.cancel()
            raise

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start `coro` on the plugin's loop; await it elsewhere with `asyncio.wrap_future`."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def close(self) -> None:
        """Stop the loop and its thread; pending work is abandoned."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()


async def close_or_terminate(closable: Any, timeout: float = 5.0) -> None:
    """Close a connection or pool politely, or terminate it if that fails or hangs."""
    try:
        await asyncio.wait_for(closable.close(), timeout=timeout)
    except Exception:
        closable.terminate()
