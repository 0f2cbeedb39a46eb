"""Uploads that would blow up the API process are refused from their metadata; validation never blocks.

Each bomb of issue 20 is built small on disk in the test, sent through the API and must be refused with
a 4xx in under a second, the loaders never called and the process's peak RSS grown by less than 100 MB
(:func:`cost`: ``/proc/self/clear_refs`` resets the peak first). Before the fix each one was loaded.
"""

from __future__ import annotations

import gc
import io
import threading
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
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

MB = 10**6


@dataclass
class Cost:
    seconds: float = 0.0
    rss_growth: int = 0  # bytes the process's peak resident set grew by


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


@contextmanager
def cost() -> Iterator[Cost]:
    """Wall time and peak RSS growth of the block (the TestClient's server runs in this process)."""
    gc.collect()
    out = Cost()
    try:
        Path("/proc/self/clear_refs").write_bytes(b"5")  # reset VmHWM to the current RSS
        base = _vm("VmRSS")
    except OSError:  # cannot reset it: only growth past the earlier peak shows
        base = _vm("VmHWM")
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out.seconds = time.perf_counter() - t0
        out.rss_growth = _vm("VmHWM") - base


@pytest.fixture
def loaders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The data loaders, replaced by stand-ins that record a call and fail: the list must stay empty."""
    calls: list[str] = []

    def refuse(name: str) -> Callable[..., Any]:
        def loader(*_args: Any, **_kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} was called")
        return loader

    for module, name in ((pd, "read_csv"), (pd, "read_parquet"), (np, "load")):
        monkeypatch.setattr(module, name, refuse(f"{module.__name__}.{name}"))
    return calls


def warm(client: TestClient) -> None:
    """A first request (database connection, quota query): what is timed afterwards is the bomb alone."""
    assert client.get("/datasets", params={"limit": 1}).status_code == 200


def assert_refused_early(r: Any, c: Cost, status: int, calls: list[str]) -> None:
    assert r.status_code == status, r.text
    assert calls == [], f"loaded before it was refused: {calls}"
    assert c.seconds < 1.0, f"{c.seconds:.2f} s"
    assert c.rss_growth < 100 * MB, f"RSS +{c.rss_growth / MB:.0f} MB"


def messages(r: Any) -> list[str]:
    return [e["msg"] for e in r.json()["detail"]]


@pytest.fixture
def limited_client(settings) -> Iterator[Callable[..., TestClient]]:
    """``limited_client(**settings)``: a client of an app with these settings overridden (same database)."""
    opened: list[TestClient] = []

    def make(**over: Any) -> TestClient:
        c = TestClient(create_app(settings.model_copy(update=over)), headers={"X-Requested-With": "tuneserve-tests"})
        opened.append(c.__enter__())
        return c

    try:
        yield make
    finally:
        for c in opened:
            c.__exit__(None, None, None)
        limits.configure(Limits())


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


# ------------------------------------------------------------------------------ issue 20: the bombs
class _RepeatedDeflate:
    """A compressor for a stream of 1 MiB zero blocks: the deflate of one block ending in a full flush is the
    same bytes every time, so a 256 MiB member is written in a fraction of a second (zlib itself: 4 s)."""

    ZEROS = bytes(2**20)
    _c = zlib.compressobj(9, zlib.DEFLATED, -15)
    BLOCK = _c.compress(ZEROS) + _c.flush(zlib.Z_FULL_FLUSH)

    def compress(self, data: bytes) -> bytes:
        assert data == self.ZEROS
        return self.BLOCK

    def flush(self) -> bytes:
        return b"\x03\x00"  # an empty final block


def npz_raw_member_bomb(inflated: int = 256 * 2**20) -> bytes:
    """An NPZ whose member ``X`` (no .npy header: np.load returns its raw bytes) inflates to ``inflated``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        with mock.patch.object(zipfile, "_get_compressor", lambda *_a, **_k: _RepeatedDeflate()), \
                zf.open("X", "w") as f:
            for _ in range(inflated // 2**20):
                f.write(_RepeatedDeflate.ZEROS)
        with zf.open("y.npy", "w") as f:
            np.lib.format.write_array(f, np.zeros(3))
    return buf.getvalue()


def parquet_string_bomb(rows: int = 100_000, length: int = 2_000) -> bytes:
    """``rows`` rows of one ``length``-character string (and a target): tiny on disk, rows x length once read."""
    repeated = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)), pa.array(["x" * length]))
    buf = io.BytesIO()
    # written from a dictionary array without materialising it; no stored Arrow schema: read back as strings
    pq.write_table(pa.table({"s": repeated, "y": np.arange(rows) % 2}), buf, store_schema=False, compression="zstd")
    return buf.getvalue()


def wide_csv(columns: int = 80_000) -> bytes:
    return (",".join(f"c{i}" for i in range(columns)) + "\n" + ",".join("1" for _ in range(columns)) + "\n").encode()


def test_npz_members_without_the_npy_suffix_are_checked(small_limits, unchanged, loaders):
    for x, y in (("X.npy", "y.npy"), ("X", "y")):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, array in ((x, np.zeros((100, 50))), (y, np.zeros(100))):
                with zf.open(name, "w") as f:
                    np.lib.format.write_array(f, array)
        warm(small_limits)
        with unchanged(), cost() as c:
            r = small_limits.post("/datasets", files={"file": ("u.npz", buf.getvalue())})
        assert_refused_early(r, c, 422, loaders)
        assert messages(r) == ["file: the file holds 5,100 values (rows x columns), more than the limit of 2,000"]


def test_npz_member_inflating_past_the_limit_is_refused_from_the_zip_directory(small_limits, unchanged, settings,
                                                                              loaders):
    bomb = npz_raw_member_bomb()
    assert len(bomb) < settings.max_upload_bytes
    warm(small_limits)
    with unchanged(), cost() as c:
        r = small_limits.post("/datasets", files={"file": ("bomb.npz", bomb)})
    assert_refused_early(r, c, 422, loaders)
    assert messages(r) == [("file: the file would take 256 MiB in memory once decompressed, more than the limit of "
                           "32 MiB")]


def test_parquet_strings_are_sized_by_their_lengths(limited_client, unchanged, loaders):
    bomb = parquet_string_bomb()  # 100,000 rows x 2,000 characters: 200 MB of text in a ~25 KB file
    assert len(bomb) < 40_000
    client = limited_client(max_decompressed_mb=32)  # the cell limit (100,000,000) is far away
    warm(client)
    with unchanged(), cost() as c:
        r = client.post("/datasets", files={"file": ("s.parquet", bomb)}, data={"target": "y"})
    assert_refused_early(r, c, 422, loaders)
    [msg] = messages(r)
    assert msg.startswith("file: the file would take ") and msg.endswith(" MiB in memory once decompressed, more "
                                                                         "than the limit of 32 MiB")


def test_csv_wider_than_the_feature_limit_is_refused_from_its_header(client, unchanged, settings, loaders):
    bomb = wide_csv()
    assert len(bomb) < settings.max_upload_bytes
    warm(client)
    with unchanged(), cost() as c:
        r = client.post("/datasets", files={"file": ("w.csv", bomb)}, data={"target": "c0"})
    assert_refused_early(r, c, 422, loaders)
    assert messages(r) == ["file: the file has more than 10,001 columns; the limit is 10,000 features and the target"]


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_csv_rows_count_with_every_line_ending(small_limits, unchanged, loaders, end):
    csv = end.join([b"a,b,y", *[b"1,2,0", b"1,2,1"] * 350]) + end  # 700 rows x 3 columns
    warm(small_limits)
    with unchanged(), cost() as c:
        r = small_limits.post("/datasets", files={"file": ("c.csv", csv)}, data={"target": "y"})
    assert_refused_early(r, c, 422, loaders)
    assert messages(r) == ["file: the file holds 2,100 values (rows x columns), more than the limit of 2,000"]
