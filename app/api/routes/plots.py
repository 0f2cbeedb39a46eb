"""``/jobs/{id}/importance`` and ``/jobs/{id}/plots/{kind}``: what mattered and how the search went."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from app.api.auth import PrincipalDep
from app.api.deps import SessionDep, StorageDep
from app.api.errors import responses
from app.errors import NotFound
from app.services import plots as service
from app.services.jobs import get_job

router = APIRouter(prefix="/jobs", tags=["plots"], responses=responses(404, 409, 413, 422))


@router.get("/{job_id}/importance")
def read_importance(job_id: str, session: SessionDep, storage: StorageDep, principal: PrincipalDep,
                    evaluator: service.Evaluator = "fanova") -> dict[str, Any]:
    """Hyperparameter importances on complete trials (Optuna's fANOVA by default; ``ped_anova`` or
    ``mean_decrease_impurity``), normalised to sum to 1. 409 while too few trials are complete."""
    job = get_job(session, job_id, principal=principal)
    return service.importances(storage, job.id, job.study_name, evaluator)


@router.get("/{job_id}/plots/{kind}", response_class=Response,
            responses={200: {"content": {"application/json": {}, "text/html": {}}}})
def read_plot(job_id: str, kind: str, session: SessionDep, storage: StorageDep, principal: PrincipalDep,
              format: Literal["json", "html"] = "json", evaluator: service.Evaluator = "fanova") -> Response:
    """A Plotly figure from ``optuna.visualization``: ``history``, ``intermediate`` (learning curves, pruned
    ones dotted red), ``parallel_coordinate``, ``importance``, ``slice``, ``contour`` or ``edf``; as Plotly
    JSON (``{"data": [...], "layout": {...}}``) or a self-contained HTML page (``?format=html``).
    Built from a bounded sample of trials: the best 200 and the 300 most recent."""
    if kind not in service.KINDS:
        raise NotFound(f"no plot kind '{kind}'; one of: {', '.join(service.KINDS)}")
    job = get_job(session, job_id, principal=principal)
    session.close()  # the figure may take a moment; hold no connection meanwhile
    fig = service.figure(kind, storage, job.id, job.study_name, evaluator=evaluator)  # type: ignore[arg-type]
    if format == "html":
        return HTMLResponse(fig.to_html(include_plotlyjs=True, full_html=True))
    return Response(fig.to_json(), media_type="application/json")
