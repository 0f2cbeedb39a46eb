"""Proof that the service trains on the GPU: a small job through the API and one `tuner worker` with
TUNER_DEVICE=cuda, then every trial's recorded device. Run on a CUDA machine:
``python -m bench.cuda_check`` (writes bench/results/cuda_check.json)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient


def main() -> int:
    import torch

    tmp = Path(tempfile.mkdtemp())
    env = {**os.environ, "TUNER_DATABASE_URL": f"sqlite:///{tmp}/tuner.db", "TUNER_ARTIFACTS_DIR": str(tmp / "a"),
           "TUNER_UPLOADS_DIR": str(tmp / "u"), "TUNER_DEVICE": "cuda", "TUNER_HEARTBEAT_INTERVAL": "5"}
    os.environ.update(env)
    from app.core.config import Settings
    from app.main import create_app
    from app.migrate import upgrade

    upgrade(env["TUNER_DATABASE_URL"])
    spec = json.loads(Path("examples/digits-mlp.json").read_text())
    spec["budget"] = {"n_trials": 6, "max_epochs": 10, "timeout_s": 300}
    worker = subprocess.Popen([sys.executable, "-m", "app", "worker"], env=env)
    try:
        with TestClient(create_app(Settings())) as client:
            job = client.post("/jobs", json=spec).json()
            deadline = time.time() + 400
            while time.time() < deadline:
                detail = client.get(f"/jobs/{job['id']}").json()
                if detail["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(1)
            trials = client.get(f"/jobs/{job['id']}/trials").json()["items"]
    finally:
        worker.terminate()
        worker.wait(30)
    result = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "status": detail["status"],
        "test_metrics": detail.get("test_metrics"),
        "trials": [{"number": t["number"], "state": t["state"], "device": t["device"], "worker": t["worker"],
                    "duration_s": t["duration_s"]} for t in trials],
    }
    print(json.dumps(result, indent=2))
    out = Path(os.environ.get("OUT", "bench/results")) / "cuda_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0 if detail["status"] == "succeeded" and all(t["device"].startswith("cuda") for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
