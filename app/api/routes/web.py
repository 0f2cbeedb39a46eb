"""The web page: ``/`` (static HTML + JS over the public API) and Plotly's JS from the installed package.

Nothing is fetched from a CDN: ``/web/plotly.min.js`` is ``plotly.offline.get_plotlyjs()``, read once.
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


def install(app: FastAPI) -> None:
    """Add the page's routes and its static files (``/web/*``) to ``app``."""
    app.include_router(router)
    app.mount("/web", StaticFiles(directory=STATIC_DIR), name="web")
