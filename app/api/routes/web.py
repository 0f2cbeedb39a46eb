"""The web page: ``/`` (static HTML + JS over the public API) and Plotly's JS from the installed package.

Nothing is fetched from a CDN: ``/web/plotly.min.js`` is ``plotly.offline.get_plotlyjs()``, read once, and
the API docs (``/docs``) are Swagger UI from the installed ``swagger-ui-bundle-v2`` package under
``/web/swagger/``, started by ``/web/swagger-init.js`` (no inline script, so the page's CSP holds).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "install", "router"]

STATIC_DIR = Path(__file__).resolve().parents[2] / "web" / "static"

router = APIRouter(tags=["web"], include_in_schema=False)


@lru_cache(maxsize=1)
def _plotly_js() -> bytes:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode()


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/web/plotly.min.js")
def plotly_js() -> Response:
    return Response(_plotly_js(), media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})


_DOCS_HTML = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tuneserve - API docs</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/web/swagger/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/web/swagger/swagger-ui-bundle.js"></script>
<script src="/web/swagger-init.js"></script></body></html>
"""


@router.get("/docs")
def api_docs() -> Response:
    """Swagger UI for ``/openapi.json``, served from the installed package (works offline)."""
    return Response(_DOCS_HTML, media_type="text/html", headers={"Cache-Control": "no-cache"})


def install(app: FastAPI) -> None:
    """Add the page's routes, the API docs and the static files (``/web/*``) to ``app``."""
    from swagger_ui_bundle import swagger_ui_path

    app.include_router(router)
    app.mount("/web/swagger", StaticFiles(directory=str(swagger_ui_path)), name="swagger")  # before /web
    app.mount("/web", StaticFiles(directory=STATIC_DIR), name="web")
