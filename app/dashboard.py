"""The official optuna-dashboard at ``/dashboard``, on the service's own storage, read-only.

optuna-dashboard is a WSGI (Bottle) app meant to own a whole host: its page loads ``/static/bundle.js``
and calls ``/api/...`` from the root. Mounted under ``/dashboard`` here:

- ``/dashboard/api/*``, ``/dashboard/static/*``, ``/dashboard/csv/*`` go to the dashboard's app
  (through ``a2wsgi.WSGIMiddleware``) with the prefix stripped;
- every other ``/dashboard/...`` path is the dashboard's page (its client-side routes live under
  ``/dashboard`` already), served with its script from ``/dashboard/static`` and a two-line shim
  (``/web/dashboard-prefix.js``) that sends its root ``/api`` calls to ``/dashboard/api``;
- anything but GET/HEAD is refused with 403: optuna-dashboard 0.21 has no read-only switch, and its
  mutating endpoints (create/rename/delete study, tell trial, notes, schema migration) must not touch jobs.

The WSGI app is built on first use, so the API still starts while the database is down.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import optuna
from starlette.responses import HTMLResponse, JSONResponse
from starlette.types import Receive, Scope, Send

__all__ = ["PREFIX", "ReadOnlyDashboard"]

PREFIX = "/dashboard"
_PASS = ("/api/", "/static/", "/csv/", "/favicon.ico")


@lru_cache(maxsize=1)
def _page() -> str:
    import optuna_dashboard

    html = (Path(optuna_dashboard.__file__).parent / "index.html").read_text()
    return html.replace(
        '<script defer src="/static/bundle.js"></script>',
        '<script src="/web/dashboard-prefix.js"></script>\n'
        f'    <script defer src="{PREFIX}/static/bundle.js"></script>',
    )


class ReadOnlyDashboard:
    """An ASGI app for ``app.mount("/dashboard", ...)``; ``storage`` is called once, on first request."""

    def __init__(self, storage: Callable[[], optuna.storages.BaseStorage]) -> None:
        self._storage = storage
        self._wsgi: Any = None
        self._lock = threading.Lock()

    def _app(self) -> Any:
        with self._lock:
            if self._wsgi is None:
                import optuna_dashboard
                from a2wsgi import WSGIMiddleware

                self._wsgi = WSGIMiddleware(optuna_dashboard.wsgi(self._storage()))  # type: ignore[arg-type]
            return self._wsgi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        root = scope.get("root_path", "")
        path: str = scope["path"]
        sub = path[len(root):] if root and path.startswith(root) else path
        if scope["method"] not in ("GET", "HEAD"):
            await JSONResponse({"detail": "the dashboard is read-only here; change jobs through the API"},
                               status_code=403)(scope, receive, send)
            return
        if not sub.startswith(_PASS):
            await HTMLResponse(_page(), headers={"Cache-Control": "no-cache"})(scope, receive, send)
            return
        headers = list(scope.get("headers", []))
        if not any(k.lower() == b"accept-encoding" for k, _ in headers):
            headers.append((b"accept-encoding", b"identity"))  # its static route reads the header unguarded
        await self._app()({**scope, "root_path": PREFIX, "path": PREFIX + sub, "headers": headers}, receive, send)
