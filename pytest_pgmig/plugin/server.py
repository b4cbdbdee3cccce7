"""The run's server as this process holds it: started, or joined under xdist, on first use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_pgmig.servers.info import ServerHandle, ServerInfo

# The embedded server serves every xdist worker at once: leave room for each worker's
# control connection, pools and the test's own connections.
EMBEDDED_MAX_CONNECTIONS = 300


@dataclass
class RunServer:
    """Where the server comes from (`requested`, or the `dsn`), and this process's hold on
    it: its own `handle`, or, in an xdist run (`shared_key`), a share of the one the first
    process started. `reported` is a worker's server, told the controller at the worker's
    end, for the summary."""

    requested: str
    dsn: str | None
    shared_key: str | None = None
    handle: ServerHandle | None = None
    info: ServerInfo | None = None
    reported: ServerInfo | None = None

    def get(self) -> ServerInfo:
        """The server, started or joined on first use (raises `ServerError`)."""
        if self.info is not None:
            return self.info
        from pytest_pgmig.servers import shared, sources

        def start() -> ServerHandle:
            return sources.start_server(
                requested=self.requested, dsn=self.dsn, max_connections=EMBEDDED_MAX_CONNECTIONS
            )

        if self.shared_key is not None and not self.dsn:
            self.info = shared.acquire_shared(self.shared_key, start)
        else:
            self.handle = start()
            self.info = self.handle.info
        return self.info

    @property
    def known(self) -> ServerInfo | None:
        """The server this process or a worker used, if any did."""
        return self.info or self.reported

    def release(self, *, kept: bool) -> None:
        """Stop (or leave) the server; one that holds `kept` schemas keeps running."""
        keep = kept and self.info is not None and self.info.source in ("local", "wheel")
        if self.shared_key is not None:
            from pytest_pgmig.servers import shared

            # the last process out stops it, or leaves it running for a kept schema
            shared.release_shared(self.shared_key, keep=keep)
        elif self.handle is not None:
            if keep:
                self.handle.detach()
            else:
                self.handle.stop()
