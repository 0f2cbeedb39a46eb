"""The fork server of ``tuner run --jobs N`` (this module imports no torch).

``multiprocessing``'s fork server is a clean single-threaded process that imports the heavy modules once
(:data:`PRELOAD`, ending with :mod:`tuner._warmup`, which exercises Optuna's storages) and then forks the
search processes. Starting it costs the time of those imports (1-3 s, once per Python process). Where
the platform has no fork server, processes are spawned instead.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Any

__all__ = ["PRELOAD", "default_jobs", "fork_context"]

PRELOAD = ["torch", "optuna", "sklearn", "tuner.objective", "tuner.runner", "tuner._warmup"]


def default_jobs() -> int:
    """The number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def fork_context() -> Any:
    """The fork server's context with :data:`PRELOAD`, else ``spawn``'s."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return mp.get_context("spawn")
