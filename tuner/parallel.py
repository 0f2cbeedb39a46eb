"""``tuner run --jobs N``: the search in N processes on one study, the test scoring once in the parent.

Each process (started by a fork server where the platform has one, else spawned; the prepared data is
passed to it) opens its own connection to the study and runs one trial at a time, each after taking a ticket from a
shared counter, so exactly the missing number of trials is started however the processes interleave.
The processes use one torch thread each by default. Their samplers are seeded ``seed + process index``
(identical seeds would propose the same first trials in every process). The parent only watches (a
progress bar) and, once all processes are done, finalises the study exactly once.

Storage: an RDB URL (SQLite gets WAL and a busy timeout, see :mod:`tuner.storage`) is shared as it is;
an in-memory study (``storage=None``) becomes an Optuna journal file in a temporary directory for the
duration of the run, because an in-memory study cannot be shared between processes.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from tuner.data import PreparedData
from tuner.errors import StopRequested
from tuner.forkserver import default_jobs
from tuner.spec import JobSpec

__all__ = ["SharedStorage", "default_jobs", "release_connections", "search_parallel", "shared_storage"]


@dataclass(frozen=True)
class SharedStorage:
    """How a process reaches the study: an RDB URL or a journal file path."""

    url: str | None = None
    journal: str | None = None

    def open(self) -> optuna.storages.BaseStorage:
        from tuner.storage import open_storage

        if self.journal is not None:
            from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

            return JournalStorage(JournalFileBackend(self.journal, lock_obj=JournalFileOpenLock(self.journal)))
        assert self.url is not None
        storage = open_storage(self.url)
        assert storage is not None
        return storage


def shared_storage(storage: str | optuna.storages.BaseStorage | None, tmp_dir: Path) -> SharedStorage | None:
    """The shareable form of ``storage``; ``None`` when it cannot be shared (a storage object not on a URL)."""
    if storage is None or isinstance(storage, optuna.storages.InMemoryStorage):
        return SharedStorage(journal=str(tmp_dir / "study.journal"))  # an empty in-memory study: a file instead
    if isinstance(storage, str):
        return SharedStorage(url=storage)
    backend = getattr(storage, "_backend", storage)
    if isinstance(backend, optuna.storages.RDBStorage):
        return SharedStorage(url=str(backend.engine.url.render_as_string(hide_password=False)))
    return None


def release_connections(storage: optuna.storages.BaseStorage) -> None:
    """Close an RDB storage's pooled connections (a SQLite connection must not cross a fork)."""
    backend = getattr(storage, "_backend", storage)
    if isinstance(backend, optuna.storages.RDBStorage):
        backend.engine.dispose()


def _take_ticket(counter: Any, limit: int) -> bool:
    with counter.get_lock():
        if counter.value >= limit:
            return False
        counter.value += 1
        return True


def _worker_main(
    index: int,
    spec: JobSpec,
    data: PreparedData,
    storage: SharedStorage,
    study_name: str,
    limit: int,
    counter: Any,
    deadline: float | None,
    artifacts_dir: Path,
    device: str,
    threads: int,
) -> None:
    import logging

    from tuner.objective import Objective
    from tuner.runner import open_study, optimize

    optuna.logging.set_verbosity(logging.WARNING)
    torch.set_num_threads(threads)
    # Each process its own sampler seed (spec seed, process index, trials so far): no duplicate proposals.
    study = open_study(spec, storage.open(), study_name, worker_id=None if index == 0 else f"jobs-{index}")
    objective = Objective(spec, data, device=device, worker_id=f"{socket.gethostname()}:{os.getpid()}",
                          artifacts_dir=artifacts_dir)
    try:
        while (deadline is None or time.time() < deadline) and _take_ticket(counter, limit):
            optimize(study, objective, n_trials=1, timeout_s=None)
    except (KeyboardInterrupt, StopRequested):
        sys.exit(130)


def search_parallel(
    spec: JobSpec,
    data: PreparedData,
    storage: SharedStorage,
    study_name: str,
    *,
    n_trials: int,
    jobs: int,
    timeout_s: float | None,
    artifacts_dir: Path,
    device: str = "cpu",
    threads: int = 1,
    progress: bool = False,
) -> None:
    """Run ``n_trials`` more trials of the study in ``jobs`` processes; return when all have ended.

    Raises ``KeyboardInterrupt`` after stopping the processes when interrupted, and ``RuntimeError``
    when a process failed otherwise (the trials it finished stay in the study).
    """
    # Not plain fork: a process that has used torch's OpenMP pool (or holds any lock in another thread)
    # can deadlock its forked children. The fork server is a clean single-threaded process, started once
    # per Python process with the heavy imports done, that forks the workers cheaply.
    from tuner.forkserver import fork_context

    ctx = fork_context()
    counter = ctx.Value("i", 0)
    deadline = None if timeout_s is None else time.time() + timeout_s
    procs = [
        ctx.Process(
            target=_worker_main, name=f"tuner-job-{i}",
            args=(i, spec, data, storage, study_name, n_trials, counter, deadline,
                  artifacts_dir, device, threads),
        )
        for i in range(jobs)
    ]
    for p in procs:
        p.start()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_trials, file=sys.stderr, desc=study_name, unit="trial")
    try:
        while any(p.is_alive() for p in procs):
            # wakes as soon as a process ends (no polling delay at the end of the search)
            mp.connection.wait([p.sentinel for p in procs if p.is_alive()], timeout=0.2)
            if bar is not None:
                bar.n = max(0, counter.value - sum(p.is_alive() for p in procs))
                bar.refresh()
    except KeyboardInterrupt:
        for p in procs:
            p.join(timeout=30)  # they got the same SIGINT and stop after recording their trial
            if p.is_alive():
                p.terminate()
        raise
    finally:
        if bar is not None:
            bar.n = counter.value
            bar.close()
    codes = [p.exitcode for p in procs]
    if any(c == 130 for c in codes):
        raise KeyboardInterrupt
    if any(c != 0 for c in codes):
        raise RuntimeError(f"tuner job processes ended with exit codes {codes}")
