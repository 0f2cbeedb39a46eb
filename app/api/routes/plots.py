"""``/jobs/{id}/importance`` and ``/jobs/{id}/plots/{kind}``: what mattered and how the search went.

The work is done in the plot pool (:class:`app.services.plots.PlotPool`), not in the request threadpool that
serves ``/healthz`` and the other routes: a few figures at a time, a bounded queue (503 with ``Retry-After``
when full) and a time budget per figure (503 when over it)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy.engine import Engine

from app.api.auth import PrincipalDep
from app.api.deps import EngineDep, StorageDep
from app.api.errors import responses
from app.db import session_scope
from app.errors import NotFound
from app.services import plots as service
from app.services.jobs import get_job
from app.services.tenancy import Principal

router = APIRouter(prefix="/jobs", tags=["plots"], responses=responses(404, 409, 413, 422, 503))

ParamsQ = Annotated[str | None, Query(max_length=4096, description=(
    "slice, parallel_coordinate, contour: the parameters to draw, comma-separated (at most "
    f"{service.MAX_PARAMS}; {service.MAX_CONTOUR_PARAMS} for a contour). Default: all of them, or the most "
    "important ones when the job has more"))]


def _job(engine: Engine, job_id: str, principal: Principal) -> tuple[str, str]:
    with session_scope(engine) as session:
        job = get_job(session, job_id, principal=principal)
        return job.id, job.study_name


@router.get("/{job_id}/importance")
async def read_importance(job_id: str, request: Request, engine: EngineDep, storage: StorageDep,
                          principal: PrincipalDep, evaluator: service.Evaluator = "fanova") -> dict[str, Any]:
    """Hyperparameter importances on complete trials (Optuna's fANOVA by default; ``ped_anova`` or
    ``mean_decrease_impurity``), normalised to sum to 1. 409 while too few trials are complete; 503 when
    the plot pool is busy (``Retry-After``) or the computation exceeds its time budget."""
    jid, study_name = await run_in_threadpool(_job, engine, job_id, principal)
    pool = service.plot_pool(request.app.state)
    return await pool.compute("the importance", service.importances, storage, jid, study_name, evaluator)  # type: ignore[no-any-return]


@router.get("/{job_id}/plots/{kind}", response_class=Response,
            responses={200: {"content": {"application/json": {}, "text/html": {}}}})
async def read_plot(job_id: str, kind: str, request: Request, engine: EngineDep, storage: StorageDep,
                    principal: PrincipalDep, format: Literal["json", "html"] = "json",
                    evaluator: service.Evaluator = "fanova", params: ParamsQ = None) -> Response:
    """A Plotly figure from ``optuna.visualization``: ``history``, ``intermediate`` (learning curves, pruned
    ones dotted grey), ``parallel_coordinate``, ``importance``, ``slice``, ``contour`` or ``edf``; as Plotly
    JSON (``{"data": [...], "layout": {...}}``) or a self-contained HTML page (``?format=html``).
    Built from a bounded sample of trials: the best 200 and the 300 most recent. ``slice`` and
    ``parallel_coordinate`` draw at most 8 parameters, ``contour`` at most 5 (10 pairs): ``?params=``, or
    else the most important ones (PED-ANOVA); ``layout.meta`` and the ``X-Plot-Params`` header
    (``shown/total``) say which. 503 when the plot pool is busy (``Retry-After``) or a figure exceeds its
    time budget (20 s)."""
    if kind not in service.KINDS:
        raise NotFound(f"no plot kind '{kind}'; one of: {', '.join(service.KINDS)}")
    asked = service.parse_params(kind, params)
    jid, study_name = await run_in_threadpool(_job, engine, job_id, principal)
    pool = service.plot_pool(request.app.state)
    body, media_type, meta = await pool.compute(f"the {kind} plot", service.render, kind, storage, jid, study_name,
                                                evaluator, asked, format)
    headers = {"X-Plot-Params": f"{len(meta['params'])}/{meta['params_total']}"} if meta else None
    return Response(body, media_type=media_type, headers=headers)
