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
from app.api.errors import BodyTooLarge, responses
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


async def _read_json_body(request: Request, limit: int) -> bytes:
    """The body, read up to ``limit`` bytes (413 past it; the middleware's limit for this route and media
    type is the same, this keeps it whatever the headers made of it)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


def _parse_rows(body: bytes) -> list[Any]:
    """JSON ``{"rows": [...]}`` to its rows (run in a worker thread: parsing is CPU-bound)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise field_error(["body"], "is not valid JSON") from None
    except RecursionError:  # e.g. [[[[...]]]] nested past Python's recursion limit
        raise field_error(["body"], "is not valid JSON (nested too deeply)") from None
    try:
        return PredictRequest.model_validate(data).rows
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()], body=data) from None


@router.post("/{job_id}/predict", response_model=Predictions, openapi_extra=_PREDICT_BODY)
async def predict(job_id: str, request: Request, session: SessionDep, storage: StorageDep,
                  settings: SettingsDep, principal: PrincipalDep) -> dict[str, Any]:
    """Predictions of the best model for rows as JSON (``{"rows": [[...]]}`` in the upload's column order,
    or objects keyed by column name; the body at most ``TUNER_MAX_JSON_KB``) or a CSV/Parquet file
    (multipart field ``file``, at most ``TUNER_MAX_UPLOAD_MB``, judged from its metadata like an upload
    before it is read). Classification: label and probabilities by label; regression: the value in the
    target's units. 422 names the row and column of every problem; at most ``TUNER_PREDICT_MAX_ROWS``
    rows (413). The job is looked up (404, 409) before the body is read."""

    def lookup() -> tuple[Any, Any]:
        found = predict_service.model_file(
            session, job_id, principal=principal, storage=storage, artifacts_dir=settings.artifacts_dir)
        session.commit()  # no read transaction stays open while the body streams in
        return found

    job, path = await run_in_threadpool(lookup)
    rows: list[Any] | None = None
    frame = None
    # The body's size limit (the upload limit for a multipart file, the JSON limit otherwise) is enforced
    # by BodyLimitMiddleware from Content-Length and while the body streams in (app/main.py).
    if request.headers.get("content-type", "").split(";", 1)[0].strip().lower() == "multipart/form-data":
        async with request.form(max_files=1, max_fields=10) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise field_error(["body", "file"], "is required (a CSV or Parquet file)")
            if upload.size is not None and upload.size > settings.max_upload_bytes:
                raise PayloadTooLarge(f"the file is larger than the upload limit of {settings.max_upload_mb:g} MiB")
            filename = upload.filename or ""
            await run_in_threadpool(
                predict_service.check_table, upload.file, filename, max_rows=settings.predict_max_rows)
            frame = await run_in_threadpool(predict_service.read_table, upload.file, filename)
    else:
        rows = await run_in_threadpool(_parse_rows, await _read_json_body(request, settings.max_json_bytes))
    return await run_in_threadpool(
        predict_service.predict_with, job, path, max_rows=settings.predict_max_rows, rows=rows, frame=frame)


@router.get("/{job_id}/result", response_model=ResultBundle)
def read_result(job_id: str, session: SessionDep, storage: StorageDep, principal: PrincipalDep) -> dict[str, Any]:
    """Everything the job produced and needs to be reproduced: best params and value (K-fold: each fold's
    value, mean and std), best epochs, test metrics with ``n_test`` and confusion matrix, split recipe and
    seeds, the data set's sha256 and size, package versions, timing, trials by state and failure cause,
    and the full spec. 409 until the job has finished (a failed or cancelled job has no test section)."""
    return results_service.result_bundle(session, job_id, principal=principal, storage=storage)
