"""Worker processes that die: ``tuner serve`` restarts its embedded worker, ``tuner worker --concurrency N``
exits non-zero, and a worker SIGKILLed while finalising is taken over after the grace period with the test
set scored once. Real subprocesses, short heartbeat and grace settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.db import get_engine, session_scope
from app.models import Job, WorkerRow
from app.services.jobs import create_job
from app.services.tenancy import ANONYMOUS
from tuner.spec import JobSpec

pytestmark = pytest.mark.slow


def _env(settings, **extra: str) -> dict[str, str]:
    return {**os.environ, "TUNER_DATABASE_URL": settings.database_url,
            "TUNER_ARTIFACTS_DIR": str(settings.artifacts_dir), "TUNER_UPLOADS_DIR": str(settings.uploads_dir),
            "TUNER_HEARTBEAT_INTERVAL": "1", "TUNER_GRACE_PERIOD": "2", "TUNER_POLL_INTERVAL_S": "0.2",
            "TUNER_TORCH_THREADS": "1", "TUNER_DEVICE": "cpu", "TUNER_WORKER_HEARTBEAT_S": "0.5",
            "TUNER_WORKER_RESTART_BACKOFF_S": "0.5", **extra}


def _worker_pids(settings) -> set[int]:
    with session_scope(get_engine(settings.database_url)) as s:
        return set(s.scalars(sa.select(WorkerRow.pid)))


def _wait(pred, timeout: float = 60, what: str = "", logs: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{logs.read_text()[-3000:] if logs else ''}")


def _job(settings, job_id) -> Job:
    with session_scope(get_engine(settings.database_url)) as s:
        return s.get(Job, job_id)


def test_serve_restarts_a_killed_embedded_worker(server, settings, spec_dict, wait_for, tmp_path):
    srv = server(workers=1).start()
    (first,) = _wait(lambda: _worker_pids(settings), what="the embedded worker's heartbeat", logs=srv.log_path)
    os.kill(first, signal.SIGKILL)
    _wait(lambda: _worker_pids(settings) - {first}, what="a restarted worker", logs=srv.log_path)
    with srv.client() as http:
        assert http.get("/readyz").json()["workers_alive"] >= 1
        job_id = http.post("/jobs", json=spec_dict(budget={"n_trials": 2})).json()["id"]
        job = wait_for(http, job_id, lambda j: j["status"] in ("succeeded", "failed", "cancelled"))
        assert job["status"] == "succeeded", job
    assert srv.stop() == 0
    assert "restarting in" in srv.log_path.read_text()


def test_worker_concurrency_exits_non_zero_when_a_child_dies(settings, tmp_path):
    log = tmp_path / "worker.log"
    with log.open("ab") as out:
        parent = subprocess.Popen([sys.executable, "-m", "app", "worker", "--concurrency", "2"],
                                  env=_env(settings), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        pids = _wait(lambda: len(p := _worker_pids(settings)) == 2 and p, what="two workers", logs=log)
        victim, other = sorted(pids)
        os.kill(victim, signal.SIGKILL)
        rc = parent.wait(timeout=30)
        assert rc != 0, log.read_text()[-3000:]
        _wait(lambda: not _alive(other), timeout=15, what="the other child to stop")
        assert "worker process died" in log.read_text()
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): look at its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


# A worker whose test-set scoring is recorded in a file, and which (with HANG=1) hangs after scoring,
# before it can mark the job succeeded: SIGKILL it there.
_HOOKED_WORKER = """
import os, sys, time
import app.worker as w
from tuner.data import PreparedData

real_take, real_finalize = PreparedData.take_test, w.finalize

def take_test(self):
    with open(os.environ["SCORES"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    return real_take(self)

def finalize(*a, **kw):
    out = real_finalize(*a, **kw)
    if os.environ.get("HANG") == "1":
        open(os.environ["SCORES"] + ".hanging", "w").close()
        time.sleep(600)
    return out

PreparedData.take_test = take_test
w.finalize = finalize
from app.cli import main
sys.exit(main(["worker"]))
"""


def test_worker_killed_while_finalising_is_taken_over_and_scores_once(settings, spec_dict, tmp_path):
    scores = tmp_path / "scores.txt"
    scores.touch()
    with session_scope(get_engine(settings.database_url), write=True) as s:
        job_id = create_job(s, JobSpec.model_validate(spec_dict(budget={"n_trials": 2})), principal=ANONYMOUS).id
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, hang in (("a", "1"), ("b", "0")):
            log = (tmp_path / f"worker-{name}.log").open("ab")
            procs.append(subprocess.Popen([sys.executable, "-c", _HOOKED_WORKER],
                                          env=_env(settings, SCORES=str(scores), HANG=hang),
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            if hang == "1":
                _wait(lambda: Path(f"{scores}.hanging").exists(), timeout=120, what="worker a to hang in finalize",
                      logs=tmp_path / "worker-a.log")
                assert _job(settings, job_id).status == "finalizing"
                os.killpg(procs[0].pid, signal.SIGKILL)
                procs[0].wait()
        job = _wait(lambda: (j := _job(settings, job_id)).status in ("succeeded", "failed") and j, timeout=120,
                    what="worker b to finalise", logs=tmp_path / "worker-b.log")
        assert job.status == "succeeded", (job.error, job.last_error)
        assert job.finalized_by.endswith(f":{procs[1].pid}")
        assert job.failures == 1 and "stopped responding" in job.last_error
        assert scores.read_text().split() == [str(procs[0].pid)]  # scored once, by the killed worker
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_poison_pill_does_not_kill_a_worker_process(settings, spec_dict, tmp_path):
    """A job whose start raises (timeout_s = 1e12 stored past the door) used to kill ``tuner worker``
    and, being the oldest queued job, every restarted one."""
    with session_scope(get_engine(settings.database_url), write=True) as s:
        poison = create_job(s, JobSpec.model_validate(spec_dict(name="poison")), principal=ANONYMOUS)
        poison.spec = {**poison.spec, "budget": {**poison.spec["budget"], "timeout_s": 1e12}}
        poison_id = poison.id
    with session_scope(get_engine(settings.database_url), write=True) as s:
        good_id = create_job(s, JobSpec.model_validate(spec_dict(name="good", budget={"n_trials": 2})), principal=ANONYMOUS).id
    log = tmp_path / "worker.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app", "worker"], env=_env(settings), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def done() -> bool:
            assert proc.poll() is None, f"the worker died:\n{log.read_text()[-3000:]}"
            return _job(settings, good_id).status in ("succeeded", "failed")

        _wait(done, timeout=120, what="the good job", logs=log)
        assert proc.poll() is None, log.read_text()[-3000:]
        bad, good = _job(settings, poison_id), _job(settings, good_id)
        assert bad.status == "failed" and "OverflowError" in bad.error
        assert good.status == "succeeded"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
