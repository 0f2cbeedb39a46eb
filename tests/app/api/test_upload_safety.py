"""Uploads that would blow up the API process are refused from their metadata; validation never blocks."""

from __future__ import annotations

import io
import threading
import time
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.db import get_engine, session_scope
from app.main import create_app
from app.services import datasets as service
from tuner import limits
from tuner.limits import Limits


@pytest.fixture
def small_limits(settings) -> Iterator[TestClient]:
    """A client whose data caps are small enough for a bomb under the 1 MiB test upload limit."""
    settings = settings.model_copy(update={"max_decompressed_mb": 32, "max_cells": 2_000, "max_features": 50})
    try:
        with TestClient(create_app(settings), headers={"X-Requested-With": "tuneserve-tests"}) as c:
            yield c
    finally:
        limits.configure(Limits())


def _post(client, content: bytes, filename: str, **form) -> tuple[object, int]:
    """Upload and return (response, peak bytes allocated meanwhile)."""
    tracemalloc.start()
    try:
        r = client.post("/datasets", files={"file": (filename, content)}, data=form)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return r, peak


def _npz_bomb() -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, X=np.zeros((2048, 8192)), y=np.zeros(2048))  # 128 MiB of zeros
    return buf.getvalue()


def _parquet_bomb() -> bytes:
    buf = io.BytesIO()
    chunk = pa.table({"a": np.zeros(1_000_000, dtype=np.int64), "y": np.zeros(1_000_000, dtype=np.int64)})
    with pq.ParquetWriter(buf, chunk.schema, compression="zstd") as w:
        for _ in range(8):  # 8M rows x 2 columns: 128 MiB once loaded
            w.write_table(chunk)
    return buf.getvalue()


def test_npz_bomb_is_refused_from_its_headers(small_limits, unchanged, settings):
    bomb = _npz_bomb()
    assert len(bomb) < settings.max_upload_bytes
    with unchanged():
        r, peak = _post(small_limits, bomb, "bomb.npz")
    assert r.status_code == 422, r.text
    msgs = [e["msg"] for e in r.json()["detail"]]
    assert "file: the file would take 128 MiB in memory once decompressed, more than the limit of 32 MiB" in msgs
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB allocated"


def test_parquet_bomb_is_refused_from_its_footer(small_limits, unchanged, settings):
    bomb = _parquet_bomb()
    assert len(bomb) < settings.max_upload_bytes
    with unchanged():
        r, peak = _post(small_limits, bomb, "bomb.parquet", target="y")
    assert r.status_code == 422, r.text
    msgs = [e["msg"] for e in r.json()["detail"]]
    assert "file: the file holds 16,000,000 values (rows x columns), more than the limit of 2,000" in msgs
    assert "file: the file would take 122 MiB in memory once decompressed, more than the limit of 32 MiB" in msgs
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB allocated"


def test_csv_cells_object_npz_and_one_hot_width(small_limits, unchanged):
    csv = b"a,b,y\n" + b"1,2,0\n1,2,1\n" * 500
    buf = io.BytesIO()
    np.savez(buf, X=np.array([[object()], [object()]], dtype=object), y=np.array([0, 1]))
    rows = [f"{i % 30},{(i * 7) % 30}x,{(i * 11) % 30}y,{i % 2}" for i in range(60)]
    wide = ("a,b,c,y\n" + "\n".join(f"v{r}" for r in rows)).encode()  # 3 string columns, 30 values each
    with unchanged():
        r_csv = small_limits.post("/datasets", files={"file": ("c.csv", csv)}, data={"target": "y"})
        r_obj = small_limits.post("/datasets", files={"file": ("o.npz", buf.getvalue())})
        r_wide = small_limits.post("/datasets", files={"file": ("w.csv", wide)}, data={"target": "y"})
    assert r_csv.status_code == 422
    assert r_csv.json()["detail"][0]["msg"] == (
        "file: the file holds 3,000 values (rows x columns), more than the limit of 2,000")
    assert r_obj.status_code == 422
    assert "holds Python objects; only numeric arrays are accepted" in r_obj.json()["detail"][0]["msg"]
    assert r_wide.status_code == 422
    assert r_wide.json()["detail"][0]["msg"] == (
        "file: the features one-hot encode to 90 columns, more than the limit of 50")


def test_validation_runs_off_the_event_loop_and_outside_a_write_transaction(client, iris_csv, settings, monkeypatch):
    started, finished = threading.Event(), threading.Event()
    real = service._summarise

    def slow(*args, **kwargs):
        started.set()
        time.sleep(3)
        try:
            return real(*args, **kwargs)
        finally:
            finished.set()

    monkeypatch.setattr(service, "_summarise", slow)
    result: dict[str, object] = {}
    uploader = threading.Thread(
        target=lambda: result.update(r=client.post("/datasets", files={"file": ("i.csv", iris_csv)},
                                                   data={"target": "species"})))
    uploader.start()
    assert started.wait(30)
    t0 = time.monotonic()
    assert client.get("/healthz").status_code == 200
    healthz_s = time.monotonic() - t0
    # Another connection takes SQLite's write lock (BEGIN IMMEDIATE) and writes while validation runs.
    with session_scope(get_engine(settings.database_url), write=True) as session:
        session.execute(sa.text("UPDATE jobs SET name = name"))
    assert not finished.is_set(), "the health check or the write waited for the upload's validation"
    assert healthz_s < 1.0
    uploader.join(30)
    assert result["r"].status_code == 201  # type: ignore[attr-defined]
