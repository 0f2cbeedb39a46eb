"""The best model of a finished job: its file (for download) and predictions from it.

A loaded model is cached per process (LRU, keyed by job id and the file's modification time, so a
re-finalised job's new file is loaded afresh). Only files inside the artifacts directory are served.

The route looks the job up (:func:`model_file`) before it reads the request body; a file of rows is then
judged from its metadata (:func:`check_table`: the row limit, the width, cells and decompressed size of
:mod:`tuner.safeio`, as for an upload) before it is read (:func:`read_table`) and before the model is
loaded (:func:`predict_with`).
"""

from __future__ import annotations

import io
import re
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import optuna
import pandas as pd
from sqlalchemy.orm import Session

from app.errors import Conflict, FieldErrors, PayloadTooLarge, field_error
from app.models import Job, JobStatus
from app.services.jobs import get_job
from app.services.tenancy import Principal
from tuner import safeio
from tuner.artifacts import LoadedModel, load_model
from tuner.predict import InputError
from tuner.spec import SpecError

__all__ = ["MODEL_CACHE_SIZE", "check_table", "clear_cache", "model_file", "model_filename", "predict", "predict_with",
           "read_table"]

MODEL_CACHE_SIZE = 8
TABLE_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _study_attrs(storage: optuna.storages.BaseStorage, study_name: str) -> dict[str, Any]:
    try:
        return storage.get_study_user_attrs(storage.get_study_id_from_name(study_name))
    except KeyError:
        return {}


def model_file(session: Session, job_id: str, *, principal: Principal, storage: optuna.storages.BaseStorage,
               artifacts_dir: Path) -> tuple[Job, Path]:
    """The job and its best model's file; 404 for an unknown job, 409 until it has one."""
    job = get_job(session, job_id, principal=principal)
    if job.status != JobStatus.succeeded:
        raise Conflict(f"job {job_id} is {job.status}; its model is available once it has succeeded")
    stored = _study_attrs(storage, job.study_name).get("model_path")
    if not stored:
        raise Conflict(f"job {job_id} has no saved model")
    path = Path(stored).resolve()
    if not path.is_relative_to(Path(artifacts_dir).resolve()):  # never serve a file from elsewhere
        raise Conflict(f"job {job_id}: its model file is not in this server's artifacts directory")
    if not path.is_file():
        raise Conflict(f"job {job_id}: its model file is missing on the server")
    return job, path


def model_filename(job: Job) -> str:
    """``<job-name>-best-model.pt`` with the name reduced to safe characters."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", job.name).strip("-.") or "job"
    return f"{name[:100]}-best-model.pt"


@lru_cache(maxsize=MODEL_CACHE_SIZE)
def _cached_model(job_id: str, path: str, mtime_ns: int) -> LoadedModel:
    return load_model(path, device="cpu")


def clear_cache() -> None:
    _cached_model.cache_clear()


def _loaded(job_id: str, path: Path) -> LoadedModel:
    try:
        return _cached_model(job_id, str(path), path.stat().st_mtime_ns)
    except (KeyError, ImportError, ValueError) as exc:  # e.g. its model plugin is not installed in the API
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Conflict(f"job {job_id}: the model cannot be loaded here: {reason}") from None


def _format(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    fmt = TABLE_FORMATS.get(suffix)
    if fmt is None:
        raise field_error(["body", "file"], f"unsupported file type '{suffix}' (use .csv or .parquet)")
    return fmt


def check_table(file: IO[bytes], filename: str, *, max_rows: int) -> None:
    """Judge a CSV/Parquet file of rows from its metadata (Parquet footer, CSV header line and line count),
    before anything is read into memory: 413 past ``max_rows`` rows; 422 (``file``) for an unknown type,
    more columns than the feature limit, more cells or more memory than an upload may have."""
    fmt = _format(filename)
    name = Path(filename).name or f"rows.{fmt}"
    try:
        size = safeio.measure_data(file, name, "file")
        assert size is not None  # a CSV or Parquet name
        errors = safeio.limit_errors(size, name, "file")
        if not errors and size.rows > max_rows:
            given = f"{size.rows} lines given" if fmt == "csv" else f"{size.rows} given"
            raise PayloadTooLarge(f"file: at most {max_rows} rows per request ({given})")
    except SpecError as exc:
        errors = exc.errors
    if errors:
        unreadable = f"file: cannot read {name}: "  # the reader's own wording, as read_table says it
        raise FieldErrors([(["body", "file"], e.replace(unreadable, f"file: cannot read the file as {fmt.upper()}: ")
                            .replace(name, "the file")) for e in errors])


def read_table(content: bytes | IO[bytes], filename: str) -> pd.DataFrame:
    """A CSV or Parquet upload (its bytes or an open binary file) as a frame; 422 (``file``) when it cannot
    be read. Call :func:`check_table` first: this reads the whole file."""
    fmt = _format(filename)
    source = io.BytesIO(content) if isinstance(content, (bytes, bytearray)) else content
    try:
        return pd.read_csv(source) if fmt == "csv" else pd.read_parquet(source)
    except Exception as exc:  # noqa: BLE001 - any reader error is a problem with the user's file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise field_error(["body", "file"], f"cannot read the file as {fmt.upper()}: {reason}") from None


def predict(
    session: Session,
    job_id: str,
    *,
    principal: Principal,
    storage: optuna.storages.BaseStorage,
    artifacts_dir: Path,
    max_rows: int,
    rows: list[Any] | None = None,
    frame: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Predictions of the job's best model for JSON ``rows`` or a ``frame`` (an uploaded file)."""
    job, path = model_file(session, job_id, principal=principal, storage=storage, artifacts_dir=artifacts_dir)
    return predict_with(job, path, max_rows=max_rows, rows=rows, frame=frame)


def predict_with(job: Job, path: Path, *, max_rows: int, rows: list[Any] | None = None,
                 frame: pd.DataFrame | None = None) -> dict[str, Any]:
    """:func:`predict` for a job already looked up by :func:`model_file`."""
    where = "rows" if frame is None else "file"
    n = len(rows) if rows is not None else len(frame) if frame is not None else 0
    if n == 0:
        raise field_error(["body", where], "give at least one row")
    if n > max_rows:
        raise PayloadTooLarge(f"{where}: at most {max_rows} rows per request ({n} given)")
    model = _loaded(job.id, path)
    try:
        predictions = model.predict_frame(frame if frame is not None else rows)  # type: ignore[arg-type]
    except InputError as exc:
        raise FieldErrors([
            (["body", where, *([p.row] if p.row is not None else []), *([p.column] if p.column else [])], str(p))
            for p in exc.problems
        ]) from None
    return {"job_id": job.id, "task": model.task, "classes": model.classes, "n_rows": n,
            "predictions": predictions}
