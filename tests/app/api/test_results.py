"""What a finished job leaves behind, over HTTP: the model file, predictions, the result bundle."""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import socket
import threading
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import sqlalchemy as sa
import torch

from app.db import get_engine, make_storage
from app.models import Job
from app.services import predict as predict_service
from app.worker import Worker
from tuner.artifacts import load_model
from tuner.cli import main as cli_main

BAD_ROW_MSGS = {
    "width": "row 1: has 3 values; the model takes 4 (sepal length (cm), sepal width (cm), petal length (cm), "
             "petal width (cm))",
}


def _finish(client, settings, job_id: str, steps: int = 30) -> dict[str, Any]:
    w = Worker(settings)
    for _ in range(steps):
        w.run_once()
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
    raise AssertionError(f"job did not finish: {job}")


@pytest.fixture
def iris_job(client, settings, spec_dict, upload, iris_csv) -> dict[str, Any]:
    """A succeeded job on the uploaded iris CSV (string labels, named columns)."""
    ds = upload(iris_csv, filename="iris.csv", target="species").json()
    job = client.post("/jobs", json=spec_dict(dataset={"id": ds["id"]})).json()
    assert _finish(client, settings, job["id"])["status"] == "succeeded"
    predict_service.clear_cache()
    return {"job": client.get(f"/jobs/{job['id']}").json(), "dataset": ds, "csv": iris_csv}


def _features(iris_csv: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(iris_csv)).drop(columns="species").iloc[::15].reset_index(drop=True)


def _set_status(settings, job_id, **values):
    with get_engine(settings.database_url).begin() as conn:
        conn.execute(sa.update(Job).where(Job.id == job_id).values(**values))


def test_unknown_job_is_404_and_unfinished_is_409(client, spec_dict, settings):
    for method, path in (("get", "/jobs/x/model"), ("post", "/jobs/x/predict"), ("get", "/jobs/x/result")):
        kwargs = {"json": {"rows": [[1, 2, 3, 4]]}} if method == "post" else {}
        r = getattr(client, method)(path, **kwargs)
        assert r.status_code == 404 and r.json() == {"detail": "no job with id x"}
    job = client.post("/jobs", json=spec_dict()).json()
    for status in ("queued", "running", "finalizing"):
        _set_status(settings, job["id"], status=status)
        assert client.get(f"/jobs/{job['id']}/model").json() == {
            "detail": f"job {job['id']} is {status}; its model is available once it has succeeded"}
        assert client.post(f"/jobs/{job['id']}/predict", json={"rows": [[1, 2, 3, 4]]}).status_code == 409
        r = client.get(f"/jobs/{job['id']}/result")
        assert r.status_code == 409 and "its result is ready once it has finished" in r.json()["detail"]
    _set_status(settings, job["id"], status="cancelled")  # finished without a model: a bundle, no model
    bundle = client.get(f"/jobs/{job['id']}/result").json()
    assert bundle["status"] == "cancelled" and bundle["best"] is None and bundle["test"] is None
    assert bundle["model_url"] is None and bundle["trials"]["total"] == 0
    assert client.get(f"/jobs/{job['id']}/model").status_code == 409


def test_downloaded_model_reloads_to_the_predictions_of_predict(client, iris_job, tmp_path: Path):
    job = iris_job["job"]
    r = client.get(f"/jobs/{job['id']}/model")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == 'attachment; filename="tiny-best-model.pt"'
    path = tmp_path / "model.pt"
    path.write_bytes(r.content)
    payload = torch.load(path, weights_only=True)  # plain types only
    assert payload["classes"] == ["setosa", "versicolor", "virginica"]
    X = _features(iris_job["csv"])
    model = load_model(path)
    labels, proba = model.predict(X).tolist(), model.predict_proba(X)

    def check(body: dict[str, Any]) -> None:
        assert body["task"] == "classification" and body["classes"] == model.classes
        assert body["n_rows"] == len(X)
        assert [p["label"] for p in body["predictions"]] == labels
        got = np.array([[p["probabilities"][c] for c in model.classes] for p in body["predictions"]])
        assert np.array_equal(got, proba.astype(np.float64))

    check(client.post(f"/jobs/{job['id']}/predict", json={"rows": X.values.tolist()}).json())
    check(client.post(f"/jobs/{job['id']}/predict", json={"rows": X.to_dict(orient="records")}).json())
    csv = X.to_csv(index=False).encode()
    check(client.post(f"/jobs/{job['id']}/predict", files={"file": ("rows.csv", csv)}).json())
    buf = io.BytesIO()
    X.to_parquet(buf)
    check(client.post(f"/jobs/{job['id']}/predict", files={"file": ("rows.parquet", buf.getvalue())}).json())
    # the training file itself (target column included) is accepted: the target is ignored
    r = client.post(f"/jobs/{job['id']}/predict", files={"file": ("iris.csv", iris_job["csv"])})
    assert r.status_code == 200 and r.json()["n_rows"] == 150


def test_predict_errors_name_the_row_and_column(client, iris_job, settings):
    url = f"/jobs/{iris_job['job']['id']}/predict"
    X = _features(iris_job["csv"])
    good, named = X.iloc[0].tolist(), X.iloc[0].to_dict()

    def detail(**kwargs: Any) -> list[dict[str, Any]]:
        r = client.post(url, **kwargs)
        assert r.status_code == 422, r.text
        return r.json()["detail"]

    assert detail(json={"rows": [good, good[:3]]}) == [
        {"loc": ["body", "rows", 1], "msg": BAD_ROW_MSGS["width"], "type": "value_error"}]
    assert [(d["loc"], d["msg"]) for d in detail(json={"rows": [{**named, "colour": "red"}]})] == [
        (["body", "rows", 0, "colour"], "row 0, column 'colour': unknown column")]
    missing = {k: v for k, v in named.items() if k != "petal width (cm)"}
    assert detail(json={"rows": [missing]})[0]["msg"] == "row 0, column 'petal width (cm)': missing column"
    assert detail(json={"rows": [good, [*good[:2], "abc", good[3]]]})[0] == {
        "loc": ["body", "rows", 1, "petal length (cm)"], "msg": "row 1, column 'petal length (cm)': not a number: 'abc'",
        "type": "value_error"}
    assert detail(json={"rows": [[None, *good[1:]]]})[0]["msg"] == (
        "row 0, column 'sepal length (cm)': missing value (the model was trained without imputation)")
    csv_nan = b"sepal length (cm),sepal width (cm),petal length (cm),petal width (cm)\n5.1,3.5,1.4,0.2\n,3,1,0.2\n"
    assert detail(files={"file": ("rows.csv", csv_nan)})[0]["loc"] == ["body", "file", 1, "sepal length (cm)"]
    assert detail(files={"file": ("rows.csv", b"a,b\n1,2\n")})[0]["msg"] == "column 'a': unknown column"
    # bad files and bodies
    assert detail(files={"file": ("rows.parquet", b"not parquet")})[0]["msg"].startswith(
        "file: cannot read the file as PARQUET")
    assert detail(files={"file": ("rows.csv", b"")})[0]["msg"].startswith("file: cannot read the file as CSV")
    assert detail(files={"file": ("rows.txt", b"1,2")})[0]["msg"] == "file: unsupported file type '.txt' (use .csv or .parquet)"
    assert detail(files={"other": ("rows.csv", b"1,2")})[0]["msg"] == "file: is required (a CSV or Parquet file)"
    assert detail(json={"rows": []})[0]["msg"] == "rows: give at least one row"
    assert detail(json={"rows": [1]})[0]["loc"][:3] == ["body", "rows", 0]
    assert detail(json={"data": [good]})[0]["msg"] == "rows: is required"
    assert detail(content=b"{nope", headers={"content-type": "application/json"})[0]["msg"] == "is not valid JSON"
    big = {"rows": [good] * 20_000}  # over the 1 MiB test upload limit: refused before parsing
    assert client.post(url, json=big).status_code == 413
    settings.predict_max_rows = 2
    r = client.post(url, json={"rows": [good] * 3})
    assert r.status_code == 413 and r.json() == {"detail": "rows: at most 2 rows per request (3 given)"}


def test_model_file_outside_the_artifacts_dir_is_never_served(client, iris_job, settings):
    job = iris_job["job"]
    storage = make_storage(settings.database_url)
    study = optuna.load_study(study_name=job["study_name"], storage=storage)
    original = study.user_attrs["model_path"]
    for forged in ("/etc/passwd", str(Path(settings.artifacts_dir) / ".." / "uploads" / "x.pt")):
        study.set_user_attr("model_path", forged)
        r = client.get(f"/jobs/{job['id']}/model")
        assert r.status_code == 409 and "not in this server's artifacts directory" in r.json()["detail"]
        assert client.post(f"/jobs/{job['id']}/predict", json={"rows": [[1, 2, 3, 4]]}).status_code == 409
    study.set_user_attr("model_path", original)
    Path(original).unlink()
    assert "missing" in client.get(f"/jobs/{job['id']}/model").json()["detail"]


def test_result_bundle_reproduces_with_tuner_run(client, iris_job, settings, tmp_path: Path, monkeypatch, capsys):
    job = iris_job["job"]
    bundle = client.get(f"/jobs/{job['id']}/result").json()
    assert bundle["status"] == "succeeded" and bundle["model_url"] == f"/jobs/{job['id']}/model"
    best = bundle["best"]
    assert best["params"] == job["best_trial"]["params"] and best["value"] == job["best_trial"]["value"]
    assert best["objective"] == "val_loss" and best["folds"] is None and best["best_epoch"] >= 1
    test = bundle["test"]
    assert test["metrics"] == job["test_metrics"] and test["n_test"] == 30
    cm = test["confusion_matrix"]
    assert cm["labels"] == ["setosa", "versicolor", "virginica"] and np.sum(cm["matrix"]) == 30
    assert np.trace(cm["matrix"]) / 30 == pytest.approx(test["metrics"]["accuracy"])
    ds = bundle["dataset"]
    assert ds["sha256"] == hashlib.sha256(iris_job["csv"]).hexdigest() == iris_job["dataset"]["sha256"]
    assert (ds["rows"], ds["columns"], ds["class_counts"]) == (150, 4, {"setosa": 50, "versicolor": 50, "virginica": 50})
    assert bundle["split"]["seed"] == 0 and bundle["split"]["stratify"] is True
    assert bundle["split"]["seeds"] == {"split": 0, "sampler": 1, "best_trial": best["trial"],
                                        "final_model": best["trial"]}
    assert bundle["versions_recorded"] is True
    assert {"python", "torch", "optuna", "scikit-learn", "numpy", "tuneserve"} <= set(bundle["versions"])
    assert bundle["versions"]["torch"] == version("torch") and bundle["versions"]["optuna"] == optuna.__version__
    assert bundle["timing"]["wall_s"] > 0 and bundle["timing"]["trials_s"] > 0
    assert bundle["trials"] == {"total": 3, "by_failure_cause": {}, "by_state": {
        "complete": 3, "pruned": 0, "failed": 0, "config_failed": 0, "running": 0, "waiting": 0, "counted": 3}}
    # Another machine: the bundle's command, in a directory holding its spec and the uploaded file.
    rep = bundle["reproduce"]
    assert rep["exact"] is True, rep["why"]
    threads = torch.get_num_threads()  # what the worker's trials ran with (the test process's count)
    assert rep["command"] == (f"tuner run spec.json --jobs 1 --threads {threads} --device cpu "
                              f"--storage sqlite:///reproduce.db --study-name {job['study_name']}")
    assert rep["argv"] == shlex.split(rep["command"])
    assert rep["data_file"] == {"name": "iris.csv", "sha256": ds["sha256"], "dataset_id": iris_job["dataset"]["id"]}
    assert rep["spec"]["dataset"] == {**{k: v for k, v in bundle["spec"]["dataset"].items() if k != "id"},
                                      "path": "iris.csv"}
    monkeypatch.chdir(tmp_path)
    Path(rep["data_file"]["name"]).write_bytes(iris_job["csv"])
    assert hashlib.sha256(Path("iris.csv").read_bytes()).hexdigest() == rep["data_file"]["sha256"]
    Path("spec.json").write_text(json.dumps(rep["spec"]))
    capsys.readouterr()
    torch.set_num_threads(1)  # the command sets the thread count itself
    try:
        assert cli_main([*rep["argv"][1:], "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    again = json.loads(capsys.readouterr().out)
    assert again["best_trial"]["number"] == best["trial"]
    assert again["best_trial"]["params"] == best["params"] and again["best_trial"]["value"] == best["value"]
    assert again["test_metrics"] == test["metrics"]
    assert again["counts"] == bundle["trials"]["by_state"]
    assert again["reproduce"]["exact"] is True  # and tuner run's own result says how to repeat it
    assert again["reproduce"]["command"] == rep["command"]


def test_a_job_run_by_two_workers_at_once_is_not_exactly_reproducible(client, settings, spec_dict):
    """Two workers run the job's trials at the same time: the bundle still gives the command, with exact false."""
    job = client.post("/jobs", json=spec_dict(budget={"n_trials": 4, "max_epochs": 2})).json()
    workers = [Worker(settings, worker_id=f"{socket.gethostname()}:{1_000_000 + i}") for i in range(2)]
    workers[0]._start(job["id"])
    row = client.get(f"/jobs/{job['id']}").json()
    barrier = threading.Barrier(2)
    for w in workers:  # each worker's first trial waits for the other's: both run trials, at the same time
        ctx = w._context(job["id"], row["spec"], row["study_name"])
        inner, first = ctx.objective, [True]

        def together(trial, inner=inner, first=first):
            if first[0]:
                first[0] = False
                barrier.wait(timeout=60)
            return inner(trial)

        ctx.objective = together
    errors: list[BaseException] = []

    def loop(w: Worker) -> None:
        try:
            for _ in range(40):
                w.run_once()
                with get_engine(settings.database_url).connect() as conn:
                    status = conn.execute(sa.select(Job.status).where(Job.id == job["id"])).scalar_one()
                if status in ("succeeded", "failed", "cancelled"):
                    return
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and client.get(f"/jobs/{job['id']}").json()["status"] == "succeeded"
    rep = client.get(f"/jobs/{job['id']}/result").json()["reproduce"]
    assert rep["exact"] is False
    assert "run by 2 workers/processes" in rep["why"] and "trials ran at the same time" in rep["why"]
    assert rep["command"].startswith("tuner run spec.json --jobs 1 --threads ")  # still the closest command


def test_kfold_bundle_has_each_fold_and_mean_std(client, settings, spec_dict):
    job = client.post("/jobs", json=spec_dict(
        split={"validation": {"kind": "kfold", "k": 2}}, budget={"n_trials": 2, "max_epochs": 2})).json()
    assert _finish(client, settings, job["id"])["status"] == "succeeded"
    bundle = client.get(f"/jobs/{job['id']}/result").json()
    folds = bundle["best"]["folds"]
    assert len(folds["values"]) == 2 and len(folds["best_epochs"]) == 2
    assert folds["mean"] == pytest.approx(bundle["best"]["value"])
    assert folds["std"] == pytest.approx(float(np.std(folds["values"])))
    assert len(bundle["split"]["seeds"]["best_trial_folds"]) == 2
    assert bundle["split"]["validation_method"].startswith("StratifiedKFold(n_splits=2, shuffle=True")
    assert bundle["dataset"]["source"] == "builtin" and bundle["dataset"]["rows"] == 150
    assert len(bundle["dataset"]["sha256"]) == 64


def test_unknown_model_plugin_is_refused_at_submit(client, spec_dict):
    r = client.post("/jobs", json=spec_dict(model={"kind": "plugin", "name": "nope", "options": {"width": 4}}))
    assert r.status_code == 422
    [err] = r.json()["detail"]
    assert err["loc"] == ["body", "model", "name"]
    assert err["msg"].startswith("model.name: no installed model plugin 'nope' (installed: ")
    r = client.post("/jobs", json=spec_dict(model={"kind": "plugin", "name": "tuner.models:mlp_factory"}))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "model", "name"]


def test_regression_predictions_are_in_target_units(client, settings, spec_dict):
    job = client.post("/jobs", json=spec_dict(dataset={"builtin": "diabetes"}, objective="mae")).json()
    assert _finish(client, settings, job["id"])["status"] == "succeeded"
    from sklearn.datasets import load_diabetes

    X = load_diabetes().data[:5]
    body = client.post(f"/jobs/{job['id']}/predict", json={"rows": X.tolist()}).json()
    assert body["task"] == "regression" and body["classes"] is None
    path = client.get(f"/jobs/{job['id']}").json()["model_path"]
    assert [p["value"] for p in body["predictions"]] == load_model(path).predict(X).tolist()
    assert set(body["predictions"][0]) == {"value"}
    bundle = client.get(f"/jobs/{job['id']}/result").json()
    assert bundle["test"]["confusion_matrix"] is None and bundle["dataset"]["class_counts"] is None
    assert bundle["split"]["stratify"] is False


def test_failure_causes_are_grouped():
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from app.services.results import failure_cause

    def failed(n: int, **attrs: Any) -> Any:
        t = create_trial(state=TrialState.FAIL, params={"lr": 0.1}, distributions={"lr": FloatDistribution(0, 1)},
                         user_attrs=attrs.pop("user", {}), system_attrs=attrs)
        t.number = n
        return t

    causes = [
        failure_cause(failed(0, user={"fail_reason": "training loss is nan at epoch 3"}, failure="config"), set()),
        failure_cause(failed(1, user={"fail_reason": "training loss is nan at epoch 7"}, failure="config"), set()),
        failure_cause(failed(2, user={"fail_reason": "out of device memory: CUDA out of memory. Tried"}), set()),
        failure_cause(failed(3, interrupted=True), set()),
        failure_cause(failed(4), {4}),
        failure_cause(failed(5), set()),
    ]
    assert causes == ["training loss is nan", "training loss is nan", "out of device memory",
                      "interrupted (cancel or shutdown)", "worker lost (no heartbeat; retried)", "error"]


def test_loaded_model_is_cached_until_its_file_changes(client, iris_job):
    import os

    job = iris_job["job"]
    url, rows = f"/jobs/{job['id']}/predict", {"rows": _features(iris_job["csv"]).values.tolist()[:2]}
    cached = predict_service._cached_model
    assert client.post(url, json=rows).status_code == 200
    before = cached.cache_info()
    assert client.post(url, json=rows).status_code == 200
    assert cached.cache_info().hits == before.hits + 1 and cached.cache_info().misses == before.misses
    st = os.stat(job["model_path"])
    os.utime(job["model_path"], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a re-written model file
    assert client.post(url, json=rows).status_code == 200
    assert cached.cache_info().misses == before.misses + 1


def test_plugin_model_through_the_service(client, settings, spec_dict, resmlp_plugin, tmp_path: Path):
    job = client.post("/jobs", json=spec_dict(
        model={"kind": "plugin", "name": resmlp_plugin, "options": {"width": 8}},
        search_space={"n_blocks": {"choices": [1, 2]}}, budget={"n_trials": 2, "max_epochs": 2})).json()
    assert _finish(client, settings, job["id"])["status"] == "succeeded"
    X = load_iris_rows()
    body = client.post(f"/jobs/{job['id']}/predict", json={"rows": X}).json()
    path = tmp_path / "m.pt"
    path.write_bytes(client.get(f"/jobs/{job['id']}/model").content)
    model = load_model(path)
    assert type(model.model).__name__ == "ResMLP"
    assert [p["label"] for p in body["predictions"]] == model.predict(X).tolist()
    assert client.get(f"/jobs/{job['id']}/result").json()["best"]["params"]["n_blocks"] in (1, 2)


def load_iris_rows() -> list[list[float]]:
    from sklearn.datasets import load_iris

    return load_iris().data[::25].tolist()
