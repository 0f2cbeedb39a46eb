"""tuner/client.py against a mocked transport: paths, bearer key, long-poll, one error type."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tuner.client import Client, TuneserveError

JOB = {"id": "j1", "name": "tiny", "status": "running", "n_trials": 3, "progress": {"counted": 1},
       "best_trial": None, "started_at": None}


def _client(handler, **kw) -> Client:
    return Client("http://tuner.test/", transport=httpx.MockTransport(handler), **kw)


def test_paths_bodies_and_bearer_key(tmp_path: Path) -> None:
    seen: list[tuple[str, str, dict, bytes]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append((req.method, req.url.path, dict(req.url.params), req.content))
        assert req.headers["authorization"] == "Bearer k3y"
        path = req.url.path
        if path == "/jobs/j1/model":
            return httpx.Response(200, content=b"weights")
        if path == "/jobs/j1/predict":
            return httpx.Response(200, json={"predictions": [0], "rows": json.loads(req.content)["rows"]})
        if path == "/jobs" and req.method == "GET":
            return httpx.Response(200, json={"items": [JOB], "total": 1, "limit": 50, "offset": 0})
        if path == "/jobs/j1/trials":
            off = int(req.url.params["offset"])
            items = [{"number": n} for n in range(off, min(off + 2, 3))]
            return httpx.Response(200, json={"items": items, "total": 3, "limit": 2, "offset": off})
        return httpx.Response(200, json={**JOB, "path": path})

    spec = tmp_path / "s.yaml"
    spec.write_text("name: tiny\nbudget: {n_trials: 3}\n")
    data = tmp_path / "d.csv"
    data.write_text("a,y\n1,0\n")
    with _client(handler, api_key="k3y") as c:
        assert c.submit({"name": "x"})["path"] == "/jobs"
        assert json.loads(seen[-1][3]) == {"name": "x"}
        c.submit(spec)
        assert json.loads(seen[-1][3]) == {"name": "tiny", "budget": {"n_trials": 3}}
        assert c.get("j1")["path"] == "/jobs/j1"
        assert c.cancel("j1")["path"] == "/jobs/j1/cancel" and seen[-1][0] == "POST"
        assert c.result("j1")["path"] == "/jobs/j1/result"
        assert c.jobs(status="running") == [JOB] and seen[-1][2]["status"] == "running"
        assert [t["number"] for t in c.trials("j1", page_size=2)] == [0, 1, 2]
        out = c.download_model("j1", tmp_path / "best.pt")
        assert out.read_bytes() == b"weights"
        assert c.predict("j1", [[1.0, 2.0], {"a": 1}])["rows"] == [[1.0, 2.0], {"a": 1}]
        assert c.upload(data, target="y")["path"] == "/datasets"
        assert b'name="target"' in seen[-1][3] and b"a,y" in seen[-1][3]


def test_errors_are_one_type_with_field_messages() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/jobs":
            return httpx.Response(422, json={"detail": [
                {"loc": ["body", "budget", "n_trials"], "msg": "budget.n_trials: must be at least 1"},
                {"loc": ["body", "model", "bogus"], "msg": "model.bogus: unknown field"}]})
        if req.url.path == "/jobs/j1/model":
            return httpx.Response(409, json={"detail": "job j1 has no model yet"})
        return httpx.Response(404, json={"detail": "no job with id nope"})

    with _client(handler) as c:
        with pytest.raises(TuneserveError) as e:
            c.submit({})
        assert e.value.status_code == 422
        assert e.value.errors == ["budget.n_trials: must be at least 1", "model.bogus: unknown field"]
        with pytest.raises(TuneserveError) as e:
            c.get("nope")
        assert e.value.status_code == 404 and e.value.errors == ["no job with id nope"]
        with pytest.raises(TuneserveError) as e:
            c.download_model("j1", "never.pt")
        assert e.value.status_code == 409 and not Path("never.pt").exists()

    def down(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=req)

    with _client(down) as c, pytest.raises(TuneserveError) as e:
        c.get("j1")
    assert e.value.status_code is None


def test_wait_long_polls_with_the_etag_until_finished() -> None:
    answers = [
        (200, {**JOB, "status": "queued"}, '"v0"'), (304, None, '"v0"'),
        (200, {**JOB, "progress": {"counted": 2}}, '"v1"'), (200, {**JOB, "status": "succeeded"}, '"v2"'),
    ]
    requests: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        requests.append(req)
        code, body, etag = answers[len(requests) - 1]
        return httpx.Response(code, json=body, headers={"ETag": etag}) if body else httpx.Response(
            code, headers={"ETag": etag})

    with _client(handler) as c:
        assert c.wait("j1")["status"] == "succeeded"
    assert "wait" not in requests[0].url.params
    assert [r.headers.get("if-none-match") for r in requests[1:]] == ['"v0"', '"v0"', '"v1"']
    assert all(0 < float(r.url.params["wait"]) <= 60 for r in requests[1:])


def test_wait_timeout() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if "wait" in req.url.params:
            return httpx.Response(304, headers={"ETag": '"v0"'})
        return httpx.Response(200, json=JOB, headers={"ETag": '"v0"'})

    with _client(handler) as c, pytest.raises(TimeoutError):
        c.wait("j1", timeout=0.05)


def test_the_client_imports_no_server_code() -> None:
    import subprocess
    import sys

    code = ("import sys, tuner.client, tuner.client_cli, tuner.cli\n"
            "sys.exit(any(m.split('.')[0] == 'app' for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_watch_without_etags_polls_gently(monkeypatch: pytest.MonkeyPatch) -> None:
    """An older server ignores ?wait and sends no ETag: the client sleeps between polls, never spins."""
    sleeps: list[float] = []
    monkeypatch.setattr("tuner.client.time.sleep", sleeps.append)
    answers = iter([JOB, JOB, JOB, {**JOB, "status": "failed"}])

    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=next(answers))

    with _client(handler) as c:
        assert c.wait("j1")["status"] == "failed"
    assert sleeps == [1.0, 1.0, 1.0]


def test_cli_jobs_and_cancel_on_a_mocked_server(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """``tuner jobs`` / ``tuner cancel`` (the live test covers submit --watch and status)."""
    from tuner import client as client_mod
    from tuner.cli import main

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/jobs":
            item = {**JOB, "created_at": "2026-11-23T08:48:01Z"}
            return httpx.Response(200, json={"items": [item], "total": 1, "limit": 20, "offset": 0})
        return httpx.Response(409, json={"detail": "job j1 is succeeded and cannot be cancelled"})

    real = client_mod.Client.__init__
    monkeypatch.setattr(client_mod.Client, "__init__", lambda self, url, api_key=None: real(
        self, url, api_key, transport=httpx.MockTransport(handler)))
    assert main(["jobs", "--url", "http://tuner.test"]) == 0
    assert "j1" in capsys.readouterr().out
    assert main(["cancel", "j1", "--url", "http://tuner.test"]) == 1
    assert "cannot be cancelled" in capsys.readouterr().err


def test_the_client_and_the_cli_help_load_nothing_heavy() -> None:
    """`import tuner.client` and `tuner --help` load no torch, scikit-learn, Optuna, pandas or numpy (a fresh
    interpreter each: this process has them all loaded already)."""
    import subprocess
    import sys

    heavy = ("torch", "sklearn", "optuna", "pandas", "numpy")
    probe = "import sys\n{}\nprint(sorted(m for m in {!r} if m in sys.modules))"
    for code in ("import tuner.client", "from tuner import client", "import tuner.client_cli",
                 ("import app.cli, contextlib, io\nwith contextlib.suppress(SystemExit), contextlib.redirect_stdout("
                 "io.StringIO()): app.cli.main(['--help'])")):
        out = subprocess.run([sys.executable, "-c", probe.format(code, heavy)], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        assert out == "[]", (code, out)
    out = subprocess.run([sys.executable, "-c", "import tuner; print(tuner.JobSpec.__name__, tuner.run.__module__)"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["JobSpec", "tuner.runner"]  # the public names still load, on first use


def test_predict_splits_many_rows_under_the_json_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import tuner.client as client_mod

    sizes: list[int] = []

    def handler(req: httpx.Request) -> httpx.Response:
        rows = json.loads(req.content)["rows"]
        sizes.append(len(req.content))
        return httpx.Response(200, json={"job_id": "j1", "task": "regression", "classes": None, "n_rows": len(rows),
                                          "predictions": [{"value": r[0]} for r in rows]})

    monkeypatch.setattr(client_mod, "PREDICT_CHUNK_BYTES", 1000)
    c = Client("http://x", transport=httpx.MockTransport(handler))
    rows = [[float(i), 1.5, 2.5] for i in range(300)]
    out = c.predict("j1", rows)
    assert len(sizes) > 1 and max(sizes) < 1100  # several requests, each under the limit
    assert out["n_rows"] == 300 and [p["value"] for p in out["predictions"]] == [float(i) for i in range(300)]
    before = len(sizes)
    assert c.predict("j1", rows[:2])["n_rows"] == 2 and len(sizes) == before + 1  # few rows: one request
