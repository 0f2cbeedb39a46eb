"""``/datasets``: upload (multipart), list, read, delete."""

from __future__ import annotations

from typing import Annotated, Literal

import sqlalchemy as sa
from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status

from app.api.deps import EngineDep, SessionDep, SettingsDep, WriteSessionDep
from app.api.errors import responses
from app.models import Dataset
from app.schemas import DatasetPublic, Page
from app.services import datasets as service

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=responses(404, 409, 413, 422))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetPublic)
def upload_dataset(
    engine: EngineDep,
    settings: SettingsDep,
    response: Response,
    file: Annotated[UploadFile, File(description="CSV, Parquet or NPZ (arrays X and y)")],
    target: Annotated[str | None, Form(description="target column (CSV/Parquet)")] = None,
    task: Annotated[Literal["classification", "regression"] | None, Form()] = None,
    allow_nan: Annotated[bool, Form(description="accept missing feature values (impute in the job)")] = False,
) -> Dataset:
    """Upload a data set; it is validated now so a job never fails on unreadable data.

    A plain ``def``: FastAPI runs it in a worker thread, so validating a large file never blocks the event
    loop, and the database is written only at the end (the body limit is enforced while it streams in).
    """
    dataset = service.store_upload(
        engine, file=file.file, filename=file.filename or "upload", uploads_dir=settings.uploads_dir,
        max_bytes=settings.max_upload_bytes, target=target or None, task=task, allow_nan=allow_nan,
    )
    response.headers["Location"] = f"/datasets/{dataset.id}"
    return dataset


@router.get("", response_model=Page[DatasetPublic])
def list_datasets(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> dict[str, object]:
    """Data sets, newest first."""
    rows = session.scalars(
        sa.select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit).offset(offset)
    ).all()
    total = session.scalar(sa.select(sa.func.count()).select_from(Dataset)) or 0
    return {"items": rows, "total": total, "limit": limit, "offset": offset}


@router.get("/{dataset_id}", response_model=DatasetPublic)
def read_dataset(session: SessionDep, dataset_id: str) -> Dataset:
    return service.get_dataset(session, dataset_id)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(session: WriteSessionDep, dataset_id: str) -> None:
    """Delete a data set and its file; refused (409) while a queued or running job uses it."""
    service.delete_dataset(session, dataset_id)
