"""The HTTP server under the app: uvicorn with a deadline for request headers.

uvicorn closes idle keep-alive connections, but a connection that opens and never finishes its
request headers (slowloris) holds a socket for ever.  :func:`protocol_with_header_timeout`
returns uvicorn's own HTTP protocol (httptools when installed, else h11) with a timer that
closes the connection when a request's headers are not complete ``seconds`` after the
connection opened or the request began.
"""

from __future__ import annotations

import asyncio
from typing import Any


def protocol_with_header_timeout(seconds: float) -> type[asyncio.Protocol]:
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
        begin, complete = "on_message_begin", "on_headers_complete"
    except ImportError:  # pragma: no cover - h11 only
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base  # type: ignore[assignment]
        begin, complete = None, None

    class HeaderDeadline(Base):  # type: ignore[misc, valid-type]
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    if begin is not None:
        def on_message_begin(self: Any) -> None:
            Base.on_message_begin(self)
            if self._deadline is None:
                self._arm()

        def on_headers_complete(self: Any) -> None:
            self._disarm()
            Base.on_headers_complete(self)

        HeaderDeadline.on_message_begin = on_message_begin  # type: ignore[attr-defined]
        HeaderDeadline.on_headers_complete = on_headers_complete  # type: ignore[attr-defined]
    else:  # h11: the request event arrives when the headers are complete
        def handle_events(self: Any) -> None:
            Base.handle_events(self)
            if self.cycle is not None:
                self._disarm()

        HeaderDeadline.handle_events = handle_events  # type: ignore[attr-defined]
    return HeaderDeadline
