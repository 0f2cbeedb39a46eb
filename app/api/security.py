"""What protects the API from the browser next door: Host check, CORS (off by default), a cross-site POST
guard, and the authentication middleware; :func:`install_security` registers them on the app.

Middleware order (outermost first): security headers -> TrustedHost (DNS rebinding) -> control characters
in the path -> CORS -> Auth -> POST guard -> routes.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.auth import AuthMiddleware
from app.core.config import Settings
from tuner.spec import CONTROL_CHARACTERS

__all__ = ["CSRF_HEADER", "PAGE_CSP", "ControlCharacterGuard", "CrossSitePostGuard", "SecurityHeaders", "bind_refusal", "install_security", "is_loopback", "serve_settings"]

CSRF_HEADER = "X-Requested-With"
POST_REFUSED = (
    "a POST needs 'Content-Type: application/json', an 'Authorization: Bearer' header or an "
    f"'{CSRF_HEADER}' header (so that a form on another web site cannot act on this service)"
)


class CrossSitePostGuard:
    """Refuse (403) a POST that a web page on another site could send without a CORS preflight.

    Browsers send a form post or a body-less ``fetch`` cross-site without asking; a JSON body, an
    ``Authorization`` header or a custom header (``X-Requested-With``) makes them ask first (CORS preflight),
    which this service denies unless ``TUNER_CORS_ORIGINS`` allows the origin. PUT/PATCH/DELETE always need
    a preflight, so only POST is checked.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = dict(scope["headers"])
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            ok = (ctype == b"application/json" or b"authorization" in headers
                  or bool(headers.get(CSRF_HEADER.lower().encode(), b"").strip()))
            if not ok:
                await JSONResponse({"detail": POST_REFUSED}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# The web page and the API docs load only this origin's own files (Plotly and Swagger UI come from installed
# packages); Plotly sets inline styles. No page of this service may be framed by another site.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
            "font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")
API_CSP = "frame-ancestors 'none'"
PAGE_PATHS = frozenset({"/", "/docs"})


class SecurityHeaders:
    """On every answer: ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, no referrer, and a
    Content-Security-Policy (:data:`PAGE_CSP` for the page and the API docs, ``frame-ancestors 'none'``
    elsewhere). Headers a route set itself are kept."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = (PAGE_CSP if scope["path"] in PAGE_PATHS else API_CSP).encode()

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for key, value in ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                                   (b"referrer-policy", b"no-referrer"), (b"content-security-policy", csp)):
                    if key not in present:
                        headers.append((key, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def has_control_characters(text: str) -> bool:
    return CONTROL_CHARACTERS.search(text) is not None


class ControlCharacterGuard:
    """A path holding NUL or another control character names nothing: ``404`` before any route or database
    (PostgreSQL cannot even compare such a string); such a query string is a ``422``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if has_control_characters(scope["path"]):
                await JSONResponse({"detail": "not found"}, status_code=404)(scope, receive, send)
                return
            query = unquote_to_bytes(scope.get("query_string", b"").replace(b"+", b" "))
            if CONTROL_CHARACTERS.search(query.decode("latin-1")):
                await JSONResponse({"detail": [{"loc": ["query"], "type": "value_error",
                                                "msg": "must not contain NUL or other control characters"}]},
                                   status_code=422)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class JSONTrustedHostMiddleware:
    """Starlette's :class:`TrustedHostMiddleware` (its host matching), answering a refused host with the
    service's JSON error shape instead of plain text."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allowed_hosts = list(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        passed = False

        async def passthrough(s: Scope, r: Receive, se: Send) -> None:
            nonlocal passed
            passed = True
            await self.app(s, r, se)

        async def refuse(message: Message) -> None:
            if message["type"] == "http.response.start" and not passed:
                body = b'{"detail":"invalid Host header (not in TUNER_ALLOWED_HOSTS)"}'
                await send({"type": "http.response.start", "status": 400, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
            elif passed:
                await send(message)

        checker = TrustedHostMiddleware(passthrough, allowed_hosts=self.allowed_hosts, www_redirect=False)
        await checker(scope, receive, refuse if scope["type"] == "http" else send)


def install_security(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(CrossSitePostGuard)
    app.add_middleware(AuthMiddleware, settings=settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", CSRF_HEADER],
        )
    app.add_middleware(ControlCharacterGuard)
    app.add_middleware(JSONTrustedHostMiddleware, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(SecurityHeaders)  # outermost: every answer, refusals included


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_refusal(host: str, *, insecure: bool, keys_exist: bool) -> str | None:
    """Why ``tuner serve`` must not listen on ``host`` (None: it may)."""
    if is_loopback(host) or insecure or keys_exist:
        return None
    return (f"refusing to listen on {host}: no API key exists, so anyone who can reach the port could use the "
            "service. Create one with `tuner keys create NAME --admin` (then every request needs it), bind "
            "127.0.0.1, or pass --insecure to serve without keys on purpose.")


def serve_settings(settings: Settings, host: str, *, insecure: bool) -> tuple[Settings, str | None]:
    """``tuner serve``'s settings for ``host`` and, if it must not start, why.

    On a non-loopback host with keys (and without ``--insecure``), ``require_keys`` is switched on so that
    revoking the last key closes the service instead of opening it to everyone.
    """
    import sqlalchemy as sa

    from app.db import get_engine, session_scope
    from app.services.keys import any_active_key

    if insecure or is_loopback(host):
        return settings, None
    try:
        with session_scope(get_engine(settings.database_url)) as session:
            keys_exist = any_active_key(session)
    except sa.exc.SQLAlchemyError:
        keys_exist = True  # cannot tell now: start, but closed (401) until a key is seen
    refusal = bind_refusal(host, insecure=insecure, keys_exist=keys_exist)
    if refusal is None:
        settings = settings.model_copy(update={"require_keys": True})
    return settings, refusal
