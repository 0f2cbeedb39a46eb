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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
import torch
from optuna.trial import TrialState

from app.core.config import Settings
from app.db import get_engine, make_storage, release_slot, session_scope
from app.liveness import count_failure, reap_dead_workers, set_phase, unregister_worker, worker_beat
from app.models import Dataset, Job, JobStatus, utcnow
from app.services.summary import SummaryCallback, refreshing_first, summary_values, try_refresh
from tuner.data import PreparedData, prepare_data
from tuner.errors import StopRequested
from tuner.limits import configure as configure_limits
from tuner.objective import Objective
from tuner.runner import build_result, finalize, open_study, optimize, trial_counts
from tuner.spec import JobSpec, SpecError

__all__ = ["Worker", "run_worker"]

log = logging.getLogger(__name__)
CANCEL_CHECK_S = 1.0
MAINTENANCE_EVERY_S = 2.0
MAINTENANCE_PAGE = 50
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
        configure_limits(self.settings.limits())  # stored specs are re-validated with the API's limits
        self.engine = get_engine(url)
        self.storage = make_storage(
            url, heartbeat_interval=self.settings.heartbeat_interval, grace_period=self.settings.grace_period
        )
        self._stop = threading.Event()
        self._jobs: dict[str, _JobContext] = {}
        self._cancel: dict[str, _CancelCache] = {}
        self._leaks: dict[str, _Leak] = {}
        self._last_maintenance = 0.0
        self._current_job: str | None = None

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
        """Until stopped: no exception from one job ends the loop (each job step is guarded, see
        ``run_once``); database errors are waited out; a heartbeat row says this worker is alive."""
        log.info("worker %s started (device %s, %d torch threads)", self.worker_id, self.settings.device,
                 torch.get_num_threads())
        beat = threading.Thread(target=self._worker_heartbeat, name="worker-heartbeat", daemon=True)
        beat.start()
        try:
            while not self.stopping:
                try:
                    busy = self.run_once()
                except _INFRA_ERRORS as exc:
                    log.warning("database error, retrying: %s", str(exc).splitlines()[0])
                    busy = False
                    self._stop.wait(min(5.0, self.settings.poll_interval_s * 4))
                except Exception:  # a bug outside any one job's steps: log it, keep serving the others
                    log.exception("worker %s: unexpected error; going on", self.worker_id)
                    busy = False
                    self._stop.wait(min(5.0, self.settings.poll_interval_s * 4))
                if not busy:
                    self._stop.wait(self.settings.poll_interval_s)
        finally:
            self._stop.set()
            beat.join(timeout=5)
            try:
                unregister_worker(self.engine, self.worker_id)
            except Exception as exc:  # noqa: BLE001 - the row goes stale and is reaped
                log.info("worker row not removed (%s); it is reaped after the grace period", type(exc).__name__)
        log.info("worker %s stopped", self.worker_id)

    def _worker_heartbeat(self) -> None:
        while True:
            try:
                worker_beat(self.engine, self.worker_id, self._current_job)
            except Exception as exc:  # noqa: BLE001 - a blip: beat again next time
                log.warning("worker heartbeat not written: %s", str(exc).splitlines()[0] if str(exc) else exc)
            if self._stop.wait(min(self.settings.worker_heartbeat_s, self.settings.grace_period / 3)):
                return

    def run_once(self) -> bool:
        """Maintenance when due, then at most one trial; False when there was nothing to do."""
        if time.monotonic() - self._last_maintenance >= MAINTENANCE_EVERY_S:
            self.maintain()
        for job_id in self._candidates():
            if self.stopping:
                return True
            self._current_job = job_id
            try:
                if self._work_on(job_id):
                    return True
            except _INFRA_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - one job's bug must not end the worker
                self._job_error(job_id, "worker", exc)
                return True
            finally:
                self._current_job = None
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
        try_refresh(self.engine, job_id)

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
            set_phase(self.engine, self.worker_id, job_id, "preparing")  # a kill from here on counts
            data = prepare_data(spec, resolve_upload=self._resolve_upload)
            set_phase(self.engine, self.worker_id, job_id, None)
            study = open_study(spec, self.storage, study_name, worker_id=self._seed_identity(job_id), data=data)
            objective = Objective(
                spec, data, device=self.settings.device, should_stop=lambda: self._should_stop(job_id),
                worker_id=self.worker_id, artifacts_dir=self.settings.artifacts_dir,
            )
            ctx = _JobContext(spec, study, data, objective)
            while len(self._jobs) >= _CACHED_JOBS:
                self._jobs.pop(next(iter(self._jobs)))
            self._jobs[job_id] = ctx
        return ctx

    def _seed_identity(self, job_id: str) -> str | None:
        """What seeds this process's sampler for the job: ``None`` (as ``tuner run``) for the first process
        that opens its study, so a one-worker job reproduces with ``tuner run``; a unique name after that."""
        with session_scope(self.engine, write=True) as s:
            ordinal = s.execute(
                sa.update(Job).where(Job.id == job_id).values(study_openers=Job.study_openers + 1)
                .returning(Job.study_openers)
            ).scalar_one_or_none()
        return None if ordinal in (None, 1) else f"{self.worker_id}#{ordinal}"

    def _load(self, job_id: str) -> Job | None:
        with session_scope(self.engine) as s:
            return s.get(Job, job_id)

    # ------------------------------------------------------------------------------- one trial
    def _work_on(self, job_id: str) -> bool:
        """Start the job, load its data, claim a slot, run one trial, settle. Each step is guarded: an
        unexpected exception counts as a failure of this job (see :meth:`_job_error`), never of the worker."""
        try:
            self._start(job_id)
        except _INFRA_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001
            self._job_error(job_id, "starting the job", exc)
            return True
        job = self._load(job_id)
        if job is None or job.status != JobStatus.running:
            return False
        try:
            ctx = self._context(job_id, job.spec, job.study_name)
        except _INFRA_ERRORS:
            raise
        except SpecError as exc:  # the spec cannot run here at all: fail at once
            self._fail(job_id, _message(exc))
            return True
        except Exception as exc:  # noqa: BLE001 - bad data, out of memory: counted, bounded retries
            self._job_error(job_id, "loading the data", exc)
            return True
        if not self._claim(job_id):
            return False
        log.info("job %s: trial slot claimed by %s", job_id, self.worker_id)
        tracked = _TrackedObjective(refreshing_first(ctx.objective, self.engine, job_id))
        try:
            optimize(ctx.study, tracked, n_trials=1, timeout_s=None, callbacks=[SummaryCallback(self.engine, job_id)])
        except StopRequested:
            self._give_back(job_id, ctx, tracked.trial_id)
            try_refresh(self.engine, job_id)
            self._settle(job_id, ctx)  # cancelled once no trial of it runs any more
            return True
        except _INFRA_ERRORS:
            self._give_back(job_id, ctx, tracked.trial_id)
            raise
        except Exception as exc:
            if _failed_elsewhere(exc):
                # The trial went stale (its heartbeat could not be written) and another worker failed it and
                # re-queued a copy: only this trial ends, the job goes on. Its slot is given back once, by
                # whichever of us gets there first (the release is keyed by trial).
                log.warning("job %s: trial %s was failed by another worker (stale heartbeat); abandoned",
                            job_id, tracked.trial_number)
                self._give_back(job_id, ctx, tracked.trial_id)
                return True
            self._give_back(job_id, ctx, tracked.trial_id)
            log.exception("job %s: trial failed unexpectedly", job_id)
            self._job_error(job_id, "a trial", exc)
            return True
        self._settle(job_id, ctx)
        return True

    def _give_back(self, job_id: str, ctx: _JobContext, trial_id: int | None) -> None:
        """Release the slot of a trial that ended without counting, once per trial (see ``release_slot``).

        A trial that counted keeps its slot; one still RUNNING (its end could not be recorded) is left to
        the stale-heartbeat check, which fails it and releases its slot; a claim whose trial never started is
        released here (or by the leak check when the database is away).
        """
        try:
            if trial_id is not None:
                t = ctx.study._storage.get_trial(trial_id)
                if t.state != TrialState.FAIL or t.system_attrs.get("failure") == "config":
                    return
            release_slot(self.engine, job_id=job_id, trial_id=trial_id)
        except _INFRA_ERRORS:
            log.warning("job %s: could not release a trial slot (the stale or leak check will)", job_id)

    def _job_error(self, job_id: str, step: str, exc: BaseException, **kw: Any) -> None:
        """Count a job-level failure (the job fails after ``job_max_failures``); the worker goes on."""
        if not isinstance(exc, Exception):
            raise exc
        log.warning("job %s: %s failed", job_id, step, exc_info=exc)
        self._jobs.pop(job_id, None)
        detail = _message(exc)
        message = f"{step}: {type(exc).__name__}" + (f": {detail}" if detail != type(exc).__name__ else "")
        with session_scope(self.engine, write=True) as s:
            count_failure(s, job_id, message, self.settings.job_max_failures, **kw)

    def _fail(self, job_id: str, message: str) -> None:
        log.warning("job %s failed: %s", job_id, message)
        with session_scope(self.engine, write=True) as s:
            s.execute(
                sa.update(Job)
                .where(Job.id == job_id, Job.status.in_([JobStatus.queued.value, JobStatus.running.value,
                                                        JobStatus.finalizing.value]))
                .values(status=JobStatus.failed.value, error=message[:10_000], finished_at=utcnow())
            )
        try_refresh(self.engine, job_id)
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
        try_refresh(self.engine, job_id)
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
        try_refresh(self.engine, job.id)
        log.info("job %s: finalising (%s)", job.id, self.worker_id)
        set_phase(self.engine, self.worker_id, job.id, "finalizing")
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
                # status, test metrics and the final summary (model path included) in one change: a client
                # waiting for "succeeded" never sees it without the model
                values = summary_values(s, job.id)
                values["best_trial"] = values.get("best_trial") or _jsonable(result["best_trial"])
                s.execute(
                    sa.update(Job)
                    .where(Job.id == job.id, Job.status == JobStatus.finalizing.value,
                           Job.finalized_by == self.worker_id)
                    .values(status=JobStatus.succeeded.value, test_metrics=_jsonable(metrics),
                            finished_at=utcnow(), heartbeat_at=None, **values)
                )
            log.info("job %s succeeded: %s", job.id, metrics)
        except _INFRA_ERRORS:
            raise  # left in `finalizing`; recovered (and counted) after the grace period
        except _JobFailed as exc:
            self._fail(job.id, _message(exc))
        except Exception as exc:  # noqa: BLE001 - out of memory, a bug: back to running, bounded retries
            self._job_error(job.id, "finalisation", exc, back_to=JobStatus.running,
                            only_if=sa.and_(Job.status == JobStatus.finalizing.value,
                                            Job.finalized_by == self.worker_id))
        finally:
            done.set()
            beat.join(timeout=5)
            self._jobs.pop(job.id, None)
            try:
                set_phase(self.engine, self.worker_id, None, None)
            except _INFRA_ERRORS:
                pass

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
        """Jobs left ``finalizing`` by a dead worker (no heartbeat for ``grace_period``) run again; each such
        death counts as a failure of the job, so a finalisation that kills its worker is not retried forever."""
        cutoff = utcnow() - timedelta(seconds=self.settings.grace_period)
        stale = sa.and_(Job.status == JobStatus.finalizing.value,
                        sa.or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
        with session_scope(self.engine) as s:
            rows = list(s.execute(sa.select(Job.id, Job.finalized_by).where(stale)))
        for row in rows:
            with session_scope(self.engine, write=True) as s:
                count_failure(s, row.id, f"finalisation: worker {row.finalized_by} stopped responding "
                              "(killed, out of memory?)", self.settings.job_max_failures,
                              back_to=JobStatus.running, only_if=stale)
            log.warning("job %s: left finalising by a dead worker (%s)", row.id, row.finalized_by)

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
        """Reap dead workers, fail stale trials, fix leaked slots, cancel or finalise jobs nobody works on.

        Every running job is looked at (in pages); an unexpected error with one job counts against that job.
        """
        self._last_maintenance = time.monotonic()
        reap_dead_workers(self.engine, self.settings.grace_period, self.settings.job_max_failures)
        self.recover()
        after: tuple[datetime, str] | None = None
        while not self.stopping:
            with session_scope(self.engine) as s:
                query = sa.select(Job).where(Job.status == JobStatus.running.value)
                if after is not None:
                    query = query.where(sa.tuple_(Job.created_at, Job.id) > sa.tuple_(*after))
                jobs = list(s.scalars(query.order_by(Job.created_at, Job.id).limit(MAINTENANCE_PAGE)))
            for job in jobs:
                if self.stopping:
                    return
                try:
                    self._maintain_job(job)
                except _INFRA_ERRORS:
                    raise
                except Exception as exc:  # noqa: BLE001
                    self._job_error(job.id, "maintenance", exc)
            if len(jobs) < MAINTENANCE_PAGE:
                return
            after = (jobs[-1].created_at, jobs[-1].id)

    def _maintain_job(self, job: Job) -> None:
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


class _TrackedObjective:
    """The objective, remembering which trial it ran (so its slot is released by trial id)."""

    def __init__(self, objective: Callable[[optuna.Trial], float]) -> None:
        self.objective = objective
        self.trial_id: int | None = None
        self.trial_number: int | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        self.trial_id, self.trial_number = trial._trial_id, trial.number
        return self.objective(trial)


def _failed_elsewhere(exc: BaseException) -> bool:
    """Optuna's errors for a trial that was finished (failed as stale) while this worker still ran it."""
    if isinstance(exc, optuna.exceptions.UpdateFinishedTrialError):
        return True
    return isinstance(exc, ValueError) and str(exc).startswith("Cannot tell a ")


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
