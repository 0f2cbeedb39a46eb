"""``/jobs/{id}/model``, ``/jobs/{id}/predict``, ``/jobs/{id}/result``: what a finished job leaves behind."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from app.api.auth import PrincipalDep
from app.api.deps import SessionDep, SettingsDep, StorageDep
from app.api.errors import responses
from app.errors import PayloadTooLarge, field_error
from app.schemas import Predictions, PredictRequest, ResultBundle
from app.services import predict as predict_service
from app.services import results as results_service

router = APIRouter(prefix="/jobs", tags=["results"], responses=responses(404, 409, 413, 422))

_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"],
                           "properties": {"file": {"type": "string", "format": "binary",
                                                   "description": "CSV or Parquet with the training columns"}}}
            },
        },
    }
}


@router.get("/{job_id}/model", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}, "description": "the model file"}})
def download_model(
    job_id: str, session: SessionDep, storage: StorageDep, settings: SettingsDep, principal: PrincipalDep
) -> FileResponse:
    """The best model (``torch.save`` of the state dict, spec, preprocessing statistics and class labels;
    ``tuner.load_model(path)`` or ``torch.load(path, weights_only=True)``). 409 until the job succeeded."""
    job, path = predict_service.model_file(
        session, job_id, principal=principal, storage=storage, artifacts_dir=settings.artifacts_dir
    )
    return FileResponse(path, media_type="application/octet-stream", filename=predict_service.model_filename(job))


@router.post("/{job_id}/predict", response_model=Predictions, openapi_extra=_PREDICT_BODY)
async def predict(job_id: str, request: Request, session: SessionDep, storage: StorageDep,
                  settings: SettingsDep, principal: PrincipalDep) -> dict[str, Any]:
    """Predictions of the best model for rows as JSON (``{"rows": [[...]]}`` in the upload's column order,
    or objects keyed by column name) or a CSV/Parquet file (multipart field ``file``). Classification:
    label and probabilities by label; regression: the value in the target's units. 422 names the row
    and column of every problem; at most ``TUNER_PREDICT_MAX_ROWS`` rows (413)."""
    rows: list[Any] | None = None
    frame = None
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > settings.max_upload_bytes + 64 * 1024:
        raise PayloadTooLarge(f"the request is larger than the upload limit of {settings.max_upload_mb:g} MiB")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=10) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise field_error(["body", "file"], "is required (a CSV or Parquet file)")
            content = await upload.read(settings.max_upload_bytes + 1)
            if len(content) > settings.max_upload_bytes:
                raise PayloadTooLarge(f"the file is larger than the upload limit of {settings.max_upload_mb:g} MiB")
            frame = await run_in_threadpool(predict_service.read_table, content, upload.filename or "")
    else:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise field_error(["body"], "is not valid JSON") from None
        except RecursionError:  # e.g. [[[[...]]]] nested past Python's recursion limit
            raise field_error(["body"], "is not valid JSON (nested too deeply)") from None
        try:
            rows = PredictRequest.model_validate(body).rows
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()], body=body) from None
    return await run_in_threadpool(
        predict_service.predict, session, job_id, principal=principal, storage=storage, artifacts_dir=settings.artifacts_dir,
        max_rows=settings.predict_max_rows, rows=rows, frame=frame,
    )


@router.get("/{job_id}/result", response_model=ResultBundle)
def read_result(job_id: str, session: SessionDep, storage: StorageDep, principal: PrincipalDep) -> dict[str, Any]:
    """Everything the job produced and needs to be reproduced: best params and value (K-fold: each fold's
    value, mean and std), best epochs, test metrics with ``n_test`` and confusion matrix, split recipe and
    seeds, the data set's sha256 and size, package versions, timing, trials by state and failure cause,
    and the full spec. 409 until the job has finished (a failed or cancelled job has no test section)."""
    return results_service.result_bundle(session, job_id, principal=principal, storage=storage)
