"""docker-compose.yml: valid, and its ``migrate``/``api``/``worker`` commands and environment really work.

There is no Docker engine in CI, so the services' ``command`` and ``environment`` are taken from the YAML
exactly as written and run natively, overriding only what must differ outside the containers (database URL,
port, host, artifacts/uploads dirs). One API and TWO workers share one throwaway Postgres database.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"

# the process helpers live in test_scaleout.py (loaded by path: the suite uses --import-mode=importlib)
_spec = importlib.util.spec_from_file_location(
    "_tuneserve_scaleout_helpers", Path(__file__).with_name("test_scaleout.py")
)
assert _spec is not None and _spec.loader is not None
_h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_h)


def test_compose_config_valid():
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not on PATH")
    r = subprocess.run(
        [exe, "-f", str(COMPOSE), "config", "-q"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_api_is_local_and_gets_an_admin_key_first():
    doc = yaml.safe_load(COMPOSE.read_text())
    api, keys = doc["services"]["api"], doc["services"]["keys"]
    assert all(str(p).startswith("127.0.0.1:") for p in api["ports"]), api["ports"]
    assert keys["command"] == ["tuner", "keys", "bootstrap"]
    assert keys["environment"]["TUNER_ADMIN_KEY"] == "${TUNER_ADMIN_KEY:-}"  # from .env, if set there
    assert api["depends_on"]["keys"]["condition"] == "service_completed_successfully"


def _service(doc: dict[str, Any], name: str) -> tuple[list[str], dict[str, str]]:
    svc = doc["services"][name]
    cmd = svc["command"]
    assert isinstance(cmd, list) and cmd, f"{name}: command must be an exec-form list"
    env = svc["environment"]
    assert isinstance(env, dict), f"{name}: environment must be a mapping"
    return [str(c) for c in cmd], {k: str(v) for k, v in env.items()}


@pytest.mark.slow
@pytest.mark.postgres
def test_compose_services_run_natively_two_workers(tmp_path):
    doc = yaml.safe_load(COMPOSE.read_text())
    (migrate_cmd, migrate_env), (keys_cmd, keys_env), (api_cmd, api_env), (worker_cmd, worker_env) = (
        _service(doc, n) for n in ("migrate", "keys", "api", "worker")
    )
    assert migrate_cmd[0] == keys_cmd[0] == api_cmd[0] == worker_cmd[0] == "tuner"

    db_url, drop = _h.throwaway_db()
    venv_bin = str(Path(sys.executable).parent)
    outside = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_")}
    outside["PATH"] = f"{venv_bin}{os.pathsep}{outside.get('PATH', '')}"
    port = _h.free_port()
    overrides = {
        "TUNER_DATABASE_URL": db_url,
        "TUNER_PORT": str(port),
        "TUNER_HOST": "127.0.0.1",
        "TUNER_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "TUNER_UPLOADS_DIR": str(tmp_path / "uploads"),
    }
    cl = _h.Cluster(tmp_path, {**outside, **overrides})
    try:
        r = subprocess.run(
            migrate_cmd,
            env={**outside, **migrate_env, **overrides},
            check=False,
            capture_output=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert r.returncode == 0, (r.stdout + r.stderr).decode()[-3000:]
        # first start: the keys service prints a new admin key once (no TUNER_ADMIN_KEY in .env)
        r = subprocess.run(keys_cmd, env={**outside, **keys_env, **overrides, "TUNER_ADMIN_KEY": ""},
                           check=False, capture_output=True, timeout=120, cwd=tmp_path)
        assert r.returncode == 0, (r.stdout + r.stderr).decode()[-3000:]
        admin_key = r.stdout.decode().strip().splitlines()[-1]
        assert admin_key.startswith("tsk_")
        api = cl.spawn(api_cmd, "api", {**api_env, **overrides})
        workers = [cl.spawn(worker_cmd, f"worker{i}", {**worker_env, **overrides}) for i in range(2)]
        cl.wait_ready(api)
        wids = {cl.wait_worker_started(w) for w in workers}

        n = 6
        with httpx.Client(base_url=cl.url, timeout=30) as anonymous:
            assert anonymous.get("/jobs").status_code == 401  # a key exists: every request needs one
        with httpx.Client(base_url=cl.url, timeout=30, headers={"Authorization": f"Bearer {admin_key}"}) as http:
            spec = _h.spec(name="compose", budget={"n_trials": n, "max_epochs": 4})
            job_id = http.post("/jobs", json=spec).json()["id"]
            job = _h.wait_job(http, job_id, lambda j: j["status"] in _h.FINISHED, timeout=150, logs=cl.logs)
            _h.assert_succeeded_exactly(job, n)
            ts = _h.trials(http, job_id)
            assert sum(t["state"] in ("complete", "pruned") for t in ts) == n
            assert wids <= {t["worker"] for t in ts}, (
                wids,
                [t["worker"] for t in ts],
            )  # both workers ran trials
            assert 0.0 <= job["test_metrics"]["accuracy"] <= 1.0
        # finalised (test scoring) exactly once, by one of the two workers
        worker_logs = "".join(w.log_path.read_text(errors="replace") for w in workers)
        assert worker_logs.count(f"job {job_id}: finalising") == 1, worker_logs[-3000:]
        assert worker_logs.count(f"job {job_id} succeeded") == 1
        assert len(list((tmp_path / "artifacts").rglob("best-model*"))) == 1

        # SIGTERM (docker's stop_signal): API and workers exit cleanly
        for p in [*workers, api]:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in [*workers, api]:
            assert p.wait(timeout=max(1, deadline - time.monotonic())) == 0, cl.logs()
    finally:
        cl.cleanup()
        drop()
