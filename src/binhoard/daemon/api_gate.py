"""What every HTTP request passes before a route sees it: the bearer token, a body of
at most ``MAX_BODY_BYTES`` of JSON, and one line in the log (never a header).

A plain ASGI middleware, so that it also guards what the router answers itself (unknown
routes, wrong methods) and refuses before reading more of a body than it accepts.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from email.message import Message

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from binhoard.domain.errors import (
    AuthenticationError,
    BinhoardError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
)

log = logging.getLogger("binhoard.http")

MAX_BODY_BYTES = 1024 * 1024  # the largest request is a replication state of a few nodes


def error_body(message: str) -> dict[str, str]:
    return {"message": message}


class Gate:
    def __init__(self, app: ASGIApp, *, token: str | None, open_paths: frozenset[str]) -> None:
        self.app = app
        self._token = None if token is None else token.encode()
        self._open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 0

        async def send_noting_status(message: AsgiMessage) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._pass(scope, receive, send_noting_status)
        finally:
            # The path only: no query string, no header (the token is one).
            log.debug(
                "%s %s -> %d in %.1f ms",
                scope["method"],
                scope["path"],
                status,
                (time.monotonic() - started) * 1000,
            )

    async def _pass(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {name.decode("latin-1"): value for name, value in scope["headers"]}
        if self._token is not None and scope["path"] not in self._open_paths:
            scheme, _, given = headers.get("authorization", b"").partition(b" ")
            # Constant time: the comparison must not tell how much of a guess was right.
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
                refusal = AuthenticationError(
                    "authentication required: send the http_auth_token of the daemon's "
                    "configuration as Authorization: Bearer <token>"
                )
                await _refuse(send, refusal, [(b"www-authenticate", b"Bearer")])
                return
        declared = headers.get("content-length", b"")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            await _refuse(send, _too_large())
            return
        chunks: list[bytes] = []
        size = 0
        while True:  # chunked bodies too: counted as they arrive
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await _refuse(send, _too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and not _is_json(headers.get("content-type")):
            await _refuse(
                send, UnsupportedMediaTypeError("the request body must be JSON (application/json)")
            )
            return
        replayed = False

        async def replay() -> AsgiMessage:
            nonlocal replayed
            if replayed:
                return await receive()  # what follows the body: a disconnect
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _is_json(content_type: bytes | None) -> bool:
    """No Content-Type is read as JSON (as MyHoard reads every body); any other type
    but JSON is refused, which also keeps a web page from posting forms to the API."""
    if content_type is None:
        return True
    parsed = Message()
    parsed["content-type"] = content_type.decode("latin-1")
    subtype = parsed.get_content_subtype()
    return parsed.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def _too_large() -> RequestTooLargeError:
    return RequestTooLargeError(f"the request body is larger than {MAX_BODY_BYTES} bytes")


async def _refuse(
    send: Send, error: BinhoardError, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(error_body(error.message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.http_status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
