"""``GET /metrics`` in Prometheus format: job and trial figures read from the database at scrape time,
API request latency measured in this process.

Training runs in worker processes (often on other machines), so nothing they do is counted in process
memory: a custom collector (:class:`DatabaseCollector`) runs a few aggregate SQL queries on the jobs table
and Optuna's tables for every scrape, and reports what every worker has written. Any API replica gives the
same figures. Request latency is per process (a histogram by route template, e.g. ``/jobs/{job_id}``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.models import Job, JobStatus

__all__ = ["DURATION_BUCKETS", "EPOCH_BUCKETS", "DatabaseCollector", "RequestLatencyMiddleware", "install"]

DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
EPOCH_BUCKETS = (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 500)
_TRIAL_STATES = ("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING")


def _histogram_sql(value_sql: str, buckets: Sequence[float]) -> str:
    cases = ", ".join(f"SUM(CASE WHEN v <= {b} THEN 1 ELSE 0 END)" for b in buckets)
    return f"SELECT COUNT(v), SUM(v), {cases} FROM ({value_sql}) AS x"


_DURATIONS = _histogram_sql(
    "SELECT CAST(a.value_json AS FLOAT) AS v FROM trial_user_attributes a JOIN trials t ON t.trial_id = a.trial_id"
    " WHERE a.key = 'duration_s' AND t.state IN ('COMPLETE', 'PRUNED', 'FAIL')", DURATION_BUCKETS)
_EPOCHS = _histogram_sql(
    "SELECT COUNT(*) AS v FROM trial_intermediate_values i JOIN trials t ON t.trial_id = i.trial_id"
    " WHERE t.state IN ('COMPLETE', 'PRUNED') GROUP BY i.trial_id", EPOCH_BUCKETS)
_FAIL_BY_SYSTEM_ATTR = sa.text(
    "SELECT COUNT(*) FROM trials t JOIN trial_system_attributes a ON a.trial_id = t.trial_id"
    " WHERE t.state = 'FAIL' AND a.key = :key AND a.value_json = :value")
_RUNNING_HEARTBEATS = sa.text(
    "SELECT h.heartbeat, w.value_json FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id"
    " LEFT JOIN trial_user_attributes w ON w.trial_id = t.trial_id AND w.key = 'worker'"
    " WHERE t.state = 'RUNNING'")


def _naive(v: Any) -> datetime | None:
    """A naive UTC datetime from what the driver returns (SQLite gives text for raw queries)."""
    if isinstance(v, str):
        v = datetime.fromisoformat(v)
    if not isinstance(v, datetime):
        return None
    return v.astimezone(UTC).replace(tzinfo=None) if v.tzinfo is not None else v


def _state(s: Any) -> str:
    return str(s).rsplit(".", 1)[-1].upper()


def workers_alive_from_heartbeats(conn: sa.Connection, grace_period_s: float) -> int:
    """Distinct workers (``host:pid``) whose running trial beat within the grace period.

    TODO(workers table): a worker idle between trials is not seen here; once migration 0002's ``workers``
    table with heartbeats lands, count its fresh rows instead (replace this function's body).
    """
    now = _naive(conn.execute(sa.select(sa.func.now())).scalar())
    alive: set[str] = set()
    for raw_beat, worker in conn.execute(_RUNNING_HEARTBEATS):
        beat = _naive(raw_beat)
        if now is None or beat is None:
            continue
        age = (now - beat).total_seconds()
        if age <= grace_period_s:
            alive.add(json.loads(worker) if worker else f"trial-heartbeat-{len(alive)}")
    return len(alive)


class DatabaseCollector(Collector):
    """Jobs by status, queue depth, trials by state and failure cause, trial duration and epoch histograms,
    workers alive: all from aggregate SQL at scrape time (workers write to the database, not to us)."""

    def __init__(self, engine: Callable[[], Engine], *, grace_period_s: float = 30.0,
                 workers_alive: Callable[[sa.Connection, float], int] = workers_alive_from_heartbeats) -> None:
        self._engine = engine
        self.grace_period_s = grace_period_s
        self.workers_alive = workers_alive

    def describe(self) -> Iterable[Metric]:
        return []  # collected lazily; nothing touches the database at registration

    def collect(self) -> Iterable[Metric]:
        with self._engine().connect() as conn:
            yield from self._jobs(conn)
            if sa.inspect(conn).has_table("trials"):  # Optuna's tables exist once a study was opened
                yield from self._trials(conn)

    def _jobs(self, conn: sa.Connection) -> Iterable[Metric]:
        counts = dict(conn.execute(sa.select(Job.status, sa.func.count()).group_by(Job.status)).all())
        jobs = GaugeMetricFamily("tuneserve_jobs", "Jobs by status", labels=["status"])
        for st in JobStatus:
            jobs.add_metric([st.value], int(counts.get(st.value, 0)))
        yield jobs
        yield GaugeMetricFamily("tuneserve_queue_depth", "Jobs queued, waiting for a worker",
                                value=int(counts.get(JobStatus.queued.value, 0)))
        slots = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(Job.n_trials - Job.trials_claimed), 0)).where(
            Job.status.in_([JobStatus.queued.value, JobStatus.running.value]))).scalar()
        yield GaugeMetricFamily("tuneserve_trial_slots_pending",
                                "Trials of queued and running jobs not yet claimed by a worker", value=int(slots or 0))

    def _trials(self, conn: sa.Connection) -> Iterable[Metric]:
        by_state = {_state(s): int(n) for s, n in conn.execute(sa.text("SELECT state, COUNT(*) FROM trials GROUP BY state"))}
        trials = GaugeMetricFamily("tuneserve_trials", "Optuna trials of all jobs by state", labels=["state"])
        for st in _TRIAL_STATES:
            trials.add_metric([st.lower()], by_state.get(st, 0))
        yield trials
        config = int(conn.execute(_FAIL_BY_SYSTEM_ATTR, {"key": "failure", "value": json.dumps("config")}).scalar() or 0)
        interrupted = int(conn.execute(_FAIL_BY_SYSTEM_ATTR, {"key": "interrupted", "value": "true"}).scalar() or 0)
        failed = GaugeMetricFamily(
            "tuneserve_failed_trials", "Failed trials by cause: config (NaN/inf loss, out of memory; counted), "
            "interrupted (cancel/shutdown; not counted), other (dead worker, unexpected error)", labels=["cause"])
        failed.add_metric(["config"], config)
        failed.add_metric(["interrupted"], interrupted)
        failed.add_metric(["other"], max(0, by_state.get("FAIL", 0) - config - interrupted))
        yield failed
        yield self._histogram(conn, _DURATIONS, DURATION_BUCKETS, "tuneserve_trial_duration_seconds",
                              "Wall time of finished trials (user attribute duration_s)")
        yield self._histogram(conn, _EPOCHS, EPOCH_BUCKETS, "tuneserve_trial_epochs",
                              "Epochs of complete and pruned trials (reported steps; K-fold: folds)")
        yield GaugeMetricFamily("tuneserve_workers_alive", "Workers with a running trial that heartbeat within the "
                                "grace period", value=self.workers_alive(conn, self.grace_period_s))

    @staticmethod
    def _histogram(conn: sa.Connection, sql: str, buckets: Sequence[float], name: str, doc: str) -> Metric:
        row = conn.execute(sa.text(sql)).one()
        count, total, cumulative = int(row[0] or 0), float(row[1] or 0.0), [int(v or 0) for v in row[2:]]
        hist = HistogramMetricFamily(name, doc)
        hist.add_metric([], [(str(float(b)), c) for b, c in zip(buckets, cumulative, strict=True)] + [("+Inf", count)],
                        sum_value=total)
        return hist


class RequestLatencyMiddleware:
    """API request latency by method, route template (``/jobs/{job_id}``, not the raw path) and status."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_)
        finally:
            self.histogram.labels(scope["method"], _route_of(scope), str(status)).observe(
                time.perf_counter() - started)


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is not None:
        return str(path) if path else "/"
    raw = scope.get("path", "")
    for prefix in ("/dashboard", "/web"):
        if raw == prefix or raw.startswith(prefix + "/"):
            return prefix
    return "(unmatched)"


def install(app: FastAPI, engine: Engine, *, grace_period_s: float) -> CollectorRegistry:
    """Add ``GET /metrics`` and the latency middleware to ``app``, with a registry of its own."""
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(lambda: engine, grace_period_s=grace_period_s))
    latency = Histogram("tuneserve_http_request_duration_seconds", "API request latency by route template",
                        ["method", "route", "status"], registry=registry)
    app.add_middleware(RequestLatencyMiddleware, histogram=latency)
    router = APIRouter(tags=["health"])

    @router.get("/metrics", response_class=Response)
    def metrics(request: Request) -> Response:
        """Prometheus metrics: jobs, queue, trials, durations, workers alive, API latency."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(router)
    app.state.metrics_registry = registry
    return registry

