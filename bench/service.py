"""Start and stop the service for the service benchmarks: API (``tuner serve --workers 0``) + workers.

Everything listens on 127.0.0.1 only, in a throwaway directory (SQLite file, artifacts, uploads) or a
throwaway Postgres database (created and dropped here). Workers are separate ``tuner worker`` processes
(one torch thread each unless told otherwise) so a benchmark can choose how many run.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Self

from bench.common import ROOT

PG_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def skipped(part: str, args: Any, reason: str | None = None) -> bool:
    """Record ``part`` as skipped (and say why) when the service cannot run here: ``reason`` or
    :func:`available`'s. True when skipped."""
    reason = reason or available()
    if not reason:
        return False
    from bench.common import write_result

    print(f"skipped: {reason}")
    write_result(part, {"status": "skipped", "reason": reason}, quick=args.quick, no_write=args.no_write)
    return True


def available() -> str | None:
    """None when the service can run here, else the reason it cannot."""
    try:
        import httpx  # noqa: F401

        import app.cli
        import app.worker  # noqa: F401
    except ImportError as exc:
        return f"the service (app/) is not importable: {exc}"
    return None


def postgres_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(_plain(PG_ADMIN_URL), connect_timeout=3) as c:
            c.execute("select 1")
    except Exception as exc:  # noqa: BLE001
        return f"Postgres at {PG_ADMIN_URL} unreachable: {type(exc).__name__}: {exc}"
    return None


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """``with Service("sqlite") as svc: svc.start_workers(2); svc.client.post(...)``."""

    def __init__(self, backend: str = "sqlite", *, torch_threads: int = 1, env: dict[str, str] | None = None):
        self.backend = backend
        self.torch_threads = torch_threads
        self.extra_env = env or {}
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-svc-{backend}-"))
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.pg_db: str | None = None
        if backend == "sqlite":
            self.db_url = f"sqlite:///{self.dir / 'tuner.db'}"
        elif backend == "postgres":
            self.pg_db = f"bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
            self.db_url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + self.pg_db
        else:
            raise ValueError(backend)

    # ------------------------------------------------------------------------------ lifecycle
    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "TUNER_DATABASE_URL": self.db_url,
            "TUNER_ARTIFACTS_DIR": str(self.dir / "artifacts"),
            "TUNER_UPLOADS_DIR": str(self.dir / "uploads"),
            "TUNER_HOST": "127.0.0.1",
            "TUNER_PORT": str(self.port),
            "TUNER_DEVICE": "cpu",
            "TUNER_TORCH_THREADS": str(self.torch_threads),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    def __enter__(self) -> Self:
        import httpx

        # A SIGTERM to the benchmark must still stop the API/workers and drop the database (__exit__).
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

        if self.pg_db is not None:
            import psycopg

            with psycopg.connect(_plain(PG_ADMIN_URL), autocommit=True) as c:
                c.execute(f'CREATE DATABASE "{self.pg_db}"')
        subprocess.run([sys.executable, "-m", "app", "migrate"], cwd=ROOT, env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = open(self.dir / "api.log", "wb")
        self.api = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "0", "--no-migrate"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.base_url, timeout=60, headers={"X-Requested-With": "bench"})
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.api.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"API did not start: {(self.dir / 'api.log').read_text()[-2000:]}")
            time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_workers()
        if self.api is not None:
            self._terminate(self.api)
        if hasattr(self, "client"):
            self.client.close()
        if self.pg_db is not None:
            import psycopg

            try:
                with psycopg.connect(_plain(PG_ADMIN_URL), autocommit=True) as c:
                    c.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
            except Exception as e:  # noqa: BLE001
                print(f"warning: could not drop {self.pg_db}: {e}", file=sys.stderr)
        if os.environ.get("BENCH_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def _terminate(p: subprocess.Popen[bytes], timeout: float = 40) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def start_workers(self, n: int, *, wait: bool = True) -> None:
        """Start ``n`` more ``tuner worker`` processes; with ``wait``, return once each logged its start."""
        new = []
        for _ in range(n):
            path = self.dir / f"worker-{len(self.workers)}.log"
            f = open(path, "wb")  # noqa: SIM115
            p = subprocess.Popen(
                [sys.executable, "-m", "app", "worker", "--concurrency", "1", "--threads", str(self.torch_threads)],
                cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT,
            )
            self.workers.append((p, path))
            new.append((p, path))
        if wait:
            deadline = time.monotonic() + 90
            for p, path in new:
                while "started" not in path.read_text(errors="replace"):
                    if p.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"worker did not start: {path.read_text()[-2000:]}")
                    time.sleep(0.1)

    def stop_workers(self) -> None:
        for p, _ in self.workers:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p, _ in self.workers:
            self._terminate(p)
        self.workers = []

    def worker_logs(self) -> str:
        return "\n".join(path.read_text(errors="replace") for _, path in self.workers)

    # ------------------------------------------------------------------------------------ jobs
    def submit(self, spec: dict[str, Any]) -> str:
        r = self.client.post("/jobs", json=spec)
        if r.status_code != 201:
            raise RuntimeError(f"POST /jobs -> {r.status_code}: {r.text[:2000]}")
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.client.get(f"/jobs/{job_id}")
        r.raise_for_status()
        return dict(r.json())

    def wait(self, job_id: str, *, timeout_s: float = 600, poll_s: float = 0.5) -> dict[str, Any]:
        """Poll until the job is finished (succeeded, failed, cancelled)."""
        deadline = time.monotonic() + timeout_s
        while True:
            j = self.job(job_id)
            if j["status"] in ("succeeded", "failed", "cancelled"):
                return j
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {j['status']} after {timeout_s}s: {j.get('progress')}")
            time.sleep(poll_s)

    def trials(self, job_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            r = self.client.get(f"/jobs/{job_id}/trials", params={"limit": 500, "offset": len(out)})
            r.raise_for_status()
            page = r.json()
            out.extend(page["items"])
            if len(out) >= page["total"] or not page["items"]:
                return out
