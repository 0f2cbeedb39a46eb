"""Fixtures for the service tests: ONE suite, parametrised by database backend (SQLite and Postgres).

Postgres runs when ``TUNER_TEST_POSTGRES_URL`` is set (a throwaway database is created for the session
and dropped at the end); with ``TUNER_TEST_REQUIRE_POSTGRES=1`` (CI) an unreachable Postgres fails.
"""

from __future__ import annotations

import copy
import io
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
import torch
from fastapi.testclient import TestClient
from sklearn.datasets import load_iris

from app.core.config import Settings
from app.db import get_engine
from app.main import create_app
from app.migrate import upgrade

_KEEP = {"alembic_version", "tuneserve_alembic_version", "version_info"}

TINY_SPEC: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"builtin": "iris"},
    "model": {"kind": "mlp", "hidden": [8]},
    "split": {"test_fraction": 0.2, "validation": {"kind": "holdout", "fraction": 0.25}, "seed": 0},
    "search_space": {"lr": {"low": 1e-3, "high": 3e-2, "log": True}, "batch_size": {"choices": [16, 32]}},
    "budget": {"n_trials": 3, "max_epochs": 3, "timeout_s": 120},
    "early_stopping": {"patience": 3},
    "pruner": {"kind": "none"},
    "sampler": {"kind": "random", "seed": 1},
}


def _postgres_url(tmp_name: str) -> str | None:
    base = os.environ.get("TUNER_TEST_POSTGRES_URL")
    require = os.environ.get("TUNER_TEST_REQUIRE_POSTGRES") == "1"
    if not base:
        if require:
            pytest.fail("TUNER_TEST_REQUIRE_POSTGRES=1 but TUNER_TEST_POSTGRES_URL is not set")
        pytest.skip("TUNER_TEST_POSTGRES_URL not set")
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{tmp_name}"'))
    except sa.exc.OperationalError as exc:
        if require:
            pytest.fail(f"Postgres at {base} unreachable: {exc}")
        pytest.skip(f"Postgres unreachable: {exc}")
    finally:
        admin.dispose()
    return sa.engine.make_url(base).set(database=tmp_name).render_as_string(hide_password=False)


def _drop_postgres(name: str) -> None:
    admin = sa.create_engine(os.environ["TUNER_TEST_POSTGRES_URL"], isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database of each backend for the session (``pytest -k sqlite`` picks one)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'tuner.db'}"
        upgrade(url)
        yield url
        get_engine(url).dispose()
        return
    name = f"tuneserve_test_{uuid.uuid4().hex[:10]}"
    url = _postgres_url(name)
    assert url is not None
    try:
        upgrade(url)
        yield url
    finally:
        get_engine(url).dispose()
        _drop_postgres(name)


def clean_database(url: str) -> None:
    """Delete every row (service and Optuna tables), keeping the schema versions."""
    engine = get_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine)
    with engine.begin() as conn:
        for table in reversed(meta.sorted_tables):
            if table.name not in _KEEP:
                conn.execute(table.delete())


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    clean_database(db_url)
    return Settings(
        database_url=db_url, artifacts_dir=tmp_path / "artifacts", uploads_dir=tmp_path / "uploads",
        heartbeat_interval=1, grace_period=2, poll_interval_s=0.1, device="cpu", torch_threads=1,
        embedded_workers=1, max_upload_mb=1,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    # X-Requested-With: what a well-behaved client sends (the cross-site POST guard, app/api/security.py)
    with TestClient(create_app(settings), headers={"X-Requested-With": "tuneserve-tests"}) as c:
        yield c


@pytest.fixture
def spec_dict() -> Callable[..., dict[str, Any]]:
    """``spec_dict(**over)``: the tiny spec with top-level sections merged (dicts; ``dataset`` is replaced)."""

    def make(**over: Any) -> dict[str, Any]:
        out = copy.deepcopy(TINY_SPEC)
        for k, v in over.items():
            merge = isinstance(v, dict) and isinstance(out.get(k), dict) and k != "dataset"
            out[k] = {**out[k], **v} if merge else v
        return out

    return make


@pytest.fixture
def iris_csv() -> bytes:
    """Iris as CSV with a string target column ``species``."""
    bunch = load_iris(as_frame=True)
    frame = bunch.frame.rename(columns={"target": "species"})
    frame["species"] = frame["species"].map(dict(enumerate(bunch.target_names)))
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return buf.getvalue().encode()


@pytest.fixture
def upload(client: TestClient) -> Callable[..., Any]:
    def do(content: bytes, filename: str = "data.csv", **form: Any) -> Any:
        return client.post("/datasets", files={"file": (filename, content)}, data=form)

    return do


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


__all__ = ["TINY_SPEC", "clean_database", "pd"]


# ------------------------------------------------------------------------------- `tuner serve` subprocess
import signal
import socket
import subprocess
import sys
import time

import httpx


class Server:
    """``tuner serve`` in its own process group on a free port, against the test database."""

    def __init__(self, settings: Settings, log: Path, workers: int = 1) -> None:
        self.settings, self.log_path, self.workers = settings, log, workers
        self.proc: subprocess.Popen[bytes] | None = None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> Server:
        s = self.settings
        env = {**os.environ, "TUNER_DATABASE_URL": s.database_url, "TUNER_ARTIFACTS_DIR": str(s.artifacts_dir),
               "TUNER_UPLOADS_DIR": str(s.uploads_dir), "TUNER_HEARTBEAT_INTERVAL": "1", "TUNER_GRACE_PERIOD": "2",
               "TUNER_POLL_INTERVAL_S": "0.2", "TUNER_TORCH_THREADS": "1", "TUNER_DEVICE": "cpu"}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(self.port), "--workers", str(self.workers)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server did not start:\n{self.log_path.read_text()[-3000:]}")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, headers={"X-Requested-With": "tuneserve-tests"})

    def kill(self) -> None:
        """SIGKILL the whole process group (API and workers), like a power cut."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def make(workers: int = 1) -> Server:
        srv = Server(settings, tmp_path / "server.log", workers)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.kill()


def _wait_for(
    client: httpx.Client, job_id: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if pred(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last state: {job}")
        time.sleep(0.25)


@pytest.fixture
def wait_for() -> Callable[..., dict[str, Any]]:
    """``wait_for(http, job_id, pred, timeout=120)``: poll ``GET /jobs/{id}`` until ``pred(job)``."""
    return _wait_for


# ------------------------------------------------------------------ rejected requests change nothing
def _state(settings: Settings) -> tuple[dict[str, int], list[str]]:
    """Row counts of the service's and Optuna's main tables, and every path under the upload directory."""
    with get_engine(settings.database_url).connect() as conn:
        counts = {t: conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one()
                  for t in ("jobs", "datasets", "studies", "trials")}
    up = settings.uploads_dir
    files = sorted(str(p.relative_to(up)) for p in up.rglob("*")) if up.exists() else []
    return counts, files


@pytest.fixture
def unchanged(settings: Settings) -> Callable[[], Any]:
    """``with unchanged(): <rejected request>`` asserts the database rows and the upload dir stay as they were."""
    from contextlib import contextmanager

    @contextmanager
    def check() -> Iterator[None]:
        before = _state(settings)
        yield
        assert _state(settings) == before

    return check


# ------------------------------------------------------------------ an ASGI call that streams its body
def asgi_post(app: Any, path: str, chunks: Any, headers: dict[str, str]) -> tuple[int, bytes, int]:
    """POST ``chunks`` (an iterator of bytes, one ASGI message each) straight to the ASGI app.

    Returns ``(status, body, bytes the app pulled)``: unlike TestClient, which reads a streamed request
    in full before calling the app, this shows how much of the body the server actually read.
    """
    import asyncio

    pulled = 0
    it = iter(chunks)
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        chunk = next(it, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode())
                         for k, v in {"host": "testserver", "x-requested-with": "test", **headers}.items()],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80), "state": {}}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return status, body, pulled
