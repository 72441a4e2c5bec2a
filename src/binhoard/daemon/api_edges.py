"""What surrounds the HTTP API's routes: the gate every request passes (the bearer
token, a body of at most ``MAX_BODY_BYTES`` of JSON, one line in the log, never a
header), the answers to errors (all ``{"message": ...}``) and the OpenAPI document's
security scheme.

The gate is a plain ASGI middleware, so that it also guards what the router answers
itself (unknown routes, wrong methods) and refuses before reading more of a body than
it accepts.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from email.message import Message
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from binhoard.domain.errors import (
    AuthenticationError,
    BinhoardError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
    UsageError,
)

log = logging.getLogger("binhoard.http")

MAX_BODY_BYTES = 1024 * 1024  # the largest request is a replication state of a few nodes
OPEN_PATHS = frozenset({"/healthz"})  # the routes that need no token


def error_body(message: str) -> dict[str, str]:
    return {"message": message}


class Gate:
    """The ASGI middleware every request passes before the application sees it."""

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self._token = None if token is None else token.encode()

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
        if self._token is not None and scope["path"] not in OPEN_PATHS:
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
        content_type = headers.get("content-type")
        if body and _is_curl_form(content_type):
            # What plain `curl -d '{...}'` sends (MyHoard's users' scripts do): read it as
            # JSON. Safe against a web page's form: a browser percent-encodes such a body,
            # so it can never be a JSON object; text/plain forms stay refused below.
            scope = {**scope, "headers": _with_json_type(scope["headers"])}
        elif body and not _is_json(content_type):
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


def _is_curl_form(content_type: bytes | None) -> bool:
    return content_type is not None and content_type.split(b";")[0].strip().lower() == (
        b"application/x-www-form-urlencoded"
    )


def _with_json_type(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    kept = [(name, value) for name, value in headers if name.lower() != b"content-type"]
    return [*kept, (b"content-type", b"application/json")]


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


async def no_unknown_query_parameters(request: Request) -> None:
    """A misspelt parameter (``?ordr=asc``) is refused, as unknown body fields are."""
    route = request.scope.get("route")
    known = (
        {param.alias for param in route.dependant.query_params}
        if isinstance(route, APIRoute)
        else set()
    )
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise UsageError(f"unknown query parameter: {', '.join(map(repr, unknown))}")


def validation_message(exc: RequestValidationError) -> str:
    """One line naming each bad field; never the value sent."""
    parts: list[str] = []
    for error in exc.errors()[:5]:
        where, *path = error["loc"] or ("body",)
        kind = error["type"]
        if kind == "json_invalid":
            detail = (error.get("ctx") or {}).get("error", "")
            return f"the request body is not valid JSON: {detail}".rstrip(": ")
        field = ".".join(str(part) for part in path)
        if where == "body" and not field:
            if kind == "missing":
                parts.append("the request body is missing: send a JSON object")
                continue
            if kind in ("model_type", "model_attributes_type", "dict_type"):
                parts.append("the request body must be a JSON object")
                continue
        if kind == "extra_forbidden":
            message = "unknown field"
        elif kind == "missing":
            message = "required"
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
        label = {"query": "query parameter ", "path": "path parameter "}.get(str(where), "")
        parts.append(f"{label}{field}: {message}" if field else message)
    return "; ".join(parts)


def handle_errors(app: FastAPI) -> None:
    """Every error answered as ``{"message": ...}`` with the status errors.py gives it."""

    @app.exception_handler(BinhoardError)
    async def binhoard_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BinhoardError)
        headers = {"Retry-After": "1"} if exc.http_status == 503 else None
        return JSONResponse(error_body(exc.message), exc.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(error_body(validation_message(exc)), UsageError.http_status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: Exception) -> Response:
        # The router's own: no such route (404), or not this method (405).
        assert isinstance(exc, HTTPException)
        message = f"{exc.detail}: {request.method} {request.url.path}"
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette names only the first route of the path (GET of GET and PUT /status).
            path = request.url.path
            allowed = {
                method
                for route in app.routes
                if isinstance(route, APIRoute) and route.path_regex.fullmatch(path)
                for method in route.methods or ()
            }
            headers = {**(headers or {}), "Allow": ", ".join(sorted(allowed))}
        return JSONResponse(error_body(message), exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def bug(_request: Request, _exc: Exception) -> Response:
        # A bug: uvicorn logs the traceback (this handler's exception is raised again
        # after the answer), the client gets only this.
        return JSONResponse(error_body("internal error: the daemon's log has the details"), 500)


def describe(app: FastAPI, *, with_token: bool, tags: list[dict[str, str]]) -> None:
    """The OpenAPI document, with the bearer token declared when one is required."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=tags,
            )
            if with_token:
                schema.setdefault("components", {})["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"}
                }
                for path, operations in schema["paths"].items():
                    if path not in OPEN_PATHS:
                        for operation in operations.values():
                            operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
