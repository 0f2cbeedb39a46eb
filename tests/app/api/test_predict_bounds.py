"""``POST /jobs/{id}/predict`` bounds every body before it is parsed (issue 20).

The job is looked up (404/409) before the body is read; a JSON body gets the JSON limit, from
``Content-Length`` and while it streams in, and is parsed in a worker thread; a CSV/Parquet file gets the
metadata checks of an upload and the row limit before it is read and before the model is loaded. Each
bomb: a 4xx in under a second with the process's peak RSS grown by less than 100 MB.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.api.routes import results as results_routes
from app.services import predict as predict_service
from tests.app.api.test_results import _features, iris_job  # noqa: F401 - the fixture is used by name
from tests.app.api.test_upload_safety import (  # noqa: F401 - loaders and limited_client are fixtures
    assert_refused_early,
    cost,
    limited_client,
    loaders,
    messages,
    parquet_string_bomb,
    warm,
    wide_csv,
)
from tests.app.conftest import asgi_post

_BOUNDARY = "predictboundary"


def _multipart(filename: str, content: bytes) -> Iterator[bytes]:
    yield (f"--{_BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
           "Content-Type: application/octet-stream\r\n\r\n").encode()
    for i in range(0, len(content), 64 * 1024):
        yield content[i:i + 64 * 1024]
    yield f"\r\n--{_BOUNDARY}--\r\n".encode()


def _endless_json() -> Iterator[bytes]:
    yield b'{"rows": ['
    while True:
        yield b"[1.0, 2.0, 3.0, 4.0]," * 3000  # ~60 KiB a message


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each JSON parse of a predict body, recorded as whether it ran off the event loop."""
    seen: list[bool] = []
    real = results_routes._parse_rows

    def parse(body: bytes) -> list[Any]:
        try:
            asyncio.get_running_loop()
            seen.append(False)
        except RuntimeError:  # no loop in this thread: a worker thread
            seen.append(True)
        return real(body)

    monkeypatch.setattr(results_routes, "_parse_rows", parse)
    return seen


def test_json_body_gets_the_json_limit_before_any_parse(client, iris_job, settings, parses):  # noqa: F811
    url = f"/jobs/{iris_job['job']['id']}/predict"
    json_headers = {"content-type": "application/json"}
    # a Content-Length past the JSON limit: 413 without reading a byte
    status, reply, pulled = asgi_post(client.app, url, _endless_json(),
                                      {**json_headers, "content-length": str(settings.max_json_bytes + 1)})
    assert (status, pulled) == (413, 0)
    assert json.loads(reply) == {"detail": "the request body is larger than the limit of 256 KiB"}
    # no Content-Length (chunked): reading stops just past the limit
    with cost() as c:
        status, reply, pulled = asgi_post(client.app, url, _endless_json(), json_headers)
    assert status == 413 and settings.max_json_bytes < pulled <= settings.max_json_bytes + 64 * 1024
    assert c.seconds < 1.0 and c.rss_growth < 100 * 2**20
    # any media type but multipart is JSON here, and gets the JSON limit (not the upload limit)
    status, _, pulled = asgi_post(client.app, url, _endless_json(), {"content-type": "text/plain"})
    assert status == 413 and pulled <= settings.max_json_bytes + 64 * 1024
    assert parses == []
    # an unknown job: 404 before the body is read
    status, reply, pulled = asgi_post(client.app, "/jobs/nope/predict", _endless_json(), json_headers)
    assert (status, pulled) == (404, 0)
    assert json.loads(reply) == {"detail": "no job with id nope"}
    assert parses == []
    # under the limit: parsed in a worker thread, predicted
    rows = _features(iris_job["csv"]).values.tolist()
    r = client.post(url, json={"rows": rows})
    assert r.status_code == 200 and r.json()["n_rows"] == len(rows)
    assert parses == [True]


def test_two_content_types_do_not_give_json_the_upload_limit(client, iris_job, settings, parses):  # noqa: F811
    # the middleware and the route both go by the first Content-Type; and the route bounds a JSON read itself
    pulled = 0
    chunks = _endless_json()

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        chunk = next(chunks)
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    path = f"/jobs/{iris_job['job']['id']}/predict"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"x-requested-with", b"test"),
                         (b"content-type", b"application/json"),
                         (b"content-type", f"multipart/form-data; boundary={_BOUNDARY}".encode())],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80), "state": {}}
    asyncio.run(client.app(scope, receive, send))
    assert next(m["status"] for m in sent if m["type"] == "http.response.start") == 413
    assert settings.max_json_bytes < pulled <= settings.max_json_bytes + 64 * 1024
    assert parses == []


def test_files_are_judged_from_metadata_before_reading_and_before_the_model(
        client, iris_job, settings, loaders, monkeypatch):  # noqa: F811
    url = f"/jobs/{iris_job['job']['id']}/predict"
    loaded: list[str] = []
    monkeypatch.setattr(predict_service, "load_model", lambda *a, **k: loaded.append("model") or 1 / 0)
    # 16,000,000 rows of an integer column (~20 KB of zstd): 413 from the footer's row count
    buf = io.BytesIO()
    chunk = pa.table({"a": np.zeros(1_000_000, dtype=np.int64)})
    with pq.ParquetWriter(buf, chunk.schema, compression="zstd") as w:
        for _ in range(16):  # 128 MB once loaded
            w.write_table(chunk)
    assert len(buf.getvalue()) < 100_000
    with cost() as c:
        r = client.post(url, files={"file": ("rows.parquet", buf.getvalue())})
    assert_refused_early(r, c, 413, loaders)
    assert r.json() == {"detail": "file: at most 10000 rows per request (16000000 given)"}
    # a CSV far wider than the feature limit: refused from its header line
    with cost() as c:
        r = client.post(url, files={"file": ("wide.csv", wide_csv())})
    assert_refused_early(r, c, 422, loaders)
    assert r.json()["detail"] == [{"loc": ["body", "file"], "type": "value_error",
                                   "msg": "file: the file has more than 10,001 columns; the limit is 10,000 "
                                          "features and the target"}]
    # rows counted with any line ending: 6 rows ended by \r pass a limit of 5 no more than their \n twin
    settings.predict_max_rows = 5
    header = b"sepal length (cm),sepal width (cm),petal length (cm),petal width (cm)"
    for end in (b"\n", b"\r"):
        r = client.post(url, files={"file": ("rows.csv", end.join([header, *[b"5.1,3.5,1.4,0.2"] * 6]))})
        assert r.status_code == 413, r.text
        assert r.json() == {"detail": "file: at most 5 rows per request (6 lines given)"}
    assert loaders == [] and loaded == []


def test_parquet_string_bomb_to_predict_is_refused_before_reading(
        iris_job, limited_client, loaders):  # noqa: F811
    client = limited_client(max_decompressed_mb=32)
    warm(client)
    bomb = parquet_string_bomb(rows=5_000, length=40_000)  # 200 MB of text, under the 10,000-row limit
    assert len(bomb) < 100_000
    with cost() as c:
        r = client.post(f"/jobs/{iris_job['job']['id']}/predict", files={"file": ("s.parquet", bomb)})
    assert_refused_early(r, c, 422, loaders)
    [msg] = messages(r)
    assert msg.startswith("file: the file would take ") and msg.endswith("more than the limit of 32 MiB")


def test_unknown_job_is_404_before_the_file_is_read(client, monkeypatch):
    checked: list[str] = []
    monkeypatch.setattr(predict_service, "check_table", lambda *a, **k: checked.append("check"))
    headers = {"content-type": f"multipart/form-data; boundary={_BOUNDARY}"}
    status, reply, pulled = asgi_post(client.app, "/jobs/nope/predict", _multipart("rows.csv", b"a,b\n1,2\n" * 10_000),
                                      headers)
    assert (status, pulled) == (404, 0)
    assert json.loads(reply) == {"detail": "no job with id nope"}
    assert checked == []
