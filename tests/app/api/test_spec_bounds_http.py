"""Spec bounds at submit over HTTP (issue 20): the numbers that used to fail in the worker are a 422 naming
the field, on both backends, and nothing is queued."""

from __future__ import annotations


def test_folds_against_an_uploads_rows_and_seed_bounds_are_422(client, spec_dict, iris_csv):
    r = client.post("/datasets", files={"file": ("iris.csv", iris_csv)}, data={"target": "species"})
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    r = client.post("/jobs", json=spec_dict(dataset={"id": ds}, split={"validation": {"kind": "kfold", "k": 50}}))
    assert r.status_code == 422, r.text
    msgs = [e["msg"] for e in r.json()["detail"]]
    assert "split.validation.k: 50 folds, but the largest class has only 40 non-test rows; use at most 40" in msgs
    for split, field in (({"seed": 2**64}, "split.seed"), ({"test_fraction": 1e-300}, "split.test_fraction")):
        r = client.post("/jobs", json=spec_dict(dataset={"id": ds}, split=split))
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == field.split(".")[-1], r.text
    assert client.post("/jobs", json=spec_dict(dataset={"id": ds}, split={"validation": {"kind": "kfold", "k": 5}})
                       ).status_code == 201
    assert client.get("/jobs").json()["total"] == 1  # only the valid one was queued
