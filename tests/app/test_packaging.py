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
    """``pip install .`` into a fresh venv, then its ``tuner migrate`` and ``tuner serve`` elsewhere."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # The dependencies come from this test's environment (a plain path entry, so its .pth files, among
    # them the editable install's finder, are not run: the fresh venv sees only its own copy of the project).
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "torch").is_dir())
    (site / "deps.pth").write_text(f"{deps}\n")
    py, tuner_cmd = venv / "bin" / "python", venv / "bin" / "tuner"
    # The wheel is built with this environment's setuptools (no network), then pip-installed into the venv.
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(ROOT)], check=True, cwd=tmp_path, timeout=300)
    wheel = next(dist.glob("tuneserve-*.whl"))
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, cwd=tmp_path,
                   timeout=300)
    assert tuner_cmd.is_file()
    assert next(site.glob("app/migrations/versions/0001_*.py"), None) is not None
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "TUNER_DATABASE_URL": f"sqlite:///{work / 'db.sqlite'}",
           "TUNER_ARTIFACTS_DIR": str(work / "artifacts"), "TUNER_UPLOADS_DIR": str(work / "uploads")}
    env.pop("PYTHONPATH", None)
    where = subprocess.run([str(py), "-c", "import app, tuner; print(app.__file__, tuner.__file__)"],
                           env=env, cwd=work, capture_output=True, text=True, check=True).stdout
    assert str(ROOT) not in where and str(site) in where, where
    subprocess.run([str(tuner_cmd), "migrate"], env=env, cwd=work, check=True, timeout=120)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([str(tuner_cmd), "serve", "--port", str(port), "--workers", "0"],
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
