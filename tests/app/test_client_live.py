"""tuner.client and the client CLI against a live `tuner serve` (a worker included), on both backends."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.client import Client, TuneserveError

pytestmark = pytest.mark.slow


def _cli(srv, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TUNER_URL": srv.url, "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "tuner", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_client_and_cli_against_a_live_server(server, settings, spec_dict, iris_csv, tmp_path: Path):
    srv = server(workers=1).start()
    csv = tmp_path / "iris.csv"
    csv.write_bytes(iris_csv)
    spec = tmp_path / "spec.json"
    with Client(srv.url) as c:
        ds = c.upload(csv, target="species")
        assert ds["rows"] == 150 and ds["target"] == "species"
        with pytest.raises(TuneserveError) as e:
            c.submit(spec_dict(budget={"n_trials": 0}))
        assert e.value.status_code == 422 and "budget.n_trials: must be at least 1" in e.value.errors
        with pytest.raises(TuneserveError) as e:
            c.get("nope")
        assert e.value.status_code == 404

        job = c.submit(spec_dict(name="client", dataset={"id": ds["id"]}))
        assert c.get(job["id"])["status"] in ("queued", "running")
        seen = list(c.watch(job["id"], timeout=120))
        done = seen[-1]
        assert done["status"] == "succeeded" and done["progress"]["counted"] == 3
        assert len(seen) >= 2 and [j["version"] for j in seen] == sorted(j["version"] for j in seen)
        assert c.wait(job["id"], timeout=10) == c.get(job["id"])  # finished: answers at once
        assert [t["number"] for t in c.trials(job["id"], page_size=2)] == [0, 1, 2]
        assert job["id"] in [j["id"] for j in c.jobs()]
        with pytest.raises(TuneserveError) as e:
            c.cancel(job["id"])
        assert e.value.status_code == 409

        # the CLI on top: submit --watch ends with the best params and the test metrics, exit 0
        spec.write_text(__import__("json").dumps(spec_dict(name="watched")))
        r = _cli(srv, "submit", str(spec), "--watch")
        assert r.returncode == 0, r.stderr
        assert "best trial #" in r.stdout and "batch_size" in r.stdout and "accuracy" in r.stdout, r.stdout
        assert "succeeded" in r.stderr and "3/3" in r.stderr
        job_id = r.stdout.splitlines()[0]
        assert c.get(job_id)["status"] == "succeeded"
        r = _cli(srv, "status", job_id)
        assert r.returncode == 0 and '"status": "succeeded"' in r.stdout

        # a job that fails (its uploaded file vanished): non-zero exit and the reason
        ds2 = c.upload(csv, target="species")
        for f in Path(settings.uploads_dir).rglob("*"):
            if f.is_file() and ds2["id"] in str(f):
                f.unlink()
        spec.write_text(__import__("json").dumps(spec_dict(name="doomed", dataset={"id": ds2["id"]})))
        r = _cli(srv, "submit", str(spec), "--watch")
        assert r.returncode == 1 and "failed" in r.stdout, (r.stdout, r.stderr)
        bad = tmp_path / "bad.json"
        bad.write_text('{"name": "x", "budget": {"n_trials": 0}}')
        r = _cli(srv, "submit", str(bad))
        assert r.returncode == 2 and "budget.n_trials: must be at least 1" in r.stderr
    assert srv.stop() == 0


def test_the_service_cli_has_the_client_commands():
    from app.cli import build_parser

    args = build_parser().parse_args(["submit", "spec.json", "--watch", "--url", "http://x:1"])
    assert args.watch and args.url == "http://x:1" and args.func.__module__ == "tuner.client_cli"
