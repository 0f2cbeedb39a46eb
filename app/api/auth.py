"""Authentication: ``Authorization: Bearer <key>`` -> a :class:`Principal` for every request.

:class:`AuthMiddleware` runs for every path (routers, mounted apps such as the dashboard) except
:data:`PUBLIC_PATHS`: while any unrevoked key exists (or ``TUNER_REQUIRE_KEYS``), a request without a valid
key gets 401 with ``WWW-Authenticate: Bearer``; without keys the caller is the anonymous admin of tenant
``default``. Routes and services receive the principal through :data:`PrincipalDep`; the app-level
dependency :data:`AUTHENTICATED` refuses any route the middleware did not vouch for, so a new router is
protected without doing anything. Keys are never logged; look-ups are cached for ``auth_cache_s``.
"""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.config import Settings
from app.db import session_scope
from app.services import keys
from app.services.tenancy import ANONYMOUS, Principal

__all__ = ["ADMIN_PREFIXES", "AUTHENTICATED", "PUBLIC_PATHS", "AuthMiddleware", "KeyCache", "PrincipalDep",
           "get_principal", "still_authorised"]

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/"})  # "/": the web page's shell, which holds no data
PUBLIC_PREFIXES = ("/web/",)  # the page's static scripts and styles (every datum comes from the API, with a key)
# operator views across tenants (the dashboard, the Prometheus figures): admin keys only while keys exist
ADMIN_PREFIXES = ("/dashboard", "/metrics")


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_MAX_CACHED = 4096


class KeyCache:
    """``any key exists`` and hash -> principal, each remembered for ``ttl`` seconds (0: not cached)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._any: tuple[float, bool] | None = None
        self._keys: dict[str, tuple[float, Principal | None]] = {}

    def get_any(self) -> bool | None:
        hit = self._any
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def put_any(self, value: bool) -> None:
        self._any = (time.monotonic() + self.ttl, value)

    def get_key(self, digest: str) -> tuple[bool, Principal | None]:
        hit = self._keys.get(digest)
        if hit is None or hit[0] <= time.monotonic():
            return False, None
        return True, hit[1]

    def put_key(self, digest: str, principal: Principal | None) -> None:
        with self._lock:
            if len(self._keys) >= _MAX_CACHED:
                self._keys.clear()  # bounded: random wrong keys cannot grow it without limit
            self._keys[digest] = (time.monotonic() + self.ttl, principal)

    def clear(self) -> None:
        with self._lock:
            self._any = None
            self._keys.clear()


def bearer_token(headers: dict[bytes, bytes] | list[tuple[bytes, bytes]]) -> str | None:
    """The bearer token; None without an ``Authorization`` header; "" when malformed or sent twice (two
    headers could be read differently by a proxy and by this service, so neither is believed)."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    values = [v for k, v in items if k.lower() == b"authorization"]
    if not values:
        return None
    if len(values) > 1:
        return ""
    raw = values[0]
    scheme, _, token = raw.decode("latin-1").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else ""


class AuthMiddleware:
    """Sets ``request.state.principal`` or answers 401 (403 for a non-admin key on an admin path)."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.cache = KeyCache(settings.auth_cache_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope["headers"])
        engine = scope["app"].state.engine
        principal, reason = self._cached(token)
        if reason == "miss":
            principal, reason = await run_in_threadpool(self._resolve, engine, token)
        if principal is None:
            await _deny(scope, receive, send, 401, reason, _CHALLENGE)
            return
        if principal.key_id is not None and not principal.admin and scope["path"].startswith(ADMIN_PREFIXES):
            await _deny(scope, receive, send, 403, "an admin key is required", {})
            return
        state = scope.setdefault("state", {})
        state["principal"] = principal
        state["auth"] = (self, token)  # for long-lived answers that re-check the caller (still_authorised)
        await self.app(scope, receive, send)

    def _cached(self, token: str | None) -> tuple[Principal | None, str]:
        if token:
            found, principal = self.cache.get_key(keys.hash_key(token))
            if found:
                return principal, "" if principal else "invalid or revoked API key"
            return None, "miss"
        if token == "":
            return None, "malformed Authorization header; send exactly one 'Authorization: Bearer <key>'"
        any_key = self.cache.get_any()
        if any_key is None:
            return None, "miss"
        return self._anonymous(any_key)

    def _anonymous(self, any_key: bool) -> tuple[Principal | None, str]:
        """``any_key``: a key exists, or existed and every one was revoked (closed unless the operator
        set ``open_when_all_keys_revoked``)."""
        if any_key or self.settings.require_keys:
            return None, "an API key is required: send 'Authorization: Bearer <key>'"
        return ANONYMOUS, ""

    def _resolve(self, engine: Any, token: str | None) -> tuple[Principal | None, str]:
        with session_scope(engine) as session:
            if token:
                principal = keys.lookup(session, token)
                self.cache.put_key(keys.hash_key(token), principal)
                return principal, "" if principal else "invalid or revoked API key"
            any_key = (keys.any_active_key(session) if self.settings.open_when_all_keys_revoked
                       else keys.any_key_ever(session))
        self.cache.put_any(any_key)
        return self._anonymous(any_key)


async def _deny(scope: Scope, receive: Receive, send: Send, status: int, detail: str,
                headers: dict[str, str]) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)


async def still_authorised(request: Request) -> bool:
    """Whether the caller of a long-lived answer (an event stream) may still read: its key not revoked
    since the request began (or, anonymous, no key created since). Answers from the key cache, so many
    streams of one key cost one look-up per ``auth_cache_s``."""
    found = request.scope.get("state", {}).get("auth")
    if found is None:  # the middleware did not vouch for this request: fail closed
        return False
    middleware, token = found
    principal, reason = middleware._cached(token)
    if reason == "miss":
        principal, reason = await run_in_threadpool(middleware._resolve, request.app.state.engine, token)
    return principal is not None


def get_principal(request: Request) -> Principal:
    """The caller, as established by :class:`AuthMiddleware` (401 if it did not run: fail closed)."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise HTTPException(401, "an API key is required", headers=_CHALLENGE)
    return principal


def _authenticated(request: Request) -> None:
    if not is_public(request.url.path):
        get_principal(request)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
AUTHENTICATED = Depends(_authenticated)  # app-level: every route, present and future
