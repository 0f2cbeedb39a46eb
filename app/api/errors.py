"""One error shape for every reply, and the request-body limit enforced while the body streams in.

Every error is ``{"detail": "..."}`` or ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}``:
domain errors, Starlette's 404/405, 413 from :class:`BodyLimitMiddleware`, 422, 503 while the database is
unreachable (with ``Retry-After``) and 500 for anything unexpected. :data:`ERROR_RESPONSES` declares them in
the OpenAPI schema.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import optuna
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ERROR_RESPONSES", "BodyLimitMiddleware", "BodyTooLarge", "ErrorResponse", "install_error_handlers"]

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5
# Driver-level failures that mean "the database is not reachable right now", not a bug.
DATABASE_DOWN: tuple[type[Exception], ...] = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    sa.exc.TimeoutError,
    optuna.exceptions.StorageInternalError,
)


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every error reply: a sentence, or one ``dotted.field: reason`` entry per problem."""

    detail: str | list[ErrorItem]


def _response(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _response("Malformed request body (not JSON / multipart)"),
    401: _response("An API key is required (keys exist), or the key is wrong or revoked"),
    403: _response("Refused: a POST without JSON, a bearer key or X-Requested-With, an admin-only path or force"),
    404: _response("No such resource"),
    409: _response("Conflicts with the resource's state"),
    413: _response("Request body larger than the limit"),
    422: _response("Invalid request: one entry per field and reason"),
    429: _response("The tenant's quota of active jobs or queued trials is used up; retry after Retry-After"),
    500: _response("Unexpected server error"),
    503: _response("Database unreachable or not migrated; retry after the Retry-After seconds"),
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses=`` entries for these status codes."""
    return {c: ERROR_RESPONSES[c] for c in codes}


def json_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """:func:`responses` for a route whose success is not JSON (SSE): errors are still JSON."""
    ref = {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
    return {c: {"description": ERROR_RESPONSES[c]["description"], "content": {"application/json": ref}}
            for c in (*codes, 400, 401, 403, 500, 503)}


# ------------------------------------------------------------------------------------------ body limit
# ``(bytes, allowance)``, or one such pair per media type of the body (``"*"``: any other type).
BodyLimit = tuple[int, int] | Mapping[str, tuple[int, int]]


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` as soon as a body passes its limit (an HTTPException, so FastAPI re-raises it)."""

    def __init__(self, limit: int, allowance: int = 0) -> None:
        shown = limit - allowance  # the limit as the user set it, without the multipart framing allowance
        human = f"{shown / 2**20:g} MiB" if shown >= 2**20 else f"{shown / 1024:g} KiB"
        super().__init__(status_code=413, detail=f"the request body is larger than the limit of {human}")


class BodyLimitMiddleware:
    """Refuse a request body past its route's limit while it streams in, before it is spooled or parsed.

    ``limits`` maps ``(method, path)`` to ``(bytes, allowance)``: the body may be ``bytes + allowance``
    long (the allowance covers multipart framing); every other request gets ``default``. A route whose
    limit depends on the body's media type maps to ``{media type: (bytes, allowance)}`` instead, with
    ``"*"`` for any other type (``/jobs/{id}/predict``: a multipart file gets the upload limit, JSON the
    JSON limit). A path may be a route template (``/jobs/{job_id}/predict``): each ``{...}`` matches one
    path segment. A ``Content-Length`` over it is refused without reading; otherwise bytes are counted
    message by message and reading stops with 413 past it.
    """

    def __init__(
        self, app: ASGIApp, limits: Mapping[tuple[str, str], BodyLimit], default: tuple[int, int] | None = None
    ) -> None:
        self.app = app
        self.limits = {key: v for key, v in limits.items() if "{" not in key[1]}
        self.templates = [
            (method, re.compile(re.sub(r"\\\{[^/]*?\\\}", "[^/]+", re.escape(path.rstrip("/")))), v)
            for (method, path), v in limits.items() if "{" in path
        ]
        self.default = default

    def _limit(self, method: str, path: str, scope_headers: list[tuple[bytes, bytes]]) -> tuple[int, int] | None:
        path = path.rstrip("/") or "/"
        value: BodyLimit | None = self.limits.get((method, path))
        if value is None:
            for m, pattern, candidate in self.templates:
                if m == method and pattern.fullmatch(path):
                    value = candidate
                    break
            else:
                return self.default
        if isinstance(value, Mapping):
            # the first Content-Type, as the route reads it (Starlette's ``headers.get``)
            content_type = next((v for k, v in scope_headers if k == b"content-type"), b"")
            media = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
            return value.get(media, value.get("*", self.default))
        return value

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        entry = None
        headers: dict[bytes, bytes] = {}
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            entry = self._limit(scope["method"], scope["path"], scope["headers"])
        if entry is None:
            await self.app(scope, receive, send)
            return
        limit = entry[0] + entry[1]
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await _json_error(BodyTooLarge(limit, entry[1]), scope, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, entry[1])
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:  # raised where no exception handler saw it (e.g. a background read)
            if started:
                raise
            await _json_error(exc, scope, send)


async def _json_error(exc: HTTPException, scope: Scope, send: Send) -> None:
    async def no_body() -> Message:
        return {"type": "http.disconnect"}

    response = JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers={"Connection": "close"})
    await response(scope, no_body, send)


# -------------------------------------------------------------------------------------------- handlers
def install_error_handlers(
    app: FastAPI, *, body_limits: Mapping[tuple[str, str], BodyLimit], default_body_limit: tuple[int, int]
) -> None:
    """Register the JSON handlers for HTTP errors, database outages and bugs, and the body limits."""

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    async def _database_down(_request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unreachable: %s: %s", type(exc).__name__, exc)
        return JSONResponse(
            {"detail": f"the database is unreachable ({type(exc).__name__}); retry in a few seconds"},
            status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    for exc_type in DATABASE_DOWN:
        app.add_exception_handler(exc_type, _database_down)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, DATABASE_DOWN):
            return await _database_down(_request, exc)
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse({"detail": f"internal server error ({type(exc).__name__})"}, status_code=500)

    app.add_middleware(BodyLimitMiddleware, limits=body_limits, default=default_body_limit)
