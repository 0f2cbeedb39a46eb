"""Bounds at the door over HTTP: 422 naming field and limit, 413 for large JSON bodies; nothing is stored."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import asgi_post
from tuner import limits
from tuner.limits import Limits


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"budget": {"timeout_s": 1e12}}, "budget.timeout_s: must be at most 604800"),
        ({"model": {"kind": "mlp", "hidden": [8] * 40}}, "model.hidden: must have at most 16 layers"),
        ({"sampler": {"kind": "tpe", "n_ei_candidates": 10**12}}, "sampler.n_ei_candidates: must be at most 10000"),
        ({"pruner": {"kind": "hyperband", "reduction_factor": 10**6}}, "pruner.reduction_factor: must be at most 100"),
        ({"search_space": {"hidden_units": {"value": 60000}, "n_layers": {"value": 16}}},
         "model: the largest model this search can build needs about "),
    ],
)
def test_spec_bounds_are_422(client, spec_dict, unchanged, over, message):
    with unchanged():
        r = client.post("/jobs", json=spec_dict(**over))
    assert r.status_code == 422, r.text
    msgs = [e["msg"] for e in r.json()["detail"]]
    assert any(m.startswith(message) for m in msgs), msgs


def test_json_infinity_and_nan_are_refused(client, spec_dict, unchanged):
    body = json.dumps(spec_dict()).replace('"timeout_s": 120', '"timeout_s": Infinity')
    body = body.replace('"high": 0.03', '"high": NaN')
    assert "Infinity" in body and "NaN" in body
    with unchanged():
        r = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    msgs = {e["msg"] for e in r.json()["detail"]}
    assert "budget.timeout_s: must be a finite number (no Infinity or NaN)" in msgs
    assert "search_space.lr.high: must be a finite number (no Infinity or NaN)" in msgs


def test_limits_come_from_settings(settings, spec_dict):
    settings = settings.model_copy(update={"max_timeout_s": 100.0, "max_width": 4})
    try:
        with TestClient(create_app(settings), headers={"X-Requested-With": "tuneserve-tests"}) as c:
            r = c.post("/jobs", json=spec_dict())
            assert r.status_code == 422
            assert {e["msg"] for e in r.json()["detail"]} == {
                "budget.timeout_s: must be at most 100", "model.hidden: each width must be at most 4"}
    finally:
        limits.configure(Limits())  # the limits are process-wide; later tests expect the defaults


def test_json_body_limit_is_413_while_reading(client, spec_dict, settings, unchanged):
    big = spec_dict(name="x" * 100, search_space={"batch_size": {"choices": [16] * 400_000}})
    body = json.dumps(big).encode()
    assert len(body) > 4 * settings.max_json_bytes
    step = 16 * 1024
    chunks = (body[i:i + step] for i in range(0, len(body), step))  # no Content-Length: counted as it arrives
    with unchanged():
        status, reply, pulled = asgi_post(client.app, "/jobs", chunks, {"content-type": "application/json"})
        assert status == 413
        assert json.loads(reply) == {"detail": "the request body is larger than the limit of 256 KiB"}
        assert pulled <= settings.max_json_bytes + step
        r = client.post("/jobs", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["detail"].startswith("the request body is larger")


def test_upload_memory_estimate_uses_the_recorded_column_count(client, upload, spec_dict, unchanged):
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(40, 300)), columns=[f"c{i}" for i in range(300)])
    frame["y"] = [0, 1] * 20
    ds = upload(frame.to_csv(index=False).encode(), "wide.csv", target="y").json()
    spec = spec_dict(dataset={"id": ds["id"]}, model={"kind": "mlp", "hidden": [60000] * 2},
                     search_space={"batch_size": {"value": 60000}})
    with unchanged():
        r = client.post("/jobs", json=spec)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "model"]
    assert "more than the limit of 4 GiB" in r.json()["detail"][0]["msg"]
    spec["model"]["hidden"] = [8]
    assert client.post("/jobs", json=spec).status_code == 201


def test_workers_validate_stored_specs_with_the_same_limits(settings, spec_dict):
    from app.worker import Worker
    from tuner.spec import JobSpec

    settings = settings.model_copy(update={"max_timeout_s": 2e6})
    try:
        with TestClient(create_app(settings), headers={"X-Requested-With": "tuneserve-tests"}) as c:
            job = c.post("/jobs", json=spec_dict(budget={"timeout_s": 1e6}))
            assert job.status_code == 201, job.text
        limits.configure(Limits())  # a fresh worker process starts with the engine's defaults
        stored = {**spec_dict(), "budget": {**spec_dict()["budget"], "timeout_s": 1e6}}
        Worker(settings)
        assert JobSpec.model_validate(stored).budget.timeout_s == 1e6
    finally:
        limits.configure(Limits())
