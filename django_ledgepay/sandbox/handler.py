"""The sandbox's HTTP handler: the API under ``/v1`` (behind the rate limit and the injected
failures) and the checkout pages under ``/checkout/``."""

from __future__ import annotations

import contextlib
import logging
import socket
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from django_ledgepay.sandbox.api import Answer, APIFailure
from django_ledgepay.sandbox.checkout import serve_checkout
from django_ledgepay.sandbox.state import LedgePayState

# The name the sandbox has always logged under, which a project's LOGGING may name.
logger = logging.getLogger("django_ledgepay.sandbox.server")


class Served(Protocol):
    """What the handler serves: the sandbox."""

    state: LedgePayState

    def rate_limit_headers(self) -> tuple[dict[str, str], bool]: ...

    def draw_failure(self, method: str) -> str | None: ...


class Handler(BaseHTTPRequestHandler):
    """Subclassed for each server with the ``sandbox`` it serves."""

    sandbox: Served
    protocol_version = "HTTP/1.1"
    server_version = "LedgePaySandbox/1"
    #: Buffered writes: an answer's headers and body leave in one send (see _send).
    wbufsize = 64 * 1024
    #: Whether this request's answer has begun (or its connection was dropped on purpose).
    _responded = False

    def setup(self) -> None:
        super().setup()
        # Without it, a body sent after the headers waits for the client's delayed ACK of
        # them (Nagle's algorithm): about 40 ms on every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def _route(self, method: str) -> None:
        """Serve one request; an unexpected error is logged and answered with a JSON 500."""
        self._responded = False
        try:
            self._dispatch(method)
        except (BrokenPipeError, ConnectionResetError):
            # The client went away; there is no one to answer.
            self.close_connection = True
        except Exception:
            logger.exception("The sandbox failed to serve %s %s.", method, self.path)
            # What is left of the request may be unread: the connection cannot be reused.
            self.close_connection = True
            if not self._responded:
                failure = APIFailure(
                    500, "The sandbox failed; its log holds the details.", error_type="api_error"
                )
                with contextlib.suppress(OSError):
                    self._answer(Answer(500, failure.body()), {"Connection": "close"})

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        body = self._body()
        if parts.path == "/v1" or parts.path.startswith("/v1/"):
            self._api(method, parts.path.removeprefix("/v1"), dict(parse_qsl(parts.query)), body)
        elif parts.path.startswith("/checkout/"):
            payment_id = parts.path.removeprefix("/checkout/")
            self._send(*serve_checkout(self.sandbox.state, method, payment_id, body))
        else:
            self._send(404, {"Content-Type": "text/plain"}, b"Not found.")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _api(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        sandbox = self.sandbox
        headers, over = sandbox.rate_limit_headers()
        if over:
            answer = Answer(
                429, APIFailure(429, "Too many requests.", error_type="rate_limit_error").body()
            )
            self._answer(answer, headers)
            return
        failure = sandbox.draw_failure(method)
        if failure == "500":
            self._answer(
                Answer(500, {"error": {"type": "api_error", "message": "Injected."}}), headers
            )
            return
        if failure == "429":
            headers["Retry-After"] = "0"
            self._answer(
                Answer(429, {"error": {"type": "rate_limit_error", "message": "Injected."}}),
                headers,
            )
            return
        if failure == "drop":
            self._drop()
            return
        answer = sandbox.state.handle(method, path, query, body, dict(self.headers.items()))
        if failure == "500-after":
            self._answer(
                Answer(500, {"error": {"type": "api_error", "message": "Injected."}}), headers
            )
        elif failure == "drop-after":
            self._drop()
        else:
            self._answer(answer, headers)

    def _answer(self, answer: Answer, headers: dict[str, str]) -> None:
        self._send(
            answer.status, {**headers, "Content-Type": "application/json"}, answer.json().encode()
        )

    def _drop(self) -> None:
        # The connection closes with no answer, as when a network drops it.
        self._responded = True
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self._responded = True
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        # Sent here, in one piece when it fits the buffer, and where _route hears of a
        # client that has gone.
        self.wfile.flush()
