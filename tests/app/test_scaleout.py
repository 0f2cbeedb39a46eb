"""Scale-out with REAL processes on Postgres: one API (``tuner serve --workers 0``) and separate
``tuner worker`` processes sharing one database. A worker SIGKILLed or SIGTERMed mid-trial, a job
cancelled while two workers run it, and the Postgres server restarted mid-job.

Postgres-only: skipped without ``TUNER_TEST_POSTGRES_URL`` (failed with ``TUNER_TEST_REQUIRE_POSTGRES=1``).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

FINISHED = ("succeeded", "failed", "cancelled")

# digits, a small MLP, enough epochs that one trial takes a second or two on one thread
SLOW_SPEC: dict[str, Any] = {
    "name": "scaleout",
    "dataset": {"builtin": "digits"},
    "model": {"kind": "mlp", "hidden": [32]},
    "split": {"test_fraction": 0.2, "validation": {"kind": "holdout", "fraction": 0.25}, "seed": 0},
    "search_space": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}, "batch_size": {"value": 16}},
    "budget": {"n_trials": 4, "max_epochs": 12, "timeout_s": 300},
    "early_stopping": {"patience": 12},
    "pruner": {"kind": "none"},
    "sampler": {"kind": "random", "seed": 1},
}


def spec(**over: Any) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in SLOW_SPEC.items()}
    for k, v in over.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ------------------------------------------------------------------------------------------ helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def throwaway_db() -> tuple[str, Callable[[], None]]:
    """A fresh database on the test Postgres server: (url, drop)."""
    base = os.environ.get("TUNER_TEST_POSTGRES_URL")
    require = os.environ.get("TUNER_TEST_REQUIRE_POSTGRES") == "1"
    if not base:
        if require:
            pytest.fail("TUNER_TEST_REQUIRE_POSTGRES=1 but TUNER_TEST_POSTGRES_URL is not set")
        pytest.skip("TUNER_TEST_POSTGRES_URL not set")
    name = f"tuneserve_scale_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        if require:
            pytest.fail(f"Postgres at {base} unreachable: {exc}")
        pytest.skip(f"Postgres unreachable: {exc}")
    finally:
        admin.dispose()

    def drop() -> None:
        eng = sa.create_engine(base, isolation_level="AUTOCOMMIT")
        try:
            with eng.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            eng.dispose()

    return sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False), drop


class Cluster:
    """Processes (API, workers) started in their own sessions; everything is SIGKILLed at cleanup."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.procs: list[subprocess.Popen[bytes]] = []
        self.url = f"http://127.0.0.1:{env['TUNER_PORT']}"

    def spawn(
        self, cmd: list[str], name: str, extra: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("ab")
        p = subprocess.Popen(
            cmd,
            env={**self.env, **(extra or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.tmp,
        )
        p.log_path = self.tmp / f"{name}.log"  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def run(self, cmd: list[str], timeout: float = 120) -> None:
        r = subprocess.run(cmd, env=self.env, check=False, capture_output=True, timeout=timeout, cwd=self.tmp)
        assert r.returncode == 0, (r.stdout + r.stderr).decode()[-3000:]

    def wait_ready(self, api: subprocess.Popen[bytes], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert api.poll() is None, self.logs()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"API not ready\n{self.logs()}")

    def wait_worker_started(self, worker: subprocess.Popen[bytes], timeout: float = 90) -> str:
        """Wait for the worker's 'started' log line; return its id (host:pid)."""
        deadline = time.monotonic() + timeout
        wid = f"{socket.gethostname()}:{worker.pid}"
        while time.monotonic() < deadline:
            assert worker.poll() is None, self.logs()
            if f"worker {wid} started" in worker.log_path.read_text(errors="replace"):  # type: ignore[attr-defined]
                return wid
            time.sleep(0.2)
        raise AssertionError(f"worker did not start\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in self.tmp.glob("*.log")
        )

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()


def base_env(db_url: str, tmp: Path) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "TUNER_DATABASE_URL": db_url,
        "TUNER_PORT": str(free_port()),
        "TUNER_HOST": "127.0.0.1",
        "TUNER_ARTIFACTS_DIR": str(tmp / "artifacts"),
        "TUNER_UPLOADS_DIR": str(tmp / "uploads"),
        "TUNER_HEARTBEAT_INTERVAL": "1",
        "TUNER_GRACE_PERIOD": "3",
        "TUNER_POLL_INTERVAL_S": "0.2",
        "TUNER_TORCH_THREADS": "1",
        "TUNER_DEVICE": "cpu",
    }


def start_cluster(cl: Cluster, n_workers: int) -> list[str]:
    """migrate, API (no embedded workers), ``n_workers`` standalone workers; returns the worker ids."""
    cl.run(["tuner", "migrate"])
    api = cl.spawn(["tuner", "serve", "--workers", "0", "--no-migrate"], "api")
    workers = [cl.spawn(["tuner", "worker"], f"worker{i}") for i in range(n_workers)]
    cl.wait_ready(api)
    return [cl.wait_worker_started(w) for w in workers]


def wait_job(
    http: httpx.Client,
    job_id: str,
    pred: Callable[[dict[str, Any]], bool],
    timeout: float = 120,
    logs: Callable[[], str] = lambda: "",
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            job = http.get(f"/jobs/{job_id}").json()
            if pred(job):
                return job
        except httpx.HTTPError:
            pass  # e.g. while the database restarts
        time.sleep(0.25)
    raise AssertionError(f"timed out; last state: {job}\n{logs()}")


def trials(http: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return http.get(f"/jobs/{job_id}/trials", params={"limit": 200}).json()["items"]


def wait_running_by(
    http: httpx.Client, job_id: str, wid: str, timeout: float = 90, logs: Callable[[], str] = lambda: ""
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t in trials(http, job_id):
            if t["state"] == "running" and t["worker"] == wid:
                # Running. Per-epoch values reach the storage only at the trial's end with this spec's
                # pruner (decided in process), so wait a moment to be inside the epochs.
                time.sleep(0.5)
                return t
        time.sleep(0.1)
    raise AssertionError(f"no running trial of {wid}\n{logs()}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[[int], tuple[Cluster, list[str]]]]:
    made: list[tuple[Cluster, Callable[[], None]]] = []

    def make(n_workers: int) -> tuple[Cluster, list[str]]:
        url, drop = throwaway_db()
        cl = Cluster(tmp_path, base_env(url, tmp_path))
        made.append((cl, drop))
        return cl, start_cluster(cl, n_workers)

    try:
        yield make
    finally:
        for cl, drop in made:
            cl.cleanup()
            drop()


def assert_succeeded_exactly(job: dict[str, Any], n: int) -> None:
    assert job["status"] == "succeeded", job
    p = job["progress"]
    assert p["counted"] == p["complete"] + p["pruned"] + p["config_failed"] == n, p
    assert p["running"] == 0, p
    assert job["test_metrics"] and job["test_metrics"]["n_test"] > 0, job


# -------------------------------------------------------------------------------------------- tests
def test_sigkill_worker_mid_trial_job_completes_exactly(cluster):
    cl, (w0, _w1) = cluster(2)
    with httpx.Client(base_url=cl.url, timeout=30) as http:
        # long enough trials that the kill lands inside one (epochs got cheaper)
        job_id = http.post("/jobs", json=spec(name="sigkill", budget={"max_epochs": 40},
                                             early_stopping={"patience": 40})).json()["id"]
        victim = cl.procs[1]  # worker0
        wait_running_by(http, job_id, w0, logs=cl.logs)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        job = wait_job(http, job_id, lambda j: j["status"] in FINISHED, timeout=150, logs=cl.logs)
        assert_succeeded_exactly(job, 4)
        ts = trials(http, job_id)
        killed = [t for t in ts if t["worker"] == w0 and t["state"] not in ("complete", "pruned")]
        assert killed and all(t["state"] == "fail" for t in killed)  # failed by the stale-heartbeat check
        assert sum(t["state"] in ("complete", "pruned") for t in ts) == 4


def test_sigterm_worker_mid_trial_exits_and_leaves_nothing_running(cluster):
    cl, (w0, _w1) = cluster(2)
    with httpx.Client(base_url=cl.url, timeout=30) as http:
        job_id = http.post("/jobs", json=spec(name="sigterm")).json()["id"]
        victim = cl.procs[1]
        wait_running_by(http, job_id, w0, logs=cl.logs)
        t0 = time.monotonic()
        victim.send_signal(signal.SIGTERM)
        rc = victim.wait(timeout=15)
        assert time.monotonic() - t0 < 10, "SIGTERMed worker took too long to exit"
        assert rc == 0, cl.logs()
        assert not [t for t in trials(http, job_id) if t["worker"] == w0 and t["state"] == "running"]
        # the remaining worker finishes the job with the exact budget
        job = wait_job(http, job_id, lambda j: j["status"] in FINISHED, timeout=150, logs=cl.logs)
        assert_succeeded_exactly(job, 4)


def test_cancel_with_two_workers(cluster):
    cl, _ = cluster(2)
    with httpx.Client(base_url=cl.url, timeout=30) as http:
        job_id = http.post("/jobs", json=spec(name="cancel", budget={"n_trials": 20})).json()["id"]
        wait_job(
            http,
            job_id,
            lambda j: j["progress"]["complete"] >= 1 and j["progress"]["running"] >= 1,
            logs=cl.logs,
        )
        r = http.post(f"/jobs/{job_id}/cancel", headers={"X-Requested-With": "tests"})
        assert r.status_code == 200, r.text
        job = wait_job(http, job_id, lambda j: j["status"] in FINISHED, timeout=60, logs=cl.logs)
        assert job["status"] == "cancelled", job
        ts = trials(http, job_id)
        assert not [t for t in ts if t["state"] == "running"], ts
        assert sum(t["state"] == "complete" for t in ts) >= 1  # finished trials are kept
        assert job["progress"]["running"] == 0 and job["progress"]["complete"] >= 1
        assert all(p.poll() is None for p in cl.procs[1:]), "workers must survive a cancel"


# ------------------------------------------------------------------------- Postgres restarted mid-job
def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--", *cmd]
    return ["su", "postgres", "-c", " ".join(cmd)]


def test_postgres_restart_mid_job(tmp_path):
    if not os.environ.get("TUNER_TEST_POSTGRES_URL") and os.environ.get("TUNER_TEST_REQUIRE_POSTGRES") != "1":
        pytest.skip("TUNER_TEST_POSTGRES_URL not set")
    pg_bin = _pg_bin()
    if pg_bin is None:
        pytest.skip("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")
    if os.geteuid() == 0:
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user for initdb")
    pgroot = Path(
        tempfile.mkdtemp(prefix="tuneserve-pg-")
    )  # outside tmp_path: the postgres user must reach it
    data = pgroot / "data"
    port = free_port()
    if os.geteuid() == 0:
        os.chown(pgroot, pw.pw_uid, pw.pw_gid)
    pg_ctl = [str(pg_bin / "pg_ctl"), "-D", str(data), "-w", "-t", "60"]
    started = False
    cl: Cluster | None = None
    try:
        subprocess.run(
            _as_postgres(
                [str(pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        opts = f"-p {port} -k {pgroot} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = [*pg_ctl, "-l", str(pgroot / "pg.log"), "-o", opts, "start"]
        subprocess.run(_as_postgres(start), check=True, capture_output=True, timeout=90)
        started = True
        admin = sa.create_engine(
            f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(sa.text('CREATE DATABASE "tuner"'))
        admin.dispose()

        cl = Cluster(tmp_path, base_env(f"postgresql+psycopg://postgres@127.0.0.1:{port}/tuner", tmp_path))
        start_cluster(cl, 2)  # two workers: the one whose heartbeat failed must not fail the job (issue 8)
        with httpx.Client(base_url=cl.url, timeout=30) as http:
            job_id = http.post("/jobs", json=spec(name="pgrestart", budget={"n_trials": 4})).json()["id"]
            wait_job(http, job_id, lambda j: j["progress"]["running"] >= 2, logs=cl.logs)
            subprocess.run(
                _as_postgres([*pg_ctl, "-m", "fast", "stop"]), check=True, capture_output=True, timeout=60
            )
            time.sleep(2)
            subprocess.run(_as_postgres(start), check=True, capture_output=True, timeout=90)
            job = wait_job(http, job_id, lambda j: j["status"] in FINISHED, timeout=150, logs=cl.logs)
            assert_succeeded_exactly(job, 4)
            jobs = http.get("/jobs").json()["items"]
            assert not [j for j in jobs if j["status"] == "running"], jobs
        assert all(p.poll() is None for p in cl.procs), "API/worker must survive a database restart"
    finally:
        if cl is not None:
            cl.cleanup()
        if started:
            subprocess.run(
                _as_postgres([*pg_ctl, "-m", "immediate", "stop"]),
                check=False,
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(pgroot, ignore_errors=True)
