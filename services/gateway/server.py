"""The HTTP server under the app: uvicorn with deadlines for a request's headers and its body.

uvicorn closes idle keep-alive connections, but a connection that opens and never finishes its
request headers (slowloris) holds a socket for ever, and so does one that sends its body a byte at
a time (#39: one byte every 3 s held a connection for over 42 s).  :func:`protocol_with_header_timeout`
returns uvicorn's own HTTP protocol (httptools when installed, else h11) with one timer per
connection: it closes the connection when a request's headers are not complete ``seconds`` after
the connection opened or the request began, and, once they are, when its body is not complete
``body_seconds`` later — answering 408 first when no response has started.  The timer lives in the
protocol, not in the app, so it costs a request one ``call_later`` and covers handlers that never
read their body.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

_TIMEOUT_BODY = json.dumps({"error": {"message": "the request body did not arrive in time", "type": "invalid_request_error",
                                      "param": None, "code": "request_timeout"}}).encode()
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY)


def protocol_with_header_timeout(seconds: float, body_seconds: float | None = None) -> type[asyncio.Protocol]:
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
        begin = "on_message_begin"
    except ImportError:  # pragma: no cover - h11 only
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base  # type: ignore[assignment]
        begin = None

    class HeaderDeadline(Base):  # type: ignore[misc, valid-type]
        _deadline: asyncio.TimerHandle | None = None
        _in_body = False  # the running timer is the body's

        def _arm(self, body: bool = False) -> None:
            self._disarm()
            self._in_body = body
            self._deadline = self.loop.call_later(body_seconds if body else seconds, self._too_slow)  # type: ignore[arg-type]

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            cycle = getattr(self, "cycle", None)
            if self._in_body and cycle is not None and not cycle.response_started:
                cycle.response_started = cycle.response_complete = True  # nothing else may answer now
                self.transport.write(_TIMEOUT_RESPONSE)
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
            if body_seconds is None:
                self._disarm()
            else:
                self._arm(body=True)  # a request without a body completes at once, in the same parse
            Base.on_headers_complete(self)

        def on_message_complete(self: Any) -> None:
            if self._in_body:
                self._disarm()
                self._in_body = False
            Base.on_message_complete(self)

        HeaderDeadline.on_message_begin = on_message_begin  # type: ignore[attr-defined]
        HeaderDeadline.on_headers_complete = on_headers_complete  # type: ignore[attr-defined]
        HeaderDeadline.on_message_complete = on_message_complete  # type: ignore[attr-defined]
    else:  # h11: the request event arrives when the headers are complete, EndOfMessage clears more_body
        def handle_events(self: Any) -> None:
            Base.handle_events(self)
            if self.cycle is None:
                return
            if body_seconds is not None and self.cycle.more_body and not self.cycle.response_complete:
                if not self._in_body:
                    self._arm(body=True)
            elif self._deadline is not None and (self._in_body or body_seconds is None or not self.cycle.more_body):
                self._disarm()
                self._in_body = False

        HeaderDeadline.handle_events = handle_events  # type: ignore[attr-defined]
    return HeaderDeadline
