"""Uploaded data sets: streamed to disk under a size limit, validated with the engine's loader, recorded.

Nothing is left half-written: the file goes to a temporary name first and is moved into place only
after it validated; any failure removes it. :func:`store_upload` is blocking (the route runs it in a
worker thread) and opens its write transaction only at the end, to insert the row.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.db import session_scope
from app.errors import Conflict, FieldErrors, NotFound, PayloadTooLarge, field_error
from app.models import Dataset, Job, JobStatus
from app.services.tenancy import Principal, can_see, owned
from tuner.data import infer_task, load_dataset
from tuner.limits import current as current_limits
from tuner.spec import DatasetSpec, SpecError

__all__ = ["FORMATS", "MAX_CATEGORIES", "delete_dataset", "get_dataset", "list_datasets", "store_upload"]

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
MAX_CATEGORIES = 1000  # distinct values a non-numeric feature may have (it is one-hot encoded)
_CHUNK = 1 << 20


def _save_stream(src: BinaryIO, dest: Path, limit: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with dest.open("wb") as out:
        while chunk := src.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the file is larger than the upload limit of {limit / 2**20:g} MiB")
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


def _summarise(path: Path, fmt: str, target: str | None, task: str | None, allow_nan: bool) -> dict[str, Any]:
    """Read and check the file; raise :class:`FieldErrors` with ``file``/``target``/``task`` locations."""
    if fmt != "npz" and not target:
        raise field_error(["body", "target"], f"is required for a {fmt.upper()} file")
    try:
        raw = load_dataset(DatasetSpec(path=str(path), target=target if fmt != "npz" else None))
    except SpecError as exc:
        raise FieldErrors(
            [(["body", "target" if e.startswith("dataset.target") else "file"],
              e.replace("dataset.target", "target").replace("dataset.path", "file").replace(path.name, "the file"))
             for e in exc.errors]
        ) from None
    except Exception as exc:  # noqa: BLE001 - e.g. a corrupt NPZ: any reader error is the user's data
        raise field_error(["body", "file"], f"cannot read the file: {exc}") from None
    frame, y = raw.frame, raw.target
    if len(frame) == 0:
        raise field_error(["body", "file"], "has no rows")
    y_missing = int(pd.isna(pd.Series(y)).sum())
    if y_missing:
        raise field_error(["body", "target"], f"{y_missing} rows have no target value")
    errors: list[tuple[list[str | int], str]] = []
    for col in frame.columns:
        s = frame[col]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            if np.isinf(s.to_numpy(dtype=np.float64, na_value=np.nan)).any():
                errors.append((["body", "file"], f"file: column '{col}' holds infinite values"))
            continue
        values = s.dropna()
        if not values.map(lambda v: isinstance(v, (str, bool, np.bool_))).all():
            errors.append((["body", "file"], f"file: column '{col}' is neither numeric nor categorical"))
        elif values.astype(str).nunique() > MAX_CATEGORIES:
            errors.append((["body", "file"],
                           f"file: column '{col}' is not numeric and has more than {MAX_CATEGORIES} distinct values"))
    width = _one_hot_width(frame)
    if width > current_limits().max_features:
        errors.append((["body", "file"], (f"file: the features one-hot encode to {width} columns, more than the "
                                         f"limit of {current_limits().max_features}")))
    missing = int(frame.isna().sum().sum())
    if missing and not allow_nan:
        errors.append((["body", "file"], (f"file: the features have {missing} missing values; upload with "
                                         "allow_nan=true and set dataset.impute in the job spec")))
    if errors:
        raise FieldErrors(errors)
    inferred = infer_task(y)
    task = task or inferred
    class_counts: dict[str, int] | None = None
    if task == "classification":
        vc = pd.Series(y).astype(str).value_counts(sort=False)
        class_counts = {str(k): int(v) for k, v in sorted(vc.items(), key=lambda kv: str(kv[0]))}
        if len(class_counts) < 2:
            raise field_error(["body", "target"], "a classification target needs at least two classes")
    else:
        try:
            np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError):
            raise field_error(["body", "task"], "a regression target must be numeric") from None
    return {
        "rows": len(frame),
        "columns": frame.shape[1],
        "feature_names": [str(c) for c in frame.columns],
        "target": target if fmt != "npz" else None,
        "task": task,
        "class_counts": class_counts,
        "missing_values": missing,
    }


def _one_hot_width(frame: pd.DataFrame) -> int:
    """Input width after one-hot encoding: one per numeric column, one per distinct value otherwise."""
    width = 0
    for col in frame.columns:
        s = frame[col]
        numeric = pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
        width += 1 if numeric else int(s.nunique(dropna=True))
    return width


def store_upload(
    engine: Engine,
    *,
    file: BinaryIO,
    filename: str,
    uploads_dir: Path,
    max_bytes: int,
    target: str | None,
    task: str | None,
    allow_nan: bool,
    principal: Principal,
    fits: Callable[[Session, int], None] | None = None,
) -> Dataset:
    """Save and validate an upload for the principal's tenant, then record it in a short write transaction
    of its own; ``fits(session, size)`` runs first in that transaction and may refuse it (the quota)."""
    suffix = Path(filename).suffix.lower()
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise field_error(["body", "file"], f"unsupported file type '{suffix}' (use .csv, .parquet or .npz)")
    uploads_dir.mkdir(parents=True, exist_ok=True)
    ds_id = str(uuid.uuid4())
    final = uploads_dir / f"{ds_id}{suffix}"
    tmp = uploads_dir / f".{ds_id}.part{suffix}"
    try:
        size, sha = _save_stream(file, tmp, max_bytes)
        summary = _summarise(tmp, fmt, target, task, allow_nan)
        os.replace(tmp, final)
        dataset = Dataset(
            id=ds_id, filename=Path(filename).name[:255], path=str(final.resolve()), format=fmt,
            size_bytes=size, sha256=sha, tenant=principal.tenant, **summary,
        )
        with session_scope(engine, write=True) as session:
            if fits is not None:
                fits(session, size)
            session.add(dataset)
    except BaseException:
        tmp.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
        raise
    return dataset


def get_dataset(session: Session, dataset_id: str, *, principal: Principal) -> Dataset:
    """The data set, if ``principal`` may see it (another tenant's is 404 like a missing one)."""
    ds = session.get(Dataset, dataset_id)
    if ds is None or not can_see(ds, principal):
        raise NotFound(f"no dataset with id {dataset_id}")
    return ds


def list_datasets(session: Session, *, principal: Principal, limit: int, offset: int) -> tuple[list[Dataset], int]:
    """The principal's data sets, newest first, and how many there are."""
    rows = session.scalars(
        owned(sa.select(Dataset), Dataset, principal)
        .order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit).offset(offset)
    ).all()
    total = session.scalar(owned(sa.select(sa.func.count()).select_from(Dataset), Dataset, principal)) or 0
    return list(rows), int(total)


def delete_dataset(session: Session, dataset_id: str, *, principal: Principal) -> None:
    ds = get_dataset(session, dataset_id, principal=principal)
    active = session.scalar(
        sa.select(sa.func.count()).select_from(Job).where(
            Job.dataset_id == ds.id,
            Job.status.in_([JobStatus.queued, JobStatus.running, JobStatus.finalizing]),
        )
    )
    if active:
        raise Conflict(f"dataset {ds.id} is used by {active} queued or running job(s)")
    session.delete(ds)
    session.flush()
    Path(ds.path).unlink(missing_ok=True)
