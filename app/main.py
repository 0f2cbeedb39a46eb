"""The FastAPI application: ``create_app(settings)``; OpenAPI at ``/docs``."""

from __future__ import annotations

import threading
from typing import Any

import optuna
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app import observability
from app.api.auth import AUTHENTICATED
from app.api.errors import install_error_handlers, responses
from app.api.routes import datasets, health, job_events, jobs, plots, web
from app.api.routes import results as results_routes
from app.api.security import install_security
from app.core.config import Settings, get_settings
from app.dashboard import ReadOnlyDashboard
from app.db import get_engine, make_storage
from app.errors import DomainError
from app.services.jobs import PATH_REFUSED
from tuner import limits
from tuner.spec import error_reason

__all__ = ["create_app", "validation_errors"]

_SKIP = ("holdout", "kfold")


def validation_errors(errors: Any) -> list[dict[str, Any]]:
    """pydantic errors -> ``[{"loc": [...], "msg": "dotted.field: reason", "type": ...}]``.

    The spec's model validators phrase several ``field: reason`` lines at once; each becomes an entry
    whose location is extended by that field.
    """
    out: list[dict[str, Any]] = []
    for err in errors:
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p in _SKIP)]
        where = [p for p in loc if p not in ("body", "query", "path", "form", "header")]
        for part in error_reason(err).split("\n"):
            head = part.split(": ", 1)[0]
            if ": " in part and " " not in head:
                extra = [int(p) if p.isdigit() else p for p in head.split(".")]
                full = [*loc, *extra]
                dotted = ".".join(str(p) for p in [*where, *extra])
                out.append({"loc": full, "msg": f"{dotted}: {part.split(': ', 1)[1]}", "type": err["type"]})
            else:
                dotted = ".".join(str(p) for p in where) or "(request)"
                out.append({"loc": loc, "msg": f"{dotted}: {part}", "type": err["type"]})
    return out


class _LazyStorage:
    """Optuna's storage for the API, made on first use (the API starts even while the DB is down)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._storage: optuna.storages.RDBStorage | None = None
        self._lock = threading.Lock()

    def __call__(self) -> optuna.storages.RDBStorage:
        with self._lock:
            if self._storage is None:
                self._storage = make_storage(self.url)
            return self._storage


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="tuneserve",
        version="0.1.0",
        description="Hyperparameter tuning for PyTorch models: submit a job spec, poll its trials and results.",
        responses=responses(400, 401, 403, 500, 503),
        docs_url=None,  # served from the installed Swagger UI package by app.api.routes.web (no CDN)
        redoc_url=None,
        dependencies=[AUTHENTICATED],  # every route needs a principal (but /healthz, /readyz): see app/api/auth.py
    )
    limits.configure(settings.limits())
    install_error_handlers(app, default_body_limit=(settings.max_json_bytes, 0), body_limits={
        ("POST", "/datasets"): (settings.max_upload_bytes, 64 * 1024),  # the file plus the multipart framing
        ("POST", "/jobs/{job_id}/predict"): {  # a CSV/Parquet file of rows, or JSON rows (parsed in full)
            "multipart/form-data": (settings.max_upload_bytes, 64 * 1024), "*": (settings.max_json_bytes, 0)},
    })
    install_security(app, settings)
    app.state.settings = settings
    app.state.engine = get_engine(settings.database_url)
    app.state.storage = _LazyStorage(settings.database_url)

    @app.exception_handler(DomainError)
    async def _domain_error(_request: Request, exc: DomainError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = validation_errors(exc.errors())
        body = exc.body
        if request.url.path == "/jobs" and isinstance(body, dict) and isinstance(body.get("dataset"), dict) \
                and body["dataset"].get("path") is not None:
            # Say first what matters: over HTTP a path is never accepted, whatever else is wrong.
            detail = [e for e in detail if e["loc"][:2] != ["body", "dataset"]]
            detail.insert(0, {"loc": ["body", "dataset", "path"], "type": "value_error", "msg": PATH_REFUSED})
        return JSONResponse({"detail": detail}, status_code=422)

    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(results_routes.router)
    app.include_router(datasets.router)
    app.include_router(job_events.router)
    app.include_router(plots.router)
    web.install(app)
    observability.install(app, app.state.engine, grace_period_s=settings.grace_period)
    app.mount("/dashboard", ReadOnlyDashboard(app.state.storage), name="dashboard")
    return app
