"""Issue 20: plots are drawn off the request threadpool, in a bounded pool with a time budget, and stop on
shutdown. Counted, not timed: blocked figures (an event) fill the pool; the other routes still answer."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest

from app.errors import NotReady
from app.services import plots

TIMEOUT = 60  # generous: only a hang fails


def _in_thread(fn: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    t.start()
    return t, out


def _wait_until(pred: Any, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_full_plot_pool_leaves_the_other_routes_free(client, spec_dict, monkeypatch):
    """More blocked plot requests than the request threadpool has threads (40): the pool draws 2, queues 8
    and answers the others 503 with Retry-After; /healthz, GET /jobs and /jobs/{id} still answer."""
    job_id = client.post("/jobs", json=spec_dict()).json()["id"]
    release = threading.Event()
    calls: list[str] = []

    def blocked(kind: str, *args: Any) -> tuple[str, str, None]:
        calls.append(kind)
        release.wait(TIMEOUT)
        return '{"data": [], "layout": {}}', "application/json", None

    monkeypatch.setattr(plots, "render", blocked)
    n = 45
    requests = [_in_thread(client.get, f"/jobs/{job_id}/plots/history") for _ in range(n)]
    app_state = client.app.state
    _wait_until(lambda: getattr(app_state, "plot_pool", None) is not None
                and app_state.plot_pool.busy == (plots.PLOT_WORKERS, plots.PLOT_QUEUE)
                and sum(1 for _, out in requests if out) == n - plots.PLOT_WORKERS - plots.PLOT_QUEUE)
    try:
        refused = [out[0] for _, out in requests if out]
        assert all(r.status_code == 503 and r.headers["retry-after"] == str(plots.RETRY_AFTER_S) for r in refused)
        assert re.fullmatch(r"plots are busy \(\d+ being drawn, \d+ waiting\); retry in \d+ s",
                            refused[0].json()["detail"])
        for path in ("/healthz", "/jobs", f"/jobs/{job_id}", "/readyz"):
            t, out = _in_thread(client.get, path)
            t.join(TIMEOUT)
            assert out and out[0].status_code == 200, path
        assert len(calls) == plots.PLOT_WORKERS  # still blocked: nothing else drawn
    finally:
        release.set()
    for t, _ in requests:
        t.join(TIMEOUT)
    codes = sorted(out[0].status_code for _, out in requests)
    accepted = plots.PLOT_WORKERS + plots.PLOT_QUEUE
    assert codes == [200] * accepted + [503] * (n - accepted)
    assert len(calls) == accepted and app_state.plot_pool.started == accepted


def test_a_plot_over_its_budget_is_stopped_with_a_503(client, spec_dict, monkeypatch):
    job_id = client.post("/jobs", json=spec_dict()).json()["id"]
    monkeypatch.setattr(plots, "PLOT_BUDGET_S", 0.5)
    stopped = threading.Event()
    steps = [0]

    def endless(*_args: Any) -> Any:
        try:
            while True:  # pure Python: stopped at its next instruction
                steps[0] += 1
                time.sleep(0.001)
        finally:
            stopped.set()

    monkeypatch.setattr(plots, "render", endless)
    r = client.get(f"/jobs/{job_id}/plots/contour")
    assert r.status_code == 503
    assert r.json()["detail"] == ("the contour plot took longer than 0.5 s and was stopped; draw fewer parameters "
                                  "(?params=) or another kind")
    assert stopped.wait(TIMEOUT)
    after = steps[0]
    time.sleep(0.2)
    assert steps[0] == after  # the work really stopped
    assert client.app.state.plot_pool.busy == (0, 0)
    monkeypatch.setattr(plots, "render", lambda *a: ("{}", "application/json", None))
    assert client.get(f"/jobs/{job_id}/plots/history").status_code == 200  # the worker is free again


def test_pool_shutdown_stops_running_and_waiting_work_without_waiting():
    pool = plots.PlotPool(workers=1, queue=2, budget_s=600)
    stopped = threading.Event()
    started = threading.Event()

    def endless() -> None:
        started.set()
        try:
            while True:
                time.sleep(0.001)
        finally:
            stopped.set()

    running = pool.submit("the slice plot", endless)
    waiting = pool.submit("the contour plot", endless)
    assert started.wait(TIMEOUT)
    pool.shutdown()  # returns at once; the futures fail
    for future in (running, waiting):
        with pytest.raises(NotReady, match="shutting down"):
            future.result(TIMEOUT)
    assert stopped.wait(TIMEOUT)
    with pytest.raises(NotReady, match="shutting down"):
        pool.submit("the history plot", endless)
    # and errors of the work itself reach the caller
    pool = plots.PlotPool(workers=1)
    with pytest.raises(ZeroDivisionError):
        pool.submit("x", lambda: 1 / 0).result(TIMEOUT)
    assert pool.submit("x", lambda: 42).result(TIMEOUT) == 42


# ------------------------------------------------------------------ `tuner serve` stops while plots draw
SLOW_PLOTS = """
import threading, time
from app.services import plots

STARTED = 0

def figure(*args, **kwargs):  # a figure that would take 10 minutes (pure Python: interruptible)
    global STARTED
    STARTED += 1
    print("slow figure started", STARTED, flush=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        time.sleep(0.01)
    raise AssertionError("never reached")

plots.figure = figure
"""


def test_serve_stops_on_sigterm_while_plots_draw(server, settings, spec_dict, tmp_path, monkeypatch):
    """Three figures that would take 10 minutes each are being drawn (2) or wait (1), an event stream is open
    and a long-poll waits when SIGTERM comes: the figures are answered 503, the long-poll 304, the stream
    ends, and the server exits within its grace, not waiting for any of them (before, it waited)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_PLOTS)  # loaded by the server's interpreter at start
    monkeypatch.setenv("PYTHONPATH", str(hook))
    srv = server(workers=0).start()
    http = srv.client()
    job_id = http.post("/jobs", json=spec_dict()).json()["id"]

    def plot() -> Any:
        try:
            with srv.client() as c:
                return c.get(f"/jobs/{job_id}/plots/contour", timeout=120).status_code
        except Exception as exc:  # noqa: BLE001 (a connection closed by the stopping server is fine too)
            return type(exc).__name__

    def events() -> Any:
        with srv.client() as c, c.stream("GET", f"/jobs/{job_id}/events", timeout=120) as r:
            return [line for line in r.iter_lines() if line.startswith("event: ")]

    def long_poll() -> Any:
        with srv.client() as c:
            etag = c.get(f"/jobs/{job_id}").headers["etag"]
            return c.get(f"/jobs/{job_id}", params={"wait": 60}, headers={"If-None-Match": etag}, timeout=120)

    requests = [_in_thread(plot) for _ in range(3)]
    stream, poll = _in_thread(events), _in_thread(long_poll)
    _wait_until(lambda: srv.log_path.read_text().count("slow figure started") == 2)
    _wait_until(lambda: srv.log_path.read_text().count(f"GET /jobs/{job_id} HTTP") >= 1)
    time.sleep(0.5)  # the long-poll waits, the stream has sent its first event
    assert http.get("/healthz").status_code == 200  # meanwhile the API answers
    t0 = time.monotonic()
    rc = srv.stop(timeout=120)
    stopped_after = time.monotonic() - t0
    for t, _ in requests:
        t.join(TIMEOUT)
    results = [out[0] for _, out in requests]
    assert results == [503, 503, 503], (results, srv.log_path.read_text()[-3000:])
    # the long-poll was answered (304, not cut off) and the event stream ended, both at once
    for t in (stream[0], poll[0]):
        t.join(TIMEOUT)
    assert stream[1] == [["event: progress"]], stream[1]
    assert poll[1] and poll[1][0].status_code == 304
    assert rc == 0, srv.log_path.read_text()[-3000:]
    assert stopped_after < 60  # (it would have waited ten minutes); measured: about a second
    print(f"stopped {stopped_after:.1f} s after SIGTERM")
