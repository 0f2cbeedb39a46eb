"""``/datasets``: upload (multipart), list, read, delete."""

from __future__ import annotations

from typing import Annotated, Literal

import sqlalchemy as sa
from fastapi import APIRouter, File, Form, Query, Request, UploadFile, status

from app.api.deps import SessionDep, SettingsDep, WriteSessionDep
from app.errors import PayloadTooLarge
from app.models import Dataset
from app.schemas import DatasetPublic, Page
from app.services import datasets as service

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetPublic)
async def upload_dataset(
    request: Request,
    session: WriteSessionDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="CSV, Parquet or NPZ (arrays X and y)")],
    target: Annotated[str | None, Form(description="target column (CSV/Parquet)")] = None,
    task: Annotated[Literal["classification", "regression"] | None, Form()] = None,
    allow_nan: Annotated[bool, Form(description="accept missing feature values (impute in the job)")] = False,
) -> Dataset:
    """Upload a data set; it is validated now so a job never fails on unreadable data."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.max_upload_bytes + 64 * 1024:
        raise PayloadTooLarge(f"the file is larger than the upload limit of {settings.max_upload_mb:g} MiB")
    return await service.store_upload(
        session, file=file, filename=file.filename or "upload", uploads_dir=settings.uploads_dir,
        max_bytes=settings.max_upload_bytes, target=target or None, task=task, allow_nan=allow_nan,
    )


@router.get("", response_model=Page[DatasetPublic])
def list_datasets(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
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
