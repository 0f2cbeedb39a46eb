"""A non-editable install works from outside the checkout: migrations ship inside the package."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_installed_package_migrates_and_serves_from_another_directory(tmp_path: Path) -> None:
    target = tmp_path / "site"
    # The project only (--no-deps: the dependencies are those of this venv), built without network.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, cwd=tmp_path, timeout=300)
    assert (target / "app" / "migrations" / "versions").is_dir()
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "TUNER_DATABASE_URL": f"sqlite:///{work / 'db.sqlite'}",
           "TUNER_ARTIFACTS_DIR": str(work / "artifacts"), "TUNER_UPLOADS_DIR": str(work / "uploads")}
    where = subprocess.run([sys.executable, "-c", "import app, tuner; print(app.__file__, tuner.__file__)"],
                           env=env, cwd=work, capture_output=True, text=True, check=True).stdout
    assert str(ROOT) not in where and str(target) in where, where
    subprocess.run([sys.executable, "-m", "app", "migrate"], env=env, cwd=work, check=True, timeout=120)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(port), "--workers", "0"],
                            env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.3)
        assert r.json()["status"] == "ready"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
