"""``/datasets``: upload validation, limits, list/read/delete, nothing half-written."""

import io
import json
import tracemalloc

import numpy as np
import pandas as pd
import sqlalchemy as sa

from app.db import get_engine
from app.models import Job
from tests.app.conftest import asgi_post


def _files(settings):
    d = settings.uploads_dir
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_upload_csv_summary(client, upload, iris_csv, settings):
    r = upload(iris_csv, "iris.csv", target="species")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["rows"] == 150 and ds["columns"] == 4 and ds["task"] == "classification"
    assert ds["class_counts"] == {"setosa": 50, "versicolor": 50, "virginica": 50}
    assert len(ds["sha256"]) == 64 and ds["format"] == "csv" and ds["filename"] == "iris.csv"
    assert _files(settings) == [f"{ds['id']}.csv"]
    assert client.get(f"/datasets/{ds['id']}").json() == ds
    assert r.headers["location"] == f"/datasets/{ds['id']}"
    assert client.get("/datasets").json()["items"] == [ds]


def test_upload_parquet_regression_and_npz(client, upload):
    frame = pd.DataFrame({"a": np.arange(30.0), "b": ["x", "y", "z"] * 10, "y": np.linspace(0, 1, 30)})
    buf = io.BytesIO()
    frame.to_parquet(buf)
    r = upload(buf.getvalue(), "d.parquet", target="y")
    assert r.status_code == 201, r.text
    assert r.json()["task"] == "regression" and r.json()["class_counts"] is None
    buf = io.BytesIO()
    np.savez(buf, X=np.random.default_rng(0).normal(size=(20, 3)), y=np.array([0, 1] * 10))
    r = upload(buf.getvalue(), "d.npz")
    assert r.status_code == 201, r.text
    assert r.json()["columns"] == 3 and r.json()["class_counts"] == {"0": 10, "1": 10}


def test_upload_errors_leave_nothing(client, upload, iris_csv, settings, unchanged):
    with unchanged():
        cases = _bad_uploads(upload, iris_csv)
    for r, field in cases:
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", field], r.json()
        assert r.json()["detail"][0]["msg"]
    assert _files(settings) == []
    assert client.get("/datasets").json()["total"] == 0


def _bad_uploads(upload, iris_csv):
    return [
        (upload(iris_csv, "iris.txt", target="species"), "file"),
        (upload(iris_csv, "iris.csv"), "target"),
        (upload(iris_csv, "iris.csv", target="nope"), "target"),
        (upload(b"a,b\n1,2\n3,\n", "x.csv", target="b"), "target"),  # missing target value
        (upload(b"\x00\x01garbage", "x.parquet", target="y"), "file"),
        (upload(b"a,y\n1,0\n2,0\n3,0\n", "x.csv", target="y", task="classification"), "target"),
        (upload(iris_csv.replace(b"5.1,", b",", 1), "x.csv", target="species"), "file"),  # NaN
        (upload(b"a,y\n1,x\n2,y\n", "x.csv", target="y", task="regression"), "task"),
    ]


def test_upload_nan_allowed_with_flag(upload, iris_csv):
    r = upload(iris_csv.replace(b"5.1,", b",", 1), "x.csv", target="species", allow_nan="true")
    assert r.status_code == 201 and r.json()["missing_values"] == 1


def _multipart(filename: str, file_bytes: int, boundary: str = "XyZb0undary", step: int = 64 * 1024):
    """A multipart upload of ``file_bytes`` of CSV, yielded in ``step``-sized messages (no Content-Length)."""
    yield (f'--{boundary}\r\nContent-Disposition: form-data; name="target"\r\n\r\ny\r\n'
           f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
           "Content-Type: text/csv\r\n\r\na,y\n").encode()
    for _ in range(file_bytes // step):
        yield b"1,0\n" * (step // 4)
    yield f"\r\n--{boundary}--\r\n".encode()


def test_upload_limit_is_enforced_while_streaming(client, settings, unchanged):
    """A body 32x the limit: 413 after reading about the limit, never the whole body, in little memory."""
    limit = settings.max_upload_bytes
    boundary = "XyZb0undary"
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    with unchanged():
        tracemalloc.start()
        try:
            status, reply, pulled = asgi_post(client.app, "/datasets", _multipart("big.csv", 32 * limit), headers)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert status == 413, reply
    assert json.loads(reply) == {"detail": "the request body is larger than the limit of 1 MiB"}
    assert pulled <= limit + 64 * 1024 + 2 * 64 * 1024  # the limit, the framing allowance, one message
    assert peak < 4 * limit, f"{peak / 2**20:.1f} MiB allocated while refusing the upload"
    # Declared too large: refused before reading anything.
    status, _, pulled = asgi_post(client.app, "/datasets", _multipart("big.csv", 32 * limit),
                                  {**headers, "content-length": str(33 * limit)})
    assert status == 413 and pulled == 0
    # A well-formed upload just under the limit still works.
    r = client.post("/datasets", files={"file": ("ok.csv", b"a,y\n" + b"1,0\n" * (limit // 4 - 100))},
                    data={"target": "y", "task": "classification"})
    assert r.status_code == 422 and "two classes" in r.text  # read and validated in full


def test_upload_missing_file_is_422(client):
    r = client.post("/datasets", data={"target": "y"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "file"]


def test_unknown_dataset_404(client):
    assert client.get("/datasets/nope").status_code == 404
    assert client.delete("/datasets/nope").status_code == 404


def test_delete_refused_while_a_job_uses_it(client, upload, iris_csv, spec_dict, settings):
    ds = upload(iris_csv, target="species").json()
    job = client.post("/jobs", json=spec_dict(dataset={"id": ds["id"]})).json()
    r = client.delete(f"/datasets/{ds['id']}")
    assert r.status_code == 409
    with get_engine(settings.database_url).begin() as conn:
        conn.execute(sa.update(Job).where(Job.id == job["id"]).values(status="succeeded"))
    assert client.delete(f"/datasets/{ds['id']}").status_code == 204
    assert client.get(f"/datasets/{ds['id']}").status_code == 404
    assert _files(settings) == []
    assert client.get(f"/jobs/{job['id']}").json()["dataset_id"] is None


def test_list_paginated(client, upload, iris_csv):
    ids = [upload(iris_csv, target="species").json()["id"] for _ in range(3)]
    page = client.get("/datasets", params={"limit": 2}).json()
    assert page["total"] == 3 and [d["id"] for d in page["items"]] == ids[::-1][:2]
    assert client.get("/datasets", params={"limit": 1000}).status_code == 422
