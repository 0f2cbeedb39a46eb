"""Hostile-use review of the prediction path: what a careless or malicious user sends to ``/predict``."""

from __future__ import annotations

import io
import math

import pandas as pd

from tests.app.api.test_results import _features, iris_job  # noqa: F401 - the fixture is used by name


def test_predict_csv_upload_gets_the_upload_limit_not_the_json_limit(client, iris_job, settings):  # noqa: F811
    url = f"/jobs/{iris_job['job']['id']}/predict"
    X = _features(iris_job["csv"])
    big = pd.concat([X] * 900, ignore_index=True)  # 9,000 rows of 12-decimal numbers: ~500 KiB, over the 256 KiB JSON limit
    content = big.to_csv(index=False, float_format="%.12f").encode()
    assert settings.max_json_bytes < len(content) < settings.max_upload_bytes
    r = client.post(url, files={"file": ("rows.csv", content)})
    assert r.status_code == 200, r.text
    assert r.json()["n_rows"] == len(big)
    # JSON rows get the JSON limit (parsed in full), a file the upload limit
    r = client.post(url, content=b"[" + b" " * (settings.max_json_bytes + 10) + b"]",
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and isinstance(r.json()["detail"], str)
    # other routes keep the JSON limit
    r = client.post("/jobs", content=b"[" + b" " * (settings.max_json_bytes + 10) + b"]",
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and isinstance(r.json()["detail"], str)
    # and a file past the upload limit is refused with JSON
    r = client.post(url, files={"file": ("rows.csv", io.BytesIO(b"0" * (settings.max_upload_bytes + 100_000)))})
    assert r.status_code == 413 and isinstance(r.json()["detail"], str)


def test_predict_huge_numbers_are_422_not_null_probabilities_or_500(client, iris_job):  # noqa: F811
    url = f"/jobs/{iris_job['job']['id']}/predict"
    good = _features(iris_job["csv"]).iloc[0].tolist()
    # 1e308 is finite as a float64 but overflows the model's float32: it used to answer 200 with null
    # probabilities and an arbitrary label
    r = client.post(url, json={"rows": [good, [1e308, *good[1:]]]})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "rows", 1]
    assert "not finite" in r.json()["detail"][0]["msg"]
    csv = b"sepal length (cm),sepal width (cm),petal length (cm),petal width (cm)\n1e308,3.5,1.4,0.2\n"
    r = client.post(url, files={"file": ("rows.csv", csv)})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "file", 0]
    # an integer too large for any float (JSON allows it) used to be a 500 (OverflowError)
    raw = b'{"rows": [[1' + b"0" * 400 + b', 3.5, 1.4, 0.2]]}'
    r = client.post(url, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["msg"] == "row 0, column 'sepal length (cm)': infinite value"


def test_predict_deeply_nested_json_is_422_not_500(client, iris_job):  # noqa: F811
    url = f"/jobs/{iris_job['job']['id']}/predict"
    deep = b'{"rows": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"  # 100 KB, under every body limit
    r = client.post(url, content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["msg"] == "is not valid JSON (nested too deeply)"


def test_kfold_regression_job_predicts_in_target_units(client, settings, spec_dict):
    from sklearn.datasets import load_diabetes

    from tests.app.api.test_results import _finish

    job = client.post("/jobs", json=spec_dict(
        dataset={"builtin": "diabetes"}, split={"validation": {"kind": "kfold", "k": 2}},
        budget={"n_trials": 2, "max_epochs": 2})).json()
    assert _finish(client, settings, job["id"])["status"] == "succeeded"
    bundle = client.get(f"/jobs/{job['id']}/result").json()
    assert len(bundle["best"]["folds"]["values"]) == 2
    assert bundle["best"]["value"] > 100  # MSE in the target's units (diabetes progression, std ~77)
    X = load_diabetes().data[:3]
    r = client.post(f"/jobs/{job['id']}/predict", json={"rows": X.tolist()})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 3 and all(math.isfinite(p["value"]) for p in r.json()["predictions"])


def test_predict_list_or_object_in_a_categorical_column_is_422(client, settings, spec_dict, upload):
    from tests.app.api.test_results import _finish

    rows = "x,colour,y\n" + "".join(f"{i / 10},{['red', 'blue'][i % 2]},{i % 2}\n" for i in range(40))
    ds = upload(rows.encode(), filename="c.csv", target="y").json()
    job = client.post("/jobs", json=spec_dict(dataset={"id": ds["id"]}, budget={"n_trials": 1})).json()
    assert _finish(client, settings, job["id"])["status"] == "succeeded"
    url = f"/jobs/{job['id']}/predict"
    assert client.post(url, json={"rows": [[0.5, "red"], [0.5, "never seen"]]}).status_code == 200
    r = client.post(url, json={"rows": [[0.5, "red"], [0.5, ["red"]], {"x": 1, "colour": {"a": 1}}]})
    assert r.status_code == 422, r.text
    assert [(d["loc"], d["msg"]) for d in r.json()["detail"]] == [
        (["body", "rows", 1, "colour"], "row 1, column 'colour': must be a single value (text or number), not ['red']"),
        (["body", "rows", 2, "colour"], "row 2, column 'colour': must be a single value (text or number), not {'a': 1}"),
    ]
