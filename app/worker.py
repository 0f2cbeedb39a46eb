"""The worker: claims trial slots of queued/running jobs and runs one Optuna trial per claim.

Trial slots make ``n_trials`` exact with any number of workers (see docs/DESIGN.md): a worker atomically
increments ``jobs.trials_claimed`` (``UPDATE ... WHERE trials_claimed < n_trials``) and then runs
``optimize(n_trials=1)`` inside which Optuna's heartbeat runs. A slot is given back when the trial is
interrupted (:class:`~tuner.StopRequested`) or its worker died (the heartbeat-stale callback in
:mod:`app.db`). When the budget is spent and no trial runs, exactly one worker wins the atomic
``running -> finalizing`` transition and scores the test set.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
import torch

from app.core.config import Settings
from app.db import get_engine, make_storage, release_slot, session_scope
from app.models import Dataset, Job, JobStatus, utcnow
from tuner.data import PreparedData, prepare_data
from tuner.errors import StopRequested
from tuner.objective import Objective
from tuner.runner import build_result, finalize, open_study, optimize, trial_counts
from tuner.spec import JobSpec, SpecError

__all__ = ["Worker", "run_worker"]

log = logging.getLogger(__name__)
CANCEL_CHECK_S = 1.0
MAINTENANCE_EVERY_S = 2.0
_CACHED_JOBS = 4
_INFRA_ERRORS: tuple[type[BaseException], ...] = (sa.exc.OperationalError, sa.exc.InterfaceError,
                                                  optuna.exceptions.StorageInternalError)


@dataclass
class _JobContext:
    spec: JobSpec
    study: optuna.Study
    data: PreparedData
    objective: Objective


@dataclass
class _CancelCache:
    checked: float = 0.0
    value: bool = False


@dataclass
class _Leak:
    since: float
    claimed: int


@dataclass
class Worker:
    """One worker process's loop (``run``); ``request_stop`` makes it stop at the next epoch boundary."""

    settings: Settings
    parent_pid: int | None = None
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def __post_init__(self) -> None:
        url = self.settings.database_url
        self.engine = get_engine(url)
        self.storage = make_storage(
            url, heartbeat_interval=self.settings.heartbeat_interval, grace_period=self.settings.grace_period
        )
        self._stop = threading.Event()
        self._jobs: dict[str, _JobContext] = {}
        self._cancel: dict[str, _CancelCache] = {}
        self._leaks: dict[str, _Leak] = {}
        self._last_maintenance = 0.0

    # ------------------------------------------------------------------------------------ control
    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self._stop.set()  # the serving process died: do not train on as an orphan
        return self._stop.is_set()

    def _should_stop(self, job_id: str) -> bool:
        if self.stopping:
            return True
        cache = self._cancel.setdefault(job_id, _CancelCache())
        now = time.monotonic()
        if now - cache.checked >= CANCEL_CHECK_S:
            try:
                with session_scope(self.engine) as s:
                    row = s.execute(sa.select(Job.cancel_requested, Job.status).where(Job.id == job_id)).first()
                cache.value = row is None or bool(row.cancel_requested) or row.status != JobStatus.running
            except _INFRA_ERRORS:
                pass  # a database blip: keep training, ask again later
            cache.checked = now
        return cache.value

    def run(self) -> None:
        log.info("worker %s started (device %s, %d torch threads)", self.worker_id, self.settings.device,
                 torch.get_num_threads())
        self.recover()
        while not self.stopping:
            try:
                busy = self.run_once()
            except _INFRA_ERRORS as exc:
                log.warning("database error, retrying: %s", str(exc).splitlines()[0])
                busy = False
                self._stop.wait(min(5.0, self.settings.poll_interval_s * 4))
            if not busy:
                self._stop.wait(self.settings.poll_interval_s)
        log.info("worker %s stopped", self.worker_id)

    def run_once(self) -> bool:
        """Maintenance when due, then at most one trial; False when there was nothing to do."""
        if time.monotonic() - self._last_maintenance >= MAINTENANCE_EVERY_S:
            self.maintain()
        for job_id in self._candidates():
            if self.stopping:
                return True
            if self._work_on(job_id):
                return True
        return False

    # --------------------------------------------------------------------------------- job choice
    def _candidates(self) -> list[str]:
        """Jobs with trials left, fairest first: round-robin across tenants, then across a tenant's jobs.

        The tenant served least recently (its latest ``last_claim_at``, never served first) goes first,
        and within it the job claimed least recently; so one tenant's big job cannot starve the others.
        """
        now = utcnow()
        served = sa.func.max(Job.last_claim_at).over(partition_by=Job.tenant)
        open_jobs = (
            sa.select(Job.id, Job.created_at, Job.last_claim_at, served.label("tenant_served"))
            .where(
                Job.status.in_([JobStatus.queued.value, JobStatus.running.value]),
                Job.cancel_requested.is_(False),
                Job.trials_claimed < Job.n_trials,
                sa.or_(Job.deadline.is_(None), Job.deadline > now),
            )
            .subquery()
        )
        c = open_jobs.c
        with session_scope(self.engine) as s:
            return list(s.scalars(
                sa.select(c.id)
                .order_by(c.tenant_served.nulls_first(), c.last_claim_at.nulls_first(), c.created_at, c.id)
                .limit(8)
            ))

    def _start(self, job_id: str) -> None:
        """queued -> running (once, whoever gets there first); the deadline starts now."""
        with session_scope(self.engine, write=True) as s:
            job = s.get(Job, job_id)
            if job is None or job.status != JobStatus.queued:
                return
            now = utcnow()
            timeout = (job.spec.get("budget") or {}).get("timeout_s")
            s.execute(
                sa.update(Job).where(Job.id == job_id, Job.status == JobStatus.queued.value).values(
                    status=JobStatus.running.value, started_at=now,
                    deadline=now + timedelta(seconds=float(timeout)) if timeout else None,
                )
            )

    def _claim(self, job_id: str) -> bool:
        with session_scope(self.engine, write=True) as s:
            res = s.execute(
                sa.update(Job)
                .where(
                    Job.id == job_id,
                    Job.status == JobStatus.running.value,
                    Job.cancel_requested.is_(False),
                    Job.trials_claimed < Job.n_trials,
                    sa.or_(Job.deadline.is_(None), Job.deadline > utcnow()),
                )
                .values(trials_claimed=Job.trials_claimed + 1, last_claim_at=utcnow())
            )
            return bool(res.rowcount == 1)  # type: ignore[attr-defined]

    # -------------------------------------------------------------------------------- job context
    def _resolve_upload(self, dataset_id: str) -> Path:
        with session_scope(self.engine) as s:
            ds = s.get(Dataset, dataset_id)
        if ds is None:
            raise SpecError(["dataset.id: the uploaded data set was deleted"])
        return Path(ds.path)

    def _context(self, job_id: str, spec_json: dict[str, Any], study_name: str) -> _JobContext:
        ctx = self._jobs.get(job_id)
        if ctx is None:
            spec = JobSpec.model_validate(spec_json)
            data = prepare_data(spec, resolve_upload=self._resolve_upload)
            study = open_study(spec, self.storage, study_name)
            objective = Objective(
                spec, data, device=self.settings.device, should_stop=lambda: self._should_stop(job_id),
                worker_id=self.worker_id, artifacts_dir=self.settings.artifacts_dir,
            )
            ctx = _JobContext(spec, study, data, objective)
            while len(self._jobs) >= _CACHED_JOBS:
                self._jobs.pop(next(iter(self._jobs)))
            self._jobs[job_id] = ctx
        return ctx

    def _load(self, job_id: str) -> Job | None:
        with session_scope(self.engine) as s:
            return s.get(Job, job_id)

    # ------------------------------------------------------------------------------- one trial
    def _work_on(self, job_id: str) -> bool:
        self._start(job_id)
        job = self._load(job_id)
        if job is None or job.status != JobStatus.running:
            return False
        try:
            ctx = self._context(job_id, job.spec, job.study_name)
        except _INFRA_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - bad data/spec at run time: the job fails, the worker goes on
            self._fail(job_id, _message(exc))
            return True
        if not self._claim(job_id):
            return False
        log.info("job %s: trial slot claimed by %s", job_id, self.worker_id)
        try:
            optimize(ctx.study, ctx.objective, n_trials=1, timeout_s=None)
        except StopRequested:
            release_slot(self.engine, job_id=job_id)
            self._settle(job_id, ctx)  # cancelled once no trial of it runs any more
            return True
        except _INFRA_ERRORS:
            self._try_release(job_id)
            raise
        except Exception as exc:
            self._try_release(job_id)
            log.exception("job %s: trial failed unexpectedly", job_id)
            self._fail(job_id, f"trial failed: {_message(exc)}")
            return True
        self._settle(job_id, ctx)
        return True

    def _try_release(self, job_id: str) -> None:
        try:
            release_slot(self.engine, job_id=job_id)
        except _INFRA_ERRORS:
            log.warning("job %s: could not release a trial slot (the leak check will)", job_id)

    def _fail(self, job_id: str, message: str) -> None:
        log.warning("job %s failed: %s", job_id, message)
        with session_scope(self.engine, write=True) as s:
            s.execute(
                sa.update(Job)
                .where(Job.id == job_id, Job.status.in_([JobStatus.queued.value, JobStatus.running.value,
                                                        JobStatus.finalizing.value]))
                .values(status=JobStatus.failed.value, error=message[:10_000], finished_at=utcnow())
            )
        self._jobs.pop(job_id, None)

    # -------------------------------------------------------------------------- end of the job
    def _settle(self, job_id: str, ctx: _JobContext | None = None) -> None:
        """After a trial (or in maintenance): cancelled, finalised, or nothing yet."""
        job = self._load(job_id)
        if job is None or job.status != JobStatus.running:
            return
        study = ctx.study if ctx is not None else self._study(job)
        deadline_passed = job.deadline is not None and job.deadline <= utcnow()
        if study is None:  # no worker opened it yet
            if job.cancel_requested:
                self._set_cancelled(job_id)
            elif deadline_passed:
                self._finalize(job, None)  # fails it: no trial completed
            return
        counts = trial_counts(study)
        if counts.running > 0:
            return
        if job.cancel_requested:
            self._set_cancelled(job_id)
            return
        if counts.counted >= job.n_trials or deadline_passed:
            self._finalize(job, ctx)

    def _set_cancelled(self, job_id: str) -> None:
        with session_scope(self.engine, write=True) as s:
            s.execute(
                sa.update(Job).where(Job.id == job_id, Job.status == JobStatus.running.value)
                .values(status=JobStatus.cancelled.value, finished_at=utcnow())
            )
        self._jobs.pop(job_id, None)

    def _finalize(self, job: Job, ctx: _JobContext | None) -> None:
        with session_scope(self.engine, write=True) as s:
            res = s.execute(
                sa.update(Job)
                .where(Job.id == job.id, Job.status == JobStatus.running.value, Job.cancel_requested.is_(False))
                .values(status=JobStatus.finalizing.value, finalized_by=self.worker_id, heartbeat_at=utcnow())
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                return  # another worker finalises (or the job was cancelled)
        log.info("job %s: finalising (%s)", job.id, self.worker_id)
        done = threading.Event()
        beat = threading.Thread(target=self._finalize_heartbeat, args=(job.id, done), daemon=True)
        beat.start()
        try:
            ctx = ctx or self._context(job.id, job.spec, job.study_name)
            counts = trial_counts(ctx.study)
            if counts.complete == 0:
                why = "the time budget ran out" if counts.counted < job.n_trials else "the budget was spent"
                raise _JobFailed(
                    f"no trial completed ({why}: {counts.pruned} pruned, "
                    f"{counts.failed + counts.config_failed} failed)"
                )
            metrics = finalize(ctx.study, ctx.spec, ctx.data, artifacts_dir=self.settings.artifacts_dir,
                               device=self.settings.device)
            result = build_result(ctx.study)
            with session_scope(self.engine, write=True) as s:
                s.execute(
                    sa.update(Job)
                    .where(Job.id == job.id, Job.status == JobStatus.finalizing.value,
                           Job.finalized_by == self.worker_id)
                    .values(status=JobStatus.succeeded.value, test_metrics=_jsonable(metrics),
                            best_trial=_jsonable(result["best_trial"]), finished_at=utcnow(), heartbeat_at=None)
                )
            log.info("job %s succeeded: %s", job.id, metrics)
        except _INFRA_ERRORS:
            raise  # left in `finalizing`; recovered after the grace period
        except Exception as exc:  # noqa: BLE001
            self._fail(job.id, _message(exc))
        finally:
            done.set()
            beat.join(timeout=5)
            self._jobs.pop(job.id, None)

    def _finalize_heartbeat(self, job_id: str, done: threading.Event) -> None:
        while not done.wait(self.settings.heartbeat_interval):
            try:
                with session_scope(self.engine, write=True) as s:
                    s.execute(sa.update(Job).where(Job.id == job_id, Job.finalized_by == self.worker_id)
                              .values(heartbeat_at=utcnow()))
            except _INFRA_ERRORS:
                pass

    # ------------------------------------------------------------------------------ maintenance
    def recover(self) -> None:
        """Jobs left ``finalizing`` by a dead worker (no heartbeat for ``grace_period``) run again."""
        cutoff = utcnow() - timedelta(seconds=self.settings.grace_period)
        with session_scope(self.engine, write=True) as s:
            res = s.execute(
                sa.update(Job)
                .where(Job.status == JobStatus.finalizing.value,
                       sa.or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
                .values(status=JobStatus.running.value, finalized_by=None)
            )
            if res.rowcount:  # type: ignore[attr-defined]
                log.warning("%d job(s) left finalising by a dead worker go back to running", res.rowcount)  # type: ignore[attr-defined]

    def _study(self, job: Job) -> optuna.Study | None:
        ctx = self._jobs.get(job.id)
        if ctx is not None:
            return ctx.study
        try:
            return optuna.load_study(study_name=job.study_name, storage=self.storage,
                                     sampler=optuna.samplers.RandomSampler())
        except KeyError:
            return None

    def maintain(self) -> None:
        """Fail stale trials (dead workers), fix leaked slots, cancel or finalise jobs nobody works on."""
        self._last_maintenance = time.monotonic()
        self.recover()
        with session_scope(self.engine) as s:
            jobs = list(s.scalars(
                sa.select(Job).where(Job.status == JobStatus.running.value).order_by(Job.created_at).limit(20)
            ))
        for job in jobs:
            if self.stopping:
                return
            study = self._study(job)
            if study is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
                self._check_leak(job, study)
            self._settle(job.id)

    def _check_leak(self, job: Job, study: optuna.Study) -> None:
        """Slots claimed by a worker that died before its trial existed are given back after a while."""
        counts = trial_counts(study)
        held = counts.counted + counts.running
        if job.trials_claimed <= held:
            self._leaks.pop(job.id, None)
            return
        leak = self._leaks.get(job.id)
        now = time.monotonic()
        if leak is None or leak.claimed != job.trials_claimed:
            self._leaks[job.id] = _Leak(now, job.trials_claimed)
            return
        if now - leak.since >= self.settings.grace_period:
            with session_scope(self.engine, write=True) as s:
                s.execute(sa.update(Job).where(Job.id == job.id, Job.trials_claimed == leak.claimed)
                          .values(trials_claimed=held))
            log.warning("job %s: %d leaked trial slot(s) given back", job.id, leak.claimed - held)
            self._leaks.pop(job.id, None)


class _JobFailed(Exception):
    pass


def _message(exc: BaseException) -> str:
    if isinstance(exc, SpecError):
        return "; ".join(exc.errors)
    return str(exc) or type(exc).__name__


def _jsonable(value: Any) -> Any:
    import json
    import math

    def fix(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): fix(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        if isinstance(v, datetime):
            return v.isoformat()
        return v

    return json.loads(json.dumps(fix(value), default=str))


def run_worker(settings: Settings, *, threads: int | None = None, parent_pid: int | None = None) -> None:
    """A worker process's main: torch threads, SIGTERM/SIGINT -> stop at the next epoch boundary."""
    torch.set_num_threads(threads or settings.threads_for(1))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker = Worker(settings, parent_pid=parent_pid)

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("worker %s: signal %d, stopping at the next epoch boundary", worker.worker_id, signum)
        worker.request_stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    worker.run()
