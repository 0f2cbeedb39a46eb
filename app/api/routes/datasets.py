"""``/datasets``: upload (multipart), list, read, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile, status

from app.api.auth import PrincipalDep
from app.api.deps import DATASET_EXISTS, EngineDep, SessionDep, SettingsDep, WriteSessionDep
from app.api.errors import responses
from app.db import session_scope
from app.errors import PayloadTooLarge
from app.models import Dataset
from app.schemas import DatasetPublic, Page
from app.services import datasets as service
from app.services import quotas

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=responses(404, 409, 413, 422))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetPublic)
def upload_dataset(
    engine: EngineDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    principal: PrincipalDep,
    file: Annotated[UploadFile, File(description="CSV, Parquet or NPZ (arrays X and y)")],
    target: Annotated[str | None, Form(description="target column (CSV/Parquet)")] = None,
    task: Annotated[Literal["classification", "regression"] | None, Form()] = None,
    allow_nan: Annotated[bool, Form(description="accept missing feature values (impute in the job)")] = False,
) -> Dataset:
    """Upload a data set; it is validated now so a job never fails on unreadable data.

    A plain ``def``: FastAPI runs it in a worker thread, so validating a large file never blocks the event
    loop, and the database is written only at the end (the body limit is enforced while it streams in).
    The tenant's upload quota is checked first (from ``Content-Length``) and again while the file streams.
    """
    length = request.headers.get("content-length")
    with session_scope(engine) as session:
        room = quotas.upload_room(session, principal, settings, int(length) if length and length.isdigit() else None)
    try:
        dataset = service.store_upload(
            engine, file=file.file, filename=file.filename or "upload", uploads_dir=settings.uploads_dir,
            max_bytes=min(settings.max_upload_bytes, room), target=target or None, task=task, allow_nan=allow_nan,
            principal=principal, fits=lambda s, size: quotas.check_upload_fits(s, principal, settings, size),
        )
    except PayloadTooLarge:
        if room < settings.max_upload_bytes:  # the tenant's quota, not the per-file limit, was hit
            raise quotas.upload_quota_error(principal, settings, settings.quota_upload_bytes - room) from None
        raise
    response.headers["Location"] = f"/datasets/{dataset.id}"
    return dataset


@router.get("", response_model=Page[DatasetPublic])
def list_datasets(
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> dict[str, object]:
    """Data sets, newest first."""
    rows, total = service.list_datasets(session, principal=principal, limit=limit, offset=offset)
    return {"items": rows, "total": total, "limit": limit, "offset": offset}


@router.get("/{dataset_id}", response_model=DatasetPublic)
def read_dataset(session: SessionDep, dataset_id: str, principal: PrincipalDep) -> Dataset:
    return service.get_dataset(session, dataset_id, principal=principal)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[DATASET_EXISTS])
def delete_dataset(session: WriteSessionDep, dataset_id: str, principal: PrincipalDep) -> None:
    """Delete a data set and its file; refused (409) while a queued or running job uses it."""
    service.delete_dataset(session, dataset_id, principal=principal)
